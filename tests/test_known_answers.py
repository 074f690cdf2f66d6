"""Known-answer end-to-end tests: each step is run through run_sample.py and its result compared with a value
computed independently of the code under test (named in each test).

- the three evaluation steps on planted predictions, against a confusion matrix counted here pixel class by pixel
  class with explicit loops (not misc.metrics);
- CAMs built from the GT masks, through the real make_cam step and its post-processing: scored exactly 1, and
  exactly the hand-computed all-background score when the background offset exceeds the foreground scale;
- cam_to_ir_label on CAMs derived from the GT: its confident pixels agree with the GT;
- make_sem_seg from an IRN trained on GT-derived IR labels beats the (coarse, GT-derived) CAMs it starts from;
- train_sfc learns: from the stand-in backbone, a short budget lifts the CAMs far above the untrained network's,
  and full SFC beats the plain CAM at the same budget on two seeds;
- train_seg overfits four images given their GT as pseudo masks.
"""
import os

import cv2
import numpy as np
import pytest
import torch

import run_sample
from misc import camio
from voc12.dataloader import CAT_LIST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(ROOT, 'weights', 'standin')
CLASSES = ['background'] + CAT_LIST


# --- an independent scorer: explicit loops over (GT class, predicted class) -------------------------------------
def hand_scores(pairs, n=21, ignore=255):
    """pairs: [(gt, pred)] -> per-class IoU, precision, recall, share of GT pixels given to another foreground
    class, and mIoU over the classes with a defined IoU; NaN where undefined."""
    mat = np.zeros((n, n), np.int64)
    for gt, pred in pairs:
        for g in range(n):
            at_g = gt == g
            for p in range(n):
                mat[g, p] += int(np.count_nonzero(at_g & (pred == p)))
    out = {k: [] for k in ('iou', 'precision', 'recall', 'to_other_fg', 'fp', 'fn')}
    for c in range(n):
        tp, gt_c, pred_c = mat[c, c], mat[c].sum(), mat[:, c].sum()
        other_fg = sum(mat[c, p] for p in range(1, n) if p != c)
        union = gt_c + pred_c - tp
        out['iou'].append(tp / union if union else np.nan)
        out['fp'].append(1 - gt_c / union if union else np.nan)  # the authors' eval_sem_seg figures
        out['fn'].append(1 - pred_c / union if union else np.nan)
        out['precision'].append(tp / pred_c if pred_c else np.nan)
        out['recall'].append(tp / gt_c if gt_c else np.nan)
        out['to_other_fg'].append(other_fg / gt_c if gt_c else np.nan)
    defined = [v for v in out['iou'] if not np.isnan(v)]
    out['miou'] = sum(defined) / len(defined)
    return out


def assert_per_class(got, want, classes=CLASSES):
    """got: {class name: value} as a step returns it (NaN where undefined; None in its JSON); want: list per class
    id (NaN = undefined)."""
    for i, name in enumerate(classes):
        if np.isnan(want[i]):
            assert got[name] is None or np.isnan(got[name]), (name, got[name])
        else:
            assert got[name] == pytest.approx(want[i], abs=1e-12), name


def names_of(tiny_voc, split='val'):
    return open(os.path.join(tiny_voc['meta'], f'{split}.txt')).read().split()


def gt_of(tiny_voc, name):
    return camio.read_label(os.path.join(tiny_voc['root'], 'SegmentationClass', name + '.png'))


def labels_of(tiny_voc):
    z = np.load(os.path.join(tiny_voc['meta'], 'cls_labels.npz'))
    return dict(zip(z['names'], z['labels']))


def args_for(tiny_voc, work, *extra):
    meta = tiny_voc['meta']
    val = os.path.join(meta, 'val.txt')
    return ['--voc12_root', tiny_voc['root'], '--work_dir', work, '--device', 'cpu', '--num_workers', '0',
            '--run_log', 'False', '--cls_labels', os.path.join(meta, 'cls_labels.npz'), '--eval_list', val,
            '--infer_list', val, '--train_list', val, '--seg_infer_list', val, '--backbone_width', '8', *extra]


