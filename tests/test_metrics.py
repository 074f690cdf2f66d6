import numpy as np
import pytest

from misc.metrics import ConfusionMatrix, scores_from_confusion


def brute_force(gts, preds, n):
    m = np.zeros((n, n), np.int64)
    for gt, pr in zip(gts, preds):
        for g, p in zip(gt.ravel(), pr.ravel()):
            if g != 255:
                m[g, p] += 1
    return m


def test_confusion_matches_brute_force_and_ignores_255():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, (7, 9)).astype(np.uint8) for _ in range(3)]
    for g in gts:
        g[rng.random(g.shape) < 0.2] = 255
    preds = [rng.integers(0, 5, (7, 9)).astype(np.uint8) for _ in range(3)]
    cm = ConfusionMatrix(5)
    for g, p in zip(gts, preds):
        cm.update(g, p)
    np.testing.assert_array_equal(cm.mat, brute_force(gts, preds, 5))


def test_iou_hand_computed():
    # gt: 4 px of class 0, 4 of class 1; pred: class 1 on 6 px
    gt = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], np.uint8)
    pred = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], np.uint8)
    s = ConfusionMatrix(3).update(gt, pred).scores()
    assert s['iou'][0] == pytest.approx(2 / 4)
    assert s['iou'][1] == pytest.approx(4 / 6)
    assert np.isnan(s['iou'][2])  # absent in GT and prediction: excluded from the mean
    assert s['miou'] == pytest.approx((0.5 + 4 / 6) / 2)
    assert s['precision'][1] == pytest.approx(4 / 6) and s['recall'][0] == pytest.approx(0.5)


def test_to_other_fg_counts_only_foreground_confusions():
    mat = np.array([[10, 0, 0], [2, 5, 3], [0, 1, 4]])
    s = scores_from_confusion(mat)
    assert s['to_other_fg'][1] == pytest.approx(3 / 10)
    assert s['to_other_fg'][2] == pytest.approx(1 / 5)
    assert s['to_other_fg'][0] == pytest.approx(0.0)


def test_out_of_range_class_is_an_error():
    with pytest.raises(ValueError, match='outside'):
        ConfusionMatrix(3).update(np.array([[7]], np.uint8), np.array([[0]], np.uint8), 'img1')
