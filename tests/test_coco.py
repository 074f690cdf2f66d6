"""COCO 2014: data preparation on generated COCO-format data and the pipeline on 81 channels."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from coco14 import dataloader as coco
from coco14.make_cls_labels import prepare
from coco14.synthetic import CAT_IDS, make_synthetic_coco
from misc import camio
from misc.dataset import get_dataset, num_classes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    base = tmp_path_factory.mktemp('coco')
    root = str(base / 'coco2014')
    ids = make_synthetic_coco(root, n_train=16, n_val=6, seed=2, min_size=60, max_size=100, n_classes=6)
    meta = str(base / 'meta')
    prepare(root, meta)
    return {'root': root, 'meta': meta, 'ids': ids, 'base': str(base)}


def test_same_api_as_voc12():
    voc = get_dataset('voc12')
    for name in ('N_CAT', 'ImageDataset', 'ClassificationDataset', 'ClassificationDatasetMSF', 'AffinityDataset',
                 'load_gt', 'load_cls_labels', 'load_img_name_list', 'read_image'):
        assert hasattr(coco, name) and hasattr(voc, name), name
    assert coco.N_CAT == 80 and num_classes('coco14') == 81 and len(CAT_IDS) == 80
    assert coco.CAT_LIST[0] == 'person' and coco.CAT_LIST[-1] == 'toothbrush'


def test_prepare_lists_labels_and_gt(tiny_coco):
    from pycocotools.coco import COCO
    root, meta = tiny_coco['root'], tiny_coco['meta']
    assert coco.load_img_name_list(os.path.join(meta, 'train2014.txt')) == sorted(tiny_coco['ids']['train2014'])
    labels = coco.load_cls_labels(os.path.join(meta, 'cls_labels.npz'))
    c = COCO(os.path.join(root, 'annotations', 'instances_train2014.json'))
    index = {cid: i + 1 for i, cid in enumerate(CAT_IDS)}
    saw_crowd = False
    for img in c.loadImgs(c.getImgIds()):
        name = img['file_name'][:-4]
        anns = c.loadAnns(c.getAnnIds(imgIds=img['id'], iscrowd=None))
        assert (np.nonzero(labels[name])[0] + 1).tolist() == sorted({index[a['category_id']] for a in anns})
        gt = coco.load_gt(root, name)
        assert gt.shape == (img['height'], img['width'])
        # rule: non-crowd instances painted largest first (the smallest stays on top); crowd -> 255 where uncovered
        expect = np.zeros_like(gt)
        for a in sorted((a for a in anns if not a['iscrowd']), key=lambda a: -a['area']):
            expect[c.annToMask(a) > 0] = index[a['category_id']]
        for a in (a for a in anns if a['iscrowd']):
            saw_crowd = True
            expect[(c.annToMask(a) > 0) & (expect == 0)] = 255
        np.testing.assert_array_equal(gt, expect)
    assert saw_crowd


def test_grayscale_images_load_as_rgb(tiny_coco):
    ds = coco.ImageDataset(os.path.join(tiny_coco['meta'], 'train2014.txt'), tiny_coco['root'])
    from PIL import Image
    modes = {Image.open(ds.image_path(n)).mode for n in ds.names}
    assert 'L' in modes
    for n in ds.names:
        img = ds.read(n)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


@pytest.mark.slow  # about 10 s in one process on 2 cores
def test_run_coco_sh_end_to_end(tiny_coco, tmp_path):
    """run_coco.sh as written (shrunk by overrides): SFC on 80 classes, CAMs, CRF labels as final masks."""
    work = str(tmp_path / 'work')
    os.makedirs(work)
    import shutil
    shutil.copytree(tiny_coco['meta'], os.path.join(work, 'meta'))
    env = dict(os.environ, COCO14_ROOT=tiny_coco['root'], WORK_DIR=work, DEVICE='cpu', NUM_WORKERS='0',
               BACKBONE_WEIGHTS='none', SEG_INIT='none', PYTHON=sys.executable)  # PYTHON= names the interpreter
    from tests.test_scripts import SEG_SMALL
    small = ['--backbone_width', '8', '--sfc_crop_size', '64', '--sfc_batch_size', '4', '--sfc_num_epoches', '1',
             '--sfc_bank_samples', '2', '--cam_scales', '1.0', '0.5', '--run_log', 'False', *SEG_SMALL]
    out = subprocess.run(['bash', os.path.join(ROOT, 'run_coco.sh'), *small], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    names = coco.load_img_name_list(os.path.join(work, 'meta', 'train2014.txt'))
    sd = __import__('torch').load(os.path.join(work, 'ckpt', camio.SFC_WEIGHTS), weights_only=True)['net']
    assert sd['classifier.weight'].shape[0] == 80
    for n in names:
        cam = camio.load_cam(os.path.join(work, 'cam', n + '.npz'))
        assert cam['keys'].max() <= 80
        ir = camio.read_label(os.path.join(work, 'ir_label', n + '.png'))
        assert set(np.unique(ir)) <= set(cam['keys'].tolist()) | {255}
    m = json.load(open(os.path.join(work, 'metrics', 'eval_sem_seg.json')))
    assert m['masks'] == 'ir_label' and len(m['iou']) == 81 and 0 <= m['miou'] <= 1
    assert len(json.load(open(os.path.join(work, 'metrics', 'eval_cam.json')))['iou']) == 81
    seg = json.load(open(os.path.join(work, 'metrics', 'eval_seg.json')))  # DeepLab on the CRF labels, val2014
    assert len(seg['iou']) == 81 and seg['eval_list'].endswith('val2014.txt') and 0 <= seg['miou'] <= 1
    vis = os.path.join(work, 'vis', 'train2014')  # COCO class names, CRF labels drawn, no pseudo masks
    assert 'contact_sheet.png' in os.listdir(vis) and len(os.listdir(os.path.join(vis, 'ir_label'))) == min(16, len(names))


def test_coco_irn_path_and_bank_size(tiny_coco, tmp_path):
    """The optional IRN stage on COCO (81-channel affinity labels, random walk) and the 80-slot bank."""
    import run_sample
    from misc.image_bank import ImageBank
    assert ImageBank(80, 512, 'cpu').nbytes() / 2 ** 20 == pytest.approx(80 * (3 * 4 + 1) * 512 * 512 / 2 ** 20 + 80 * 80 * 4 / 2 ** 20)
    work = str(tmp_path / 'w')
    meta = tiny_coco['meta']
    common = ['--dataset', 'coco14', '--coco14_root', tiny_coco['root'], '--work_dir', work, '--device', 'cpu',
              '--num_workers', '0', '--backbone_weights', 'none', '--backbone_width', '8', '--run_log', 'False',
              '--train_list', os.path.join(meta, 'val2014.txt'), '--infer_list', os.path.join(meta, 'val2014.txt'),
              '--eval_list', os.path.join(meta, 'val2014.txt'), '--cls_labels', os.path.join(meta, 'cls_labels.npz')]
    run_sample.main(common + ['--train_sfc_pass', 'True', '--sfc_crop_size', '64', '--sfc_batch_size', '2',
                              '--sfc_num_epoches', '1', '--sfc_select_on_gt', 'False', '--sfc_dc_offset', 'auto'])
    res = run_sample.main(common + ['--make_cam_pass', 'True', '--cam_scales', '1.0', '--cam_to_ir_label_pass', 'True',
                                    '--train_irn_pass', 'True', '--irn_crop_size', '96', '--irn_batch_size', '2',
                                    '--irn_num_epoches', '1', '--irn_crop_size_infer', '96', '--exp_times', '3',
                                    '--make_sem_seg_pass', 'True', '--eval_sem_seg_pass', 'True'])
    assert res['eval_sem_seg']['masks'] == 'sem_seg' and len(res['eval_sem_seg']['iou']) == 81