def plant(gt, keys, rng, wrong=0.15):
    """A prediction that is the GT (255 -> 0) with a share of pixels moved to another class of `keys`."""
    pred = np.where(gt == 255, 0, gt).astype(np.uint8)
    flip = rng.random(gt.shape) < wrong
    pred[flip] = rng.choice(keys, size=int(flip.sum()))
    return pred


# --- the evaluation steps ---------------------------------------------------------------------------------------
def test_eval_cam_scores_planted_cams_by_hand(tiny_voc, tmp_path):
    """proto_cam, cam and fused CAMs planted so that their argmax is a known map: proto_cam = one-hot of plan A,
    cam = one-hot of plan B (fused = cam + 0.3 proto_cam therefore follows B), plus a band of exact ties in every
    CAM, which go to the background (keys[argmax] takes the first maximum)."""
    work = str(tmp_path / 'w')
    rng = np.random.default_rng(0)
    labels = labels_of(tiny_voc)
    pairs = {'proto_cam': [], 'cam': [], 'fused': []}
    for n in names_of(tiny_voc):
        gt = gt_of(tiny_voc, n)
        keys = camio.keys_from_label(labels[n])
        a, b = plant(gt, keys, rng), plant(gt, keys, rng, wrong=0.3)
        tie = np.zeros(gt.shape, bool)
        tie[:, :3] = True
        idx = {int(k): i for i, k in enumerate(keys)}
        onehot = [np.stack([(m == k) for k in keys]).astype(np.float32) for m in (a, b)]
        for o in onehot:
            o[:, tie] = 0.5
        camio.save_cam(camio.cam_path(os.path.join(work, 'cam'), n), keys, onehot[1], onehot[0])
        a[tie] = b[tie] = 0
        assert len(idx) == len(keys)
        pairs['proto_cam'].append((gt, a))
        pairs['cam'].append((gt, b))
        pairs['fused'].append((gt, b))
    res = run_sample.main(args_for(tiny_voc, work, '--eval_cam_pass', 'True', '--cam_eval_source', 'proto_cam', 'cam',
                                   'fused'))['eval_cam']
    assert res['source'] == 'proto_cam' and res['n_images'] == len(names_of(tiny_voc))
    for src, p in pairs.items():
        want, got = hand_scores(p), res['sources'][src]
        assert got['miou'] == pytest.approx(want['miou'], abs=1e-12), src
        for k in ('iou', 'precision', 'recall', 'to_other_fg'):
            assert_per_class(got[k], want[k])
    assert res['sources']['proto_cam']['miou'] != res['sources']['cam']['miou']  # the plans do differ


def test_eval_sem_seg_and_eval_seg_score_planted_masks_by_hand(tiny_voc, tmp_path):
    """Planted pseudo masks (sem_seg/), IR labels with 255 (ir_label/, scored as masks with 255 -> background) and
    segmentation predictions before and after the CRF (seg_nocrf/, seg/), each against the hand count."""
    work = str(tmp_path / 'w')
    rng = np.random.default_rng(1)
    labels = labels_of(tiny_voc)
    pairs = {k: [] for k in ('sem_seg', 'ir_as_mask', 'seg', 'seg_nocrf')}
    for n in names_of(tiny_voc):
        gt = gt_of(tiny_voc, n)
        keys = camio.keys_from_label(labels[n])
        sem, seg, nocrf = plant(gt, keys, rng), plant(gt, np.arange(21), rng, 0.2), plant(gt, np.arange(21), rng, 0.4)
        ir = plant(gt, keys, rng, 0.1)
        ir[rng.random(gt.shape) < 0.2] = 255
        for d, m in (('sem_seg', sem), ('ir_label', ir), ('seg', seg), ('seg_nocrf', nocrf)):
            camio.write_label(camio.label_path(os.path.join(work, d), n), m)
        pairs['sem_seg'].append((gt, sem))
        pairs['ir_as_mask'].append((gt, np.where(ir == 255, 0, ir)))
        pairs['seg'].append((gt, seg))
        pairs['seg_nocrf'].append((gt, nocrf))
    res = run_sample.main(args_for(tiny_voc, work, '--eval_sem_seg_pass', 'True', '--eval_seg_pass', 'True'))
    sem, seg = res['eval_sem_seg'], res['eval_seg']
    want = hand_scores(pairs['sem_seg'])
    assert sem['miou'] == pytest.approx(want['miou'], abs=1e-12)
    for k in ('iou', 'precision', 'recall', 'fp', 'fn'):  # fp, fn: the authors' 1 - GT / union, 1 - pred / union
        assert_per_class(sem[k], want[k])
    want = hand_scores(pairs['ir_as_mask'])
    assert sem['ir_label']['miou_as_mask'] == pytest.approx(want['miou'], abs=1e-12)
    assert_per_class(sem['ir_label']['iou_as_mask'], want['iou'])
    want, want_nocrf = hand_scores(pairs['seg']), hand_scores(pairs['seg_nocrf'])
    assert seg['crf'] is True and seg['miou'] == pytest.approx(want['miou'], abs=1e-12)
    assert seg['miou_no_crf'] == pytest.approx(want_nocrf['miou'], abs=1e-12)
    for k in ('iou', 'precision', 'recall'):
        assert_per_class(seg[k], want[k])
    assert_per_class(seg['iou_no_crf'], want_nocrf['iou'])


