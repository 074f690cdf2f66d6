"""End-to-end: generated VOC-format data -> train_sfc -> make_cam -> eval_cam, on CPU."""
import json
import os

import numpy as np
import pytest
import torch

import run_sample
from misc import camio
from voc12.dataloader import CAT_LIST


def base_args(tiny_voc, work, *extra):
    meta = tiny_voc['meta']
    return ['--voc12_root', tiny_voc['root'], '--work_dir', work, '--device', 'cpu', '--num_workers', '0',
            '--backbone_weights', 'none', '--backbone_width', '8', '--sfc_crop_size', '64', '--sfc_batch_size', '2',
            '--sfc_num_epoches', '2', '--sfc_lr', '0.01', '--sfc_val_freq', '3', '--sfc_dc_offset', 'auto',
            '--sfc_bank_samples', '2', '--cam_scales', '1.0', '0.5', '--eval_list', os.path.join(meta, 'val.txt'),
            '--infer_list', os.path.join(meta, 'val.txt'), '--train_list', os.path.join(meta, 'train_aug.txt'),
            '--cls_labels', os.path.join(meta, 'cls_labels.npz'), '--run_log', 'False', *extra]


def test_pipeline_through_eval_cam(tiny_voc, tmp_path, capsys):
    work = str(tmp_path / 'work')
    res = run_sample.main(base_args(tiny_voc, work, '--train_sfc_pass', 'True', '--make_cam_pass', 'True',
                                    '--eval_cam_pass', 'True', '--cam_eval_source', 'proto_cam', 'cam', 'fused',
                                    '--cam_vis_count', '2'))
    assert res['train_sfc']['steps'] == 2 * (22 // 2)
    best = res['train_sfc']['best']
    out = capsys.readouterr().out
    assert out.count('IoU cam  IoU proto_cam') == 4 and '\nbackground ' in out  # per-class table per validation
    curves = [json.loads(line) for line in open(os.path.join(work, 'metrics', 'train_sfc_scalars.jsonl'))]
    vals = [c for c in curves if 'val/miou_cam' in c]
    assert [c['step'] for c in vals] == [13, 16, 19, 22]  # validated when (g-1) % 3 == 0 and g > 10
    # the kept checkpoint is the first validation with the highest cam + proto_cam mIoU, and it scores that again
    top = max(vals, key=lambda c: c['val/miou_cam'] + c['val/miou_proto_cam'])
    assert best['step'] == top['step'] and best['score'] == pytest.approx(top['val/miou_cam'] + top['val/miou_proto_cam'])
    assert [c['step'] for c in curves if 'loss/cls' in c] == list(range(1, 23))
    ckpt = os.path.join(work, 'ckpt')
    for f in (camio.SFC_WEIGHTS, camio.SFC_FINAL, camio.SFC_BEST_GT, camio.SFC_RESUME):
        assert os.path.isfile(os.path.join(ckpt, f)), f
    sd = torch.load(os.path.join(ckpt, camio.SFC_WEIGHTS), weights_only=True)
    assert set(sd) == {'net'} and 'classifier.weight' in sd['net']
    from net.resnet50_sfc import Net
    from step.train_sfc import validate
    from voc12.dataloader import ClassificationDataset
    kept = Net(21, backbone_width=8)
    kept.load_state_dict(sd['net'])
    meta = tiny_voc['meta']
    again = validate(kept, ClassificationDataset(os.path.join(meta, 'val.txt'), tiny_voc['root'],
                                                 os.path.join(meta, 'cls_labels.npz')), 'cpu')
    assert again['cam']['miou'] + again['proto_cam']['miou'] == pytest.approx(best['score'], abs=1e-9)
    final = torch.load(os.path.join(ckpt, camio.SFC_FINAL), weights_only=True)['net']
    assert best['step'] == 22 or any(not torch.equal(final[k], sd['net'][k]) for k in final)
    names = open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()
    labels = np.load(os.path.join(tiny_voc['meta'], 'cls_labels.npz'))
    lab = dict(zip(labels['names'], labels['labels']))
    for n in names:
        c = camio.load_cam(os.path.join(work, 'cam', n + '.npz'))
        assert c['keys'].tolist() == camio.keys_from_label(lab[n]).tolist()
        img = np.asarray(__import__('PIL.Image', fromlist=['Image']).open(os.path.join(tiny_voc['root'], 'JPEGImages', n + '.jpg')))
        assert c['cam'].shape == (len(c['keys']),) + img.shape[:2]
        assert c['cam'].dtype == np.float32 and np.isfinite(c['proto_cam']).all()
        assert c['cam'][0].min() >= 0.4 - 1e-6  # background channel carries the +0.4 offset
    m = json.load(open(os.path.join(work, 'metrics', 'eval_cam.json')))
    assert 0 <= m['miou'] <= 1 and m['n_images'] == len(names) and m['source'] == 'proto_cam'
    assert set(m['sources']) == {'proto_cam', 'cam', 'fused'} and 'background' in m['iou']
    assert len(os.listdir(os.path.join(work, 'vis', 'cam'))) == 2
    assert json.load(open(os.path.join(work, 'args.json')))['device'] == 'cpu'

    # a re-run skips finished CAMs and resumes training at its end (nothing to redo)
    mtime = os.path.getmtime(os.path.join(work, 'cam', names[0] + '.npz'))
    res2 = run_sample.main(base_args(tiny_voc, work, '--train_sfc_pass', 'True', '--make_cam_pass', 'True'))
    assert res2['make_cam']['computed'] == 0
    assert os.path.getmtime(os.path.join(work, 'cam', names[0] + '.npz')) == mtime
    assert res2['train_sfc']['steps'] == res['train_sfc']['steps']


def test_ablation_all_off_is_plain_cam(tiny_voc, tmp_path):
    work = str(tmp_path / 'w')
    res = run_sample.main(base_args(tiny_voc, work, '--train_cam_pass', 'True', '--sfc_ibr', 'False',
                                    '--sfc_pdw', 'False', '--sfc_wdw', 'False', '--sfc_dc_weights', 'False',
                                    '--sfc_select_on_gt', 'False'))
    assert res['train_sfc']['weights'] == camio.SFC_FINAL
    assert set(res['train_sfc']['class_weights'].values()) == {1.0}


def test_missing_root_and_checkpoint_errors(tiny_voc, tmp_path):
    with pytest.raises(ValueError, match='data check failed'):
        run_sample.main(base_args(tiny_voc, str(tmp_path / 'a'), '--voc12_root', str(tmp_path / 'none'),
                                  '--make_cam_pass', 'True'))
    with pytest.raises(FileNotFoundError, match='voc12_root'):  # the step's own error without the check
        run_sample.main(base_args(tiny_voc, str(tmp_path / 'a'), '--voc12_root', str(tmp_path / 'none'),
                                  '--make_cam_pass', 'True', '--check_data', 'False'))
    with pytest.raises(FileNotFoundError, match='--sfc_weights'):
        run_sample.main(base_args(tiny_voc, str(tmp_path / 'b'), '--make_cam_pass', 'True'))


def test_pipeline_through_eval_sem_seg(tiny_voc, tmp_path):
    """All seven steps; the IRN half on the val images (their CAMs, IR labels and pseudo masks)."""
    work = str(tmp_path / 'work')
    meta = tiny_voc['meta']
    val = os.path.join(meta, 'val.txt')
    run_sample.main(base_args(tiny_voc, work, '--train_sfc_pass', 'True', '--sfc_select_on_gt', 'False',
                              '--sfc_num_epoches', '1'))
    res = run_sample.main(base_args(
        tiny_voc, work, '--train_list', val, '--make_cam_pass', 'True', '--eval_cam_pass', 'True',
        '--cam_to_ir_label_pass', 'True', '--train_irn_pass', 'True', '--make_sem_seg_pass', 'True',
        '--eval_sem_seg_pass', 'True', '--irn_crop_size', '96', '--irn_batch_size', '2', '--irn_num_epoches', '2',
        '--irn_crop_size_infer', '96', '--exp_times', '4', '--num_workers', '2'))
    names = open(val).read().split()
    for n in names:
        ir = camio.read_label(os.path.join(work, 'ir_label', n + '.png'))
        sem = camio.read_label(os.path.join(work, 'sem_seg', n + '.png'))
        cam = camio.load_cam(os.path.join(work, 'cam', n + '.npz'))
        assert ir.shape == sem.shape == cam['cam'].shape[1:]
        assert set(np.unique(ir)) <= set(cam['keys'].tolist()) | {255}
        assert set(np.unique(sem)) <= set(cam['keys'].tolist())
        pal = __import__('PIL.Image', fromlist=['Image']).open(os.path.join(work, 'sem_seg_palette', n + '.png'))
        assert pal.mode == 'P'
    m = json.load(open(os.path.join(work, 'metrics', 'eval_sem_seg.json')))
    assert 0 <= m['miou'] <= 1 and m['n_images'] == len(names) and 0 < m['ir_label']['coverage'] <= 1
    assert 0 <= m['ir_label']['miou_as_mask'] <= 1
    for chart in ('eval_cam_per_class.png', 'eval_sem_seg_per_class.png'):  # classes by training count
        with __import__('PIL.Image', fromlist=['Image']).open(os.path.join(work, 'vis', chart)) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    assert res['train_irn']['steps'] == 2 * (len(names) // 2)
    sd = torch.load(os.path.join(work, 'ckpt', camio.IRN_WEIGHTS), weights_only=True)['net']
    assert 'fc_dp7.4.running_mean' in sd and not any(k.startswith('path_indices') for k in sd)
    # re-running with the same settings skips every finished image; with others it stops and names them
    same = ['--irn_crop_size_infer', '96', '--exp_times', '4']
    again = run_sample.main(base_args(tiny_voc, work, '--infer_list', val, '--cam_to_ir_label_pass', 'True',
                                      '--make_sem_seg_pass', 'True', *same))
    assert again['cam_to_ir_label']['computed'] == 0 and again['make_sem_seg']['computed'] == 0
    from misc.provenance import StaleOutput
    with pytest.raises(StaleOutput, match='--exp_times 4 -> 8'):
        run_sample.main(base_args(tiny_voc, work, '--infer_list', val, '--make_sem_seg_pass', 'True',
                                  '--irn_crop_size_infer', '96'))
    # the GT-boundary oracle walks with what made the masks (exp_times 4), and runs this IRN for --irn_edges
    from tools import walk_oracle
    assert walk_oracle.load_run(work).exp_times == 4
    scores = walk_oracle.main([work, '--bg_values', '0.25', '--irn_edges'])
    assert 0 <= scores['soft', 0.25]['miou'] <= 1
    assert 0 <= scores['irn_edges']['boundary_found'] <= 1 and 0 <= scores['irn_edges']['other_marked'] <= 1


def test_eval_sem_seg_scores_by_hand(tiny_voc, tmp_path):
    """Pseudo masks = GT give IoU 1; IR labels with planted ignore and wrong pixels give the precision and
    coverage counted here directly."""
    work = str(tmp_path / 'w')
    rng = np.random.default_rng(0)
    names = open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()
    keep_n = wrong_n = gt_n = 0
    cov = {}
    for n in names:
        gt = camio.read_label(os.path.join(tiny_voc['root'], 'SegmentationClass', n + '.png'))
        ir = gt.copy()
        ir[rng.random(gt.shape) < 0.2] = 255
        wrong = rng.random(gt.shape) < 0.1
        ir[wrong & (ir != 255)] = 7
        camio.write_label(os.path.join(work, 'ir_label', n + '.png'), ir)
        camio.write_label(os.path.join(work, 'sem_seg', n + '.png'), np.where(gt == 255, 0, gt))
        keep = (ir != 255) & (gt != 255)
        keep_n += keep.sum()
        wrong_n += (keep & (ir != gt)).sum()
        gt_n += (gt != 255).sum()
        for c in np.unique(gt[gt != 255]):
            a, b = cov.get(int(c), (0, 0))
            cov[int(c)] = (a + (keep & (gt == c)).sum(), b + (gt == c).sum())
    res = run_sample.main(base_args(tiny_voc, work, '--eval_sem_seg_pass', 'True'))['eval_sem_seg']
    assert res['miou'] == 1.0
    ir = res['ir_label']
    assert ir['precision'] == pytest.approx(1 - wrong_n / keep_n, abs=1e-12)
    assert ir['coverage'] == pytest.approx(keep_n / gt_n, abs=1e-12)
    class_names = ['background'] + CAT_LIST
    for c, (a, b) in cov.items():
        assert ir['coverage_per_class'][class_names[c]] == pytest.approx(a / b, abs=1e-12)


def test_sfc_update_is_clipped_to_the_global_norm(tiny_voc, tmp_path):
    """One SFC step without weight decay: the first SGD update is lr x gradient (the momentum buffer starts as the
    gradient), so (w0 - w1) / lr over every trained tensor (lr x10 for the new layers) is the clipped gradient,
    whose global L2 norm must be exactly --sfc_grad_clip when the raw gradient is larger."""
    from step.train_sfc import build_model
    works = {k: str(tmp_path / k) for k in ('start', 'step')}
    common = ['--sfc_num_epoches', '1', '--sfc_select_on_gt', 'False', '--sfc_weight_decay', '0', '--sfc_grad_clip',
              '0.01', '--train_list', os.path.join(tiny_voc['meta'], 'val.txt'), '--sfc_batch_size', '6',
              '--train_sfc_pass', 'True']
    run_sample.main(base_args(tiny_voc, works['start'], *common, '--sfc_lr', '0'))
    run_sample.main(base_args(tiny_voc, works['step'], *common, '--sfc_lr', '0.01'))
    w0, w1 = (torch.load(os.path.join(w, 'ckpt', camio.SFC_FINAL), weights_only=True)['net'] for w in works.values())
    args = run_sample.get_parser().parse_args(['--backbone_width', '8', '--backbone_weights', 'none'])
    model = build_model(args, 'cpu')
    backbone, new = model.trainable_parameters()
    names = {id(p): n for n, p in model.named_parameters()}
    sq = 0.0
    for params, lr in ((backbone, 0.01), (new, 0.1)):
        for p in params:
            n = names[id(p)]
            sq += float(((w0[n].double() - w1[n].double()) / lr).pow(2).sum())
    assert sq ** 0.5 == pytest.approx(0.01, rel=1e-4)
