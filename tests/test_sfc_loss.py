import numpy as np
import pytest
import torch

from net import sfc_loss
from voc12.dataloader import CAT_LIST

# docs/faithfulness §1.3: train_aug per-class image counts; §3.7: the authors' per-class weights
COUNTS = {'person': 4155, 'chair': 1228, 'dog': 1188, 'car': 1150, 'cat': 1005, 'bottle': 714, 'bird': 705,
          'sofa': 649, 'diningtable': 613, 'aeroplane': 590, 'tvmonitor': 567, 'pottedplant': 522, 'bicycle': 504,
          'train': 503, 'motorbike': 492, 'boat': 468, 'horse': 445, 'bus': 393, 'sheep': 300, 'cow': 267}
TABLE = {'aeroplane': 0.806461, 'bicycle': 0.902515, 'bird': 0.772636, 'boat': 0.980910, 'bottle': 0.773215,
         'bus': 1.208422, 'car': 0.872522, 'cat': 0.831778, 'chair': 0.906764, 'cow': 1.769426,
         'diningtable': 0.792888, 'dog': 0.887029, 'horse': 1.042365, 'motorbike': 0.925881, 'person': 1.545113,
         'pottedplant': 0.876543, 'sheep': 1.595478, 'sofa': 0.780113, 'train': 0.904224, 'tvmonitor': 0.825722}
# the authors' hard-coded ben list, in head-to-tail order (SFC/train_resnet50_SFC.py:190-192)
BEN = [66642, 13956, 13316, 12784, 11044, 8134, 8062, 7726, 7582, 7536, 7536, 7626, 7698, 7704, 7792, 8032, 8308,
       9036, 10524, 11118]


def test_dc_weights_reproduce_spec_table_from_counts():
    assert sfc_loss.dc_offset(660, 4, 20) == 396.0
    w = sfc_loss.msdw_class_weights([COUNTS[c] for c in CAT_LIST], 396.0)
    for c, v in zip(CAT_LIST, w):
        assert v == pytest.approx(TABLE[c], abs=2e-6), c


def test_ben_statistic_is_sum_of_count_differences():
    order = sorted(COUNTS.values(), reverse=True)
    n = np.array(order)
    np.testing.assert_array_equal(np.abs(n[:, None] - n[None]).sum(1), BEN)


def test_losses_match_authors(fixture):
    z = fixture('train_losses')
    t = {k: torch.from_numpy(v) for k, v in z.items()}
    w = sfc_loss.channel_weights(z['class_weight'][1:])
    np.testing.assert_array_equal(w.numpy(), z['class_weight'])
    y = t['label_bg'][:, 1:]
    cls = sfc_loss.classification_loss(t['score_full'], t['score_half'], y)
    gsc = 1.6 * sfc_loss.gsc_loss(t['pcm_cam_full'], t['proto_cam_full'], w)
    cons = 0.8 * sfc_loss.cross_scale_loss(t['pcm_cam_full'], t['pcm_cam_half'], t['label_bg'], w)
    np.testing.assert_allclose(cls.item(), z['loss_cls'], rtol=1e-5)
    np.testing.assert_allclose(gsc.item(), z['loss_gsc'], rtol=1e-5)
    np.testing.assert_allclose(cons.item(), z['loss_consistency'], rtol=1e-5)
    np.testing.assert_allclose((cls + gsc + cons).item(), z['loss_total'], rtol=1e-5)


def test_fixture_class_weights_equal_ours(fixture):
    z = fixture('train_losses')
    w = sfc_loss.msdw_class_weights([COUNTS[c] for c in CAT_LIST], 396.0)
    np.testing.assert_allclose(w, z['class_weight'][1:], atol=1e-6)


def test_losses_vanish_when_cams_agree():
    cam = torch.rand(2, 3, 4, 4)
    q = cam * 3.0
    cam = q / (q.amax(dim=(2, 3), keepdim=True) + 1e-5)
    assert sfc_loss.gsc_loss(cam, q, torch.ones(3)).item() == pytest.approx(0.0, abs=1e-7)
    full = torch.rand(2, 3, 8, 8)
    half = torch.nn.functional.interpolate(full, scale_factor=0.5, mode='bilinear', align_corners=True)
    assert sfc_loss.cross_scale_loss(full, half, torch.ones(2, 3, 1, 1), torch.ones(3)).item() == 0.0


def test_cross_scale_loss_ignores_background_and_absent_classes():
    full = torch.zeros(1, 3, 8, 8)
    half = torch.zeros(1, 3, 4, 4)
    half[:, 0] = 5.0  # background differs: ignored
    half[:, 2] = 1.0  # class 2 absent (label 0): ignored
    y = torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert sfc_loss.cross_scale_loss(full, half, y, torch.ones(3)).item() == 0.0
    half[:, 1] = 1.0
    w = torch.tensor([1.0, 3.0, 1.0])
    assert sfc_loss.cross_scale_loss(full, half, y, w).item() == pytest.approx(3.0 / 2)