# --- make_cam's post-processing on CAMs made from the GT ---------------------------------------------------------
class _GTNetwork(torch.nn.Module):
    """Stands in for the CAM network in make_cam: for an input pair of size (h, w) it returns, for every scale, the
    GT of the image of that size as 21 one-hot channels at the image's full size (so that the post-processing's
    upsampling is the identity and the answer is known exactly): (cam, proto_cam, raw_cam)."""

    def __init__(self, by_size):
        super().__init__()
        self.by_size = by_size

    def forward(self, x, label):
        gt = self.by_size[tuple(x.shape[2:])]
        onehot = torch.from_numpy(np.stack([(np.where(gt == 255, 0, gt) == c) for c in range(21)])).float()
        return onehot, onehot, onehot


def test_cams_from_the_gt_through_make_cam_score_exactly(tiny_voc, tmp_path, monkeypatch):
    """Independent answer: one-hot GT channels, summed over scales and max-normalised, then background + offset and
    foreground x 2: with the authors' offset 0.4 the argmax is the GT itself (mIoU exactly 1 on non-void pixels);
    with an offset of 2.5 the background (1 + 2.5 outside objects, 0 + 2.5 inside) beats every foreground channel
    (at most 2), so everything is background: IoU(background) = background pixels / all non-void pixels, every
    present class 0."""
    from step import make_cam
    names = names_of(tiny_voc)
    scales = (1.0, 0.5)
    by_size = {}
    for n in names:
        gt = gt_of(tiny_voc, n)
        for s in scales:  # the make_cam loader's sizes: round(h s), round(w s)
            key = (int(np.round(gt.shape[0] * s)), int(np.round(gt.shape[1] * s)))
            assert key not in by_size, 'the test needs image sizes that tell the images apart'
            by_size[key] = gt
    monkeypatch.setattr(make_cam, 'load_cam_model', lambda args, device: _GTNetwork(by_size))
    scale_args = ['--cam_scales', *map(str, scales), '--sfc_weights', __file__]  # any existing file
    for offset, work in (('0.4', str(tmp_path / 'a')), ('2.5', str(tmp_path / 'b'))):
        res = run_sample.main(args_for(tiny_voc, work, *scale_args, '--cam_bg_offset', offset, '--make_cam_pass', 'True',
                                       '--eval_cam_pass', 'True', '--cam_eval_source', 'cam', 'proto_cam'))['eval_cam']
        if offset == '0.4':
            assert res['miou'] == 1.0 and res['sources']['cam']['miou'] == 1.0
            c = camio.load_cam(camio.cam_path(os.path.join(work, 'cam'), names[0]))
            gt = gt_of(tiny_voc, names[0])
            assert c['cam'][0][gt == 0].min() == pytest.approx(1.4, abs=1e-4)  # 1 / (1 + 1e-5) + 0.4
        else:
            gts = [gt_of(tiny_voc, n) for n in names]
            bg = sum(int((g == 0).sum()) for g in gts) / sum(int((g != 255).sum()) for g in gts)
            present = {int(v) for g in gts for v in np.unique(g) if v not in (0, 255)}
            assert res['iou']['background'] == pytest.approx(bg, abs=1e-12)
            assert all(res['iou'][CLASSES[c]] == 0 for c in present)
            assert res['miou'] == pytest.approx(bg / (1 + len(present)), abs=1e-12)


