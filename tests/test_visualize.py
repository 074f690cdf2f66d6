"""The visualisation command: full-size strips, palette label PNGs, one contact sheet; works mid-run."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import run_sample
from misc import camio, visualize
from misc.imutils import overlay_heatmap, voc_palette
from tests.test_e2e import base_args
from tests.test_robustness import random_sfc_checkpoint
from voc12.dataloader import read_image

TITLE = 12 + 6  # title band of every panel
SEP = 4


@pytest.fixture(scope='module')
def drawn_run(tiny_voc, tmp_path_factory):
    """make_cam from a random checkpoint; GT copied in as IR labels; no pseudo masks yet."""
    work = str(tmp_path_factory.mktemp('vis') / 'w')
    random_sfc_checkpoint(work)
    run_sample.main(base_args(tiny_voc, work, '--make_cam_pass', 'True'))
    shutil.copytree(os.path.join(tiny_voc['root'], 'SegmentationClass'), os.path.join(work, 'ir_label'),
                    dirs_exist_ok=True)
    sheet = visualize.main(['--work_dir', work, '--max_images', '3'])
    return work, sheet


def test_strip_panels_are_exact(tiny_voc, drawn_run):
    work, _ = drawn_run
    names = open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()[:3]
    pal = voc_palette()
    for n in names:
        strip = np.asarray(Image.open(os.path.join(work, 'vis', 'val', n + '.png')).convert('RGB'))
        img = read_image(os.path.join(tiny_voc['root'], 'JPEGImages', n + '.jpg'))
        h, w = img.shape[:2]
        cams = camio.load_cam(os.path.join(work, 'cam', n + '.npz'))
        gt = camio.read_label(os.path.join(tiny_voc['root'], 'SegmentationClass', n + '.png'))
        n_panels = 6 + len(cams['keys']) - 1
        assert strip.shape == (TITLE + h, n_panels * w + (n_panels - 1) * SEP, 3)

        def panel(i):
            return strip[TITLE:, i * (w + SEP):i * (w + SEP) + w]
        np.testing.assert_array_equal(panel(0), img)
        np.testing.assert_array_equal(panel(1), pal[gt])
        seeds = cams['keys'][np.argmax(cams['proto_cam'], 0)]
        np.testing.assert_array_equal(panel(2), pal[seeds])
        np.testing.assert_array_equal(panel(3), pal[gt])  # the IR labels of this run are the GT
        assert (panel(4) == visualize.MISSING_GREY).mean() > 0.9  # no pseudo masks yet
        assert (panel(5) == visualize.MISSING_GREY).mean() > 0.9  # no DeepLab predictions yet
        for j, k in enumerate(cams['keys'][1:]):
            c = cams['proto_cam'][j + 1]
            np.testing.assert_array_equal(panel(6 + j), overlay_heatmap(img, c / max(c.max(), 1e-5)))
        ir = Image.open(os.path.join(work, 'vis', 'val', 'ir_label', n + '.png'))
        assert ir.mode == 'P' and np.array_equal(np.asarray(ir), gt)
        assert not os.path.exists(os.path.join(work, 'vis', 'val', 'sem_seg', n + '.png'))


def test_contact_sheet_has_a_row_per_image_and_a_legend(drawn_run):
    work, sheet_path = drawn_run
    assert sheet_path == os.path.join(work, 'vis', 'val', 'contact_sheet.png')
    sheet = np.asarray(Image.open(sheet_path).convert('RGB'))
    assert sheet.shape[0] > 3 * (128 + TITLE)
    pal = voc_palette()
    colours = {tuple(c) for c in sheet.reshape(-1, 3)[::7]}
    assert tuple(pal[0]) in colours and tuple(pal[255]) in colours  # background and ignore in the labels


def test_names_tag_and_errors(tiny_voc, drawn_run, tmp_path):
    work, _ = drawn_run
    name = open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()[4]
    path = visualize.main(['--work_dir', work, '--names', name, '--tag', 'one', '--contact_sheet_only',
                           '--cam_source', 'fused'])
    assert os.listdir(os.path.dirname(path)) == ['contact_sheet.png']
    with pytest.raises(FileNotFoundError, match='args.json is missing'):
        visualize.main(['--work_dir', str(tmp_path / 'nothing')])
    with pytest.raises(FileNotFoundError, match='JPEGImages'):
        visualize.main(['--work_dir', work, '--names', 'no_such_image'])