def gt_derived_cams(gt, keys, down):
    """CAM arrays from a GT mask as make_cam writes them: each kept class's one-hot map shrunk `down` times
    (area) and enlarged back (bilinear), a blurred stride-`down` CAM; max-normalised; background + 0.4, fg x 2."""
    h, w = gt.shape
    g = np.where(gt == 255, 0, gt)
    maps = []
    for k in keys:
        small = cv2.resize((g == k).astype(np.float32), (max(1, w // down), max(1, h // down)),
                           interpolation=cv2.INTER_AREA)
        maps.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
    n = np.stack(maps)
    n = n / (n.reshape(len(keys), -1).max(1)[:, None, None] + 1e-5)
    n[0] += 0.4
    n[1:] *= 2
    return n


# --- the IRN half on GT-derived inputs -----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def learning_voc(tmp_path_factory):
    """A larger generated VOC-format set for the learning tests (460 training images, 40 val, 56-100 px)."""
    from voc12.make_cls_labels import build
    from voc12.synthetic import make_synthetic_voc
    base = tmp_path_factory.mktemp('learning_voc')
    root, meta = str(base / 'VOC2012'), str(base / 'meta')
    make_synthetic_voc(root, n_train=60, n_val=40, n_aug=400, seed=5, min_size=56, max_size=100)
    build(root, meta)
    return {'root': root, 'meta': meta}


def test_cam_to_ir_label_on_gt_derived_cams_agrees_with_the_gt(learning_voc, tmp_path):
    """Independent answer: the GT. Blurred stride-16 CAMs made from the GT go through the two dense-CRF passes; the
    confident pixels (not 255) must agree with the GT almost everywhere and cover most of the image."""
    work = str(tmp_path / 'w')
    labels = labels_of(learning_voc)
    names = names_of(learning_voc)
    for n in names:
        keys = camio.keys_from_label(labels[n])
        cam = gt_derived_cams(gt_of(learning_voc, n), keys, 16)
        camio.save_cam(camio.cam_path(os.path.join(work, 'cam'), n), keys, cam, cam)
    run_sample.main(args_for(learning_voc, work, '--cam_to_ir_label_pass', 'True'))
    agree = confident = valid = 0
    for n in names:
        gt, ir = gt_of(learning_voc, n), camio.read_label(camio.label_path(os.path.join(work, 'ir_label'), n))
        keep = (ir != 255) & (gt != 255)
        agree += int((ir[keep] == gt[keep]).sum())
        confident += int(keep.sum())
        valid += int((gt != 255).sum())
    print(f'IR labels from GT-derived CAMs: precision {agree / confident:.4f}, coverage {confident / valid:.4f}')
    assert agree / confident > 0.97 and confident / valid > 0.7


def test_irn_trained_on_gt_labels_sharpens_coarse_cams(learning_voc, tmp_path):
    """IRN learns its boundaries from IR labels equal to the GT (void band as 255) and walks coarse GT-derived
    CAMs (stride 24, blurred) out to them: the pseudo masks score well above the CAMs they start from, both scored
    against the GT by eval_cam / eval_sem_seg."""
    work = str(tmp_path / 'w')
    labels = labels_of(learning_voc)
    for n in names_of(learning_voc):
        gt = gt_of(learning_voc, n)
        keys = camio.keys_from_label(labels[n])
        cam = gt_derived_cams(gt, keys, 24)
        camio.save_cam(camio.cam_path(os.path.join(work, 'cam'), n), keys, cam, cam)
        camio.write_label(camio.label_path(os.path.join(work, 'ir_label'), n), gt)
    res = run_sample.main(args_for(
        learning_voc, work, '--backbone_weights', os.path.join(STANDIN, 'resnet50_w8.pth'),
        '--irn_crop_size', '96', '--irn_batch_size', '8', '--irn_num_epoches', '30', '--irn_lr', '0.03',
        '--irn_momentum', '0.9', '--irn_rescale', '1.0', '1.0', '--irn_radius', '5', '--exp_times', '5',
        '--irn_print_freq', '1000', '--irn_crop_size_infer', '128', '--cam_eval_source', 'cam',
        '--train_irn_pass', 'True', '--make_sem_seg_pass', 'True', '--eval_sem_seg_pass', 'True',
        '--eval_cam_pass', 'True'))
    cam, sem = res['eval_cam']['miou'], res['eval_sem_seg']['miou']
    print(f'GT-trained IRN: CAM mIoU {cam:.4f} -> pseudo masks {sem:.4f}')
    assert sem > cam + 0.04


# --- learning ----------------------------------------------------------------------------------------------------
PLAIN = ['--sfc_ibr', 'False', '--sfc_pdw', 'False', '--sfc_wdw', 'False', '--sfc_dc_weights', 'False']


@pytest.mark.slow  # about 62 s in one process on 2 cores
def test_sfc_learns_and_beats_the_plain_cam(learning_voc, tmp_path):
    """From the stand-in ImageNet backbone, 112 steps of 16 + 4 images: the PCM CAM of the trained network is far
    above the untrained one's (its random heads), and full SFC beats the plain CAM (no bank, no L_PDW, no L_WDW,
    uniform weights) at the same budget on seeds 10 and 11. Scored on 40 held-out images."""
    meta = learning_voc['meta']

    def cam_miou(work, seed, *extra):
        res = run_sample.main(args_for(
            learning_voc, work, '--seed', str(seed), '--train_list', os.path.join(meta, 'train_aug.txt'),
            '--backbone_weights', os.path.join(STANDIN, 'resnet50_w8.pth'), '--sfc_crop_size', '96',
            '--sfc_batch_size', '16', '--sfc_num_epoches', '4', '--sfc_lr', '0.1', '--sfc_momentum', '0.9',
            '--sfc_dc_offset', 'auto', '--sfc_select_on_gt', 'False', '--sfc_print_freq', '1000',
            '--cam_scales', '1.0', '0.5', '1.5', '--cam_eval_source', 'cam', *extra,
            '--train_sfc_pass', 'True', '--make_cam_pass', 'True', '--eval_cam_pass', 'True'))
        return res['eval_cam']['miou']
    sixteen = str(tmp_path / 'sixteen.txt')  # the untrained network: one step of one batch at lr 0
    with open(sixteen, 'w') as f:
        f.write('\n'.join(open(os.path.join(meta, 'train_aug.txt')).read().split()[:16]) + '\n')
    untrained = cam_miou(str(tmp_path / 'untrained'), 10, '--sfc_lr', '0', '--sfc_num_epoches', '1',
                         '--train_list', sixteen)
    scores = {(row, seed): cam_miou(str(tmp_path / f'{row}_{seed}'), seed, *(PLAIN if row == 'plain' else []))
              for seed in (10, 11) for row in ('sfc', 'plain')}
    print(f'CAM mIoU: untrained {untrained:.4f}; ' + ', '.join(f'{r} seed {s} {v:.4f}' for (r, s), v in scores.items()))
    assert min(scores.values()) > untrained + 0.08
    assert scores[('sfc', 10)] > untrained + 0.2
    for seed in (10, 11):
        assert scores[('sfc', seed)] > scores[('plain', seed)] + 0.05, seed


@pytest.mark.slow  # about 25 s in one process on 2 cores
def test_train_seg_overfits_four_images_given_their_gt(learning_voc, tmp_path):
    """DeepLab-v2 (stand-in ResNet-101) trained on four images with their GT as the pseudo masks, without scale
    augmentation or flips and with crops that hold the whole image, then predicting those images: the CRF output
    is near-perfect and far above what the same network gives before training."""
    work = str(tmp_path / 'w')
    names = names_of(learning_voc)[:4]
    few = os.path.join(work, 'few.txt')
    os.makedirs(work)
    with open(few, 'w') as f:
        f.write('\n'.join(names) + '\n')
    for n in names:
        camio.write_label(camio.label_path(os.path.join(work, 'masks'), n), gt_of(learning_voc, n))
    common = ['--seg_init', os.path.join(STANDIN, 'resnet101_w8.pth'), '--seg_train_list', few, '--seg_label_dir',
              os.path.join(work, 'masks'), '--seg_infer_list', few, '--seg_crop_size', '104', '--seg_batch_size', '4',
              '--seg_scales', '1', '1', '--seg_hor_flip', 'False', '--seg_print_freq', '1000',
              '--train_seg_pass', 'True', '--make_seg_pass', 'True', '--eval_seg_pass', 'True']
    before = run_sample.main(args_for(learning_voc, str(tmp_path / 'before'), *common, '--seg_iters', '1',
                                      '--seg_lr', '0'))['eval_seg']
    after = run_sample.main(args_for(learning_voc, work, *common, '--seg_iters', '100', '--seg_lr', '5e-3'))['eval_seg']
    print(f'DeepLab on its 4 training images: before {before["miou"]:.4f}, after {after["miou"]:.4f} (CRF), '
          f'{after["miou_no_crf"]:.4f} (no CRF)')
    assert after['miou'] > 0.88 and after['miou_no_crf'] > 0.82 and after['miou'] > before['miou'] + 0.5


def test_cam_eval_sweep_curves_by_hand(tiny_voc, tmp_path):
    """--cam_eval_sweep on planted CAMs with known normalised maps N (multiples of 1/64, so that no value lands on a
    threshold): per pixel, by explicit loops here, the IRN-style label (background where max_c N_c <= t, else the
    arg max class) and SFC's (background where N_0 + o >= 2 max_c N_c), scored by the hand counter; the step's
    curves, best values and figure must match, and the authors' offset 0.4 must give the headline mIoU."""
    work = str(tmp_path / 'w')
    rng = np.random.default_rng(4)
    labels = labels_of(tiny_voc)
    thresholds, offsets = [0.2, 0.45, 0.7], [0.15, 0.4, 0.9]
    pairs = {('t', v): [] for v in thresholds}
    pairs.update({('o', v): [] for v in offsets})
    for n in names_of(tiny_voc):
        gt = gt_of(tiny_voc, n)
        keys = camio.keys_from_label(labels[n])
        onehot = np.stack([(np.where(gt == 255, 0, gt) == k) for k in keys]).astype(np.float32)
        norm = np.clip(np.round(64 * (0.6 * onehot + 0.5 * rng.random(onehot.shape))) / 64, 0, 1).astype(np.float32)
        stored = norm.copy()
        stored[0] += 0.4  # as make_cam stores it: background + 0.4, foreground x 2
        stored[1:] *= 2
        camio.save_cam(camio.cam_path(os.path.join(work, 'cam'), n), keys, stored, stored)
        for (kind, v), p in pairs.items():
            pred = np.zeros(gt.shape, np.uint8)
            for y in range(gt.shape[0]):
                for x in range(gt.shape[1]):
                    fg = [float(norm[c, y, x]) for c in range(1, len(keys))]
                    if not fg:
                        continue
                    best = max(range(len(fg)), key=lambda i: (fg[i], -i))  # the first of equal maxima
                    if (kind == 't' and fg[best] > v) or (kind == 'o' and float(norm[0, y, x]) + v < 2 * fg[best]):
                        pred[y, x] = keys[1 + best]
            p.append((gt, pred))
    res = run_sample.main(args_for(tiny_voc, work, '--eval_cam_pass', 'True', '--cam_eval_sweep', 'True',
                                   '--cam_sweep_thresholds', *map(str, thresholds), '--cam_sweep_offsets',
                                   *map(str, offsets)))['eval_cam']
    want_t = [hand_scores(pairs[('t', v)])['miou'] for v in thresholds]
    want_o = [hand_scores(pairs[('o', v)])['miou'] for v in offsets]
    np.testing.assert_allclose(res['sweep']['threshold']['miou'], want_t, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res['sweep']['offset']['miou'], want_o, rtol=0, atol=1e-12)
    assert res['sweep']['offset']['miou'][1] == res['miou']  # the authors' offset is the headline
    assert res['sweep']['threshold']['best_value'] == thresholds[int(np.argmax(want_t))]
    assert len(set(np.round(want_t, 6))) == 3 and len(set(np.round(want_o, 6))) == 3  # the curves are not flat
    assert os.path.isfile(os.path.join(work, 'vis', 'eval_cam_sweep.png'))
