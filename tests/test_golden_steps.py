"""One whole training update of train_sfc, train_irn and train_seg, run by each step itself, against an update
assembled here.

The references are built from what is checked elsewhere against the authors' code and deeplab-pytorch (the networks'
forward passes: tests/test_forward_golden.py and tests/test_deeplab.py; IRN's loss maps: tests/test_irn.py) and from
the rules written out here (docs/faithfulness §3, §7 and docs/deeplab.md): the loss formulas as the fixtures state
them (the SFC losses checked on train_losses.npz first), the stride-16 masks, the MSDW class weights from the list's
class counts, the affinity labels, the global norm clip, label resizing, iter_size accumulation, and the first
update of each optimizer per parameter group (d = g + wd w; w -= lr d; parameters without a gradient untouched).
None of net/sfc_loss.py, the steps' loss wiring or misc/torchutils.PolyOptimizer is used by the references. There
is no recording of a whole authors' update to compare with; these tests close that gap with independent assembly.
"""
import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import run_sample
from misc import camio
from tests.test_e2e import base_args


def mlsm(x, y):
    """F.multilabel_soft_margin_loss written out: mean over samples of the mean over classes of
    -(y log s(x) + (1 - y) log s(-x))."""
    x, y = x.flatten(1), y.flatten(1)
    return (-(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))).mean(1).mean()


def reference_losses(s1, s2, p1, q1, p2, y_bg, w):
    """The three SFC losses as the train_losses fixture's README states them (factors 1.6 and 0.8, eps 1e-5,
    D = bilinear x0.5 with align_corners=True)."""
    y = y_bg[:, 1:]
    cls = (mlsm(s1, y) + mlsm(s2, y)) / 2
    q = q1 / (q1.amax(dim=(2, 3), keepdim=True) + 1e-5)
    gsc = 1.6 * (w.view(1, -1, 1, 1) * (p1 - q).abs()).mean()
    down = F.interpolate(p1, scale_factor=0.5, mode='bilinear', align_corners=True)
    cons = 0.8 * (w[1:].view(1, -1, 1, 1) * (down * y_bg - p2 * y_bg)[:, 1:].abs()).mean()
    return cls, gsc, cons


def recorded_batches(monkeypatch, step_module, keys):
    """The training loop's batches as the step receives them (its DataWait, recorded)."""
    packs = []

    class Recording(step_module.DataWait):
        def next(self):
            pack = super().next()
            packs.append({k: pack[k].clone() for k in keys})
            return pack
    monkeypatch.setattr(step_module, 'DataWait', Recording)
    return packs


def assert_update(name, before, got, want):
    """The step's updated float32 weights `got` against the reference's `want` (float64): within 1e-4 of the
    update plus the stored weights' own rounding, and the update itself far above that rounding."""
    scale = float((want - before.double()).abs().max())
    gap = float((got.double() - want).abs().max())
    rounding = 2 * torch.finfo(torch.float32).eps * float(before.abs().max())
    assert gap <= 1e-4 * scale + rounding and scale > 100 * rounding, (name, gap, scale, rounding)


def test_reference_losses_reproduce_the_authors_fixture(fixture):
    z = {k: torch.from_numpy(v) for k, v in fixture('train_losses').items()}
    cls, gsc, cons = reference_losses(z['score_full'], z['score_half'], z['pcm_cam_full'], z['proto_cam_full'],
                                      z['pcm_cam_half'], z['label_bg'], z['class_weight'])
    for got, want in ((cls, 'loss_cls'), (gsc, 'loss_gsc'), (cons, 'loss_consistency')):
        assert float(got) == pytest.approx(float(z[want]), rel=1e-5), want


def test_train_sfc_first_update_equals_the_authors_rules(tiny_voc, tmp_path, monkeypatch):
    """train_sfc for one step of 4 loader crops + 2 bank images (crop 64: stride-16 maps 4x4 and 2x2), lr 1 (one
    step: its update stands far above the weights' float32 resolution), weight decay 1e-3 (large enough to show),
    the authors' momentum 1e-4, DC weights from the four images' class counts, the residual branches' last BN scales
    not zeroed (so that every trained tensor gets a gradient): the batch the step fed to its loss holds the loader's
    crops followed by the bank's draws, and its losses and the update of every parameter (both lr groups, the frozen
    and detached parts) equal the reference's."""
    from net import resnet50_sfc
    from step import train_sfc
    meta = tiny_voc['meta']
    names = open(os.path.join(meta, 'train_aug.txt')).read().split()[:4]
    four = str(tmp_path / 'four.txt')
    with open(four, 'w') as f:
        f.write('\n'.join(names) + '\n')
    seen = {}
    real = train_sfc.sfc_step_gradients

    def capture(model, img, valid, label, w_ch, args, s1, s2, optimizer, scaler=None, n_total=None):
        seen.update(state=copy.deepcopy(model.state_dict()), img=img.clone(), valid=valid.clone(),
                    label=label.clone(), w_ch=w_ch.clone(), s=(s1, s2))
        return real(model, img, valid, label, w_ch, args, s1, s2, optimizer, scaler, n_total)
    monkeypatch.setattr(train_sfc, 'sfc_step_gradients', capture)
    work = str(tmp_path / 'w')
    lr, wd, seed, crop, B, K = 1.0, 1e-3, 10, 64, 4, 2
    run_sample.main(base_args(tiny_voc, work, '--train_sfc_pass', 'True', '--train_list', four, '--seed', str(seed),
                              '--sfc_batch_size', str(B), '--sfc_bank_samples', str(K), '--sfc_num_epoches', '1',
                              '--sfc_lr', str(lr), '--sfc_weight_decay', str(wd), '--sfc_select_on_gt', 'False',
                              '--sfc_crop_size', str(crop), '--sfc_zero_init_residual', 'False'))
    after = torch.load(os.path.join(work, 'ckpt', camio.SFC_FINAL), weights_only=True)['net']
    logged = [json.loads(line) for line in open(camio.scalars_path(os.path.join(work, 'metrics'), 'train_sfc'))]

    img, valid, label = seen['img'], seen['valid'], seen['label']
    assert img.shape == (B + K, 3, crop, crop) and seen['s'] == (crop // 16, crop // 32)
    # the bank: filled from the loader's rows (for every class the last row holding it), then K slots drawn
    # uniformly over the 20 classes from a generator seeded with --seed; an empty slot is all zeros
    slots = torch.randint(0, 20, (K,), generator=torch.Generator().manual_seed(seed))
    for j, c in enumerate(slots.tolist()):
        rows = [i for i in range(B) if label[i, c] > 0]
        got = (img[B + j], valid[B + j], label[B + j])
        want = (img[rows[-1]], valid[rows[-1]], label[rows[-1]]) if rows else tuple(torch.zeros_like(t) for t in got)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), (j, c, rows)

    # the MSDW weights from the four images' class counts, offset = steps/epoch x bank images x 3 / 20
    z = np.load(os.path.join(meta, 'cls_labels.npz'))
    row = {str(k): i for i, k in enumerate(z['names'])}
    n = np.sum([z['labels'][row[k]] for k in names], axis=0).astype(np.float64)
    a = np.abs(n[:, None] - n[None, :]).sum(1) / (n + 1 * K * 3 / 20)
    w = torch.cat([torch.ones(1), torch.as_tensor(a / a.mean(), dtype=torch.float32)])
    assert torch.allclose(seen['w_ch'], w, rtol=1e-6, atol=0)

    # the reference update
    ref = resnet50_sfc.Net(21, backbone_width=8, backbone_weights='none')
    ref.load_state_dict(seen['state'])

    def masks(size):  # the authors' valid_mask[:, 1:] *= label, then nearest to the stride-16 size
        m = F.interpolate(valid[:, None].float(), size=(size, size), mode='nearest')
        return torch.cat([m, m * label[:, :, None, None]], 1)
    out1 = ref(img, masks(crop // 16))
    out2 = ref(F.interpolate(img, scale_factor=0.5, mode='bilinear', align_corners=True), masks(crop // 32))
    y_bg = torch.cat([torch.ones(B + K, 1), label], 1)[:, :, None, None]
    cls, gsc, cons = reference_losses(out1['score'], out2['score'], out1['cam'], out1['proto_cam'], out2['cam'],
                                      y_bg, w)
    first = next(r for r in logged if 'loss/cls' in r)
    for got, want in ((first['loss/cls'], cls), (first['loss/pdw'], gsc), (first['loss/wdw'], cons)):
        assert got == pytest.approx(float(want.detach()), rel=1e-5)
    (cls + gsc + cons).backward()
    params = dict(ref.named_parameters())
    grads = {k: p.grad for k, p in params.items() if p.grad is not None}
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    clip = min(1.0, 1.0 / (float(norm) + 1e-6))
    new = ('classifier.', 'f9.', 'side1.', 'side2.', 'side3.', 'side4.')
    checked = {'moved': 0, 'still': 0}
    for k, p in params.items():
        before, got = seen['state'][k], after[k]
        if k not in grads:  # conv1 / bn1 frozen, layer1-2 behind the detach: no gradient, no decay
            assert torch.equal(got, before), k
            checked['still'] += 1
            continue
        step_lr = lr * (10 if k.startswith(new) else 1)
        assert_update(k, before, got, before.double() - step_lr * (grads[k].double() * clip + wd * before.double()))
        checked['moved'] += 1
    assert checked['moved'] > 50 and checked['still'] > 20 and norm > 1.0  # the clip was active


@pytest.mark.parametrize('loss', ['ce', 'balanced'])
def test_train_seg_first_update_equals_deeplab_pytorchs_loop(tiny_voc, tmp_path, monkeypatch, loss):
    """train_seg for one update of 2 accumulation steps (iter_size 2) of 2 crops against
    deeplab-pytorch's loop written out here: per accumulation step, the MSC outputs of the training network (4:
    full, 0.5x, 0.75x, their max), the step's label resized to each output by PIL nearest, the loss summed over the
    outputs and divided by iter_size, gradients accumulated; then the first SGD update with momentum (d = g + wd w,
    w -= lr d) over deeplab-pytorch's groups: conv weights of the backbone at lr, ASPP weights at 10x, ASPP biases
    at 20x without weight decay, BatchNorm untouched. 'ce' is nn.CrossEntropyLoss(ignore_index=255); 'balanced'
    the mean of the CE over background pixels and over foreground pixels (CLIMS criterion_balance). Whole batches
    on both sides: with micro-batches the convolutions' float32 rounding moves by ~1e-5, enough at random
    initialisation to flip the MSC max between outputs at near-ties and to route some gradients elsewhere (the
    micro-batch paths are compared with whole batches in tests/test_deeplab.py)."""
    from net import deeplab
    from step import train_seg
    meta = tiny_voc['meta']
    work = str(tmp_path / 'w')
    shutil.copytree(os.path.join(tiny_voc['root'], 'SegmentationClassAug'), os.path.join(work, 'masks'))
    packs = recorded_batches(monkeypatch, train_seg, ('img', 'label'))
    states = []
    real = train_seg.seg_step_gradients

    def capture(model, *a, **k):
        if not states:
            states.append(copy.deepcopy(model.state_dict()))
        return real(model, *a, **k)
    monkeypatch.setattr(train_seg, 'seg_step_gradients', capture)
    build = train_seg.build_model

    def with_biases(args, n):  # ASPP biases start at 0: give them values, so that their (absent) decay would show
        model, norm = build(args, n)
        with torch.no_grad():
            for m in model.base.aspp.children():
                m.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(0))
        return model, norm
    monkeypatch.setattr(train_seg, 'build_model', with_biases)
    lr, wd, A, B = 0.1, 5e-2, 2, 2
    run_sample.main(base_args(tiny_voc, work, '--train_seg_pass', 'True', '--seg_train_list',
                              os.path.join(meta, 'val.txt'), '--seg_label_dir', os.path.join(work, 'masks'),
                              '--seg_init', 'none', '--seg_depth', '50', '--seg_iters', '1', '--seg_batch_size', str(B),
                              '--seg_iter_size', str(A), '--seg_micro_batch', '0', '--seg_crop_size', '64',
                              '--seg_lr', str(lr), '--seg_weight_decay', str(wd), '--seg_momentum', '0.9',
                              '--seg_loss', loss))
    saved = torch.load(os.path.join(work, 'ckpt', camio.SEG_WEIGHTS), weights_only=True)
    after, meta = saved['net'], saved['meta']
    logged = next(json.loads(line) for line in open(camio.scalars_path(os.path.join(work, 'metrics'), 'train_seg')))
    assert len(packs) == A and all(p['img'].shape == (B, 3, 64, 64) for p in packs)

    assert (meta['depth'], meta['width'], meta['aspp_rates'], meta['msc_scales']) == (50, 8, [6, 12, 18, 24],
                                                                                     [0.5, 0.75])
    ref = deeplab.build(21, 50, 8, meta['stride_in'], [6, 12, 18, 24], [0.5, 0.75])
    ref.load_state_dict(states[0])
    ref.train()

    def criterion(logit, lab):
        ce = F.cross_entropy(logit, lab, ignore_index=255, reduction='none')
        if loss == 'ce':
            return ce[lab != 255].mean()
        bg, fg = lab == 0, (lab != 0) & (lab != 255)
        return (ce[bg].mean() + ce[fg].mean()) / 2

    total = 0.0
    for p in packs:
        outs = ref(p['img'])
        assert len(outs) == 4
        it = 0
        for o in outs:
            h, w = o.shape[2:]
            lab = torch.from_numpy(np.stack([np.asarray(Image.fromarray(a).resize((w, h), Image.NEAREST))
                                             for a in p['label'].numpy().astype(np.uint8)]).astype(np.int64))
            assert (lab == 0).any() and ((lab != 0) & (lab != 255)).any()
            it = it + criterion(o, lab)
        it = it / A
        it.backward()
        total += float(it.detach())
    assert logged['loss/seg'] == pytest.approx(total, rel=1e-5)
    groups = {}
    for name, m in ref.base.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            if 'aspp' in name:
                groups[f'base.{name}.weight'], groups[f'base.{name}.bias'] = (10 * lr, wd), (20 * lr, 0.0)
            elif 'layer' in name:
                groups[f'base.{name}.weight'] = (lr, wd)
    moved = 0
    for k, p in ref.named_parameters():
        before, got = states[0][k], after[k]
        if k not in groups:  # BatchNorm: frozen
            assert torch.equal(got, before), k
            continue
        step_lr, decay = groups[k]
        assert_update(k, before, got, before.double() - step_lr * (p.grad.double() + decay * before.double()))
        moved += 1
    assert moved == len(groups) > 50


def test_train_irn_first_update_equals_the_authors_rules(tiny_voc, tmp_path, monkeypatch):
    """train_irn for one step of 4 crops (the GT masks as IR labels), in micro-batches of 1, against the authors'
    step written out here: the affinity labels of every (direction, source) pair from the reduced labels (both
    ends valid; equal: background or foreground positive; different: negative), the loss maps of the network's
    outputs (fixture-checked: tests/test_irn.py), the authors' reductions over the whole batch and
    (L_pos + L_neg)/2 + (L_dfg + L_dbg)/2, then the first update of the authors' optimizer: edge layers at lr,
    displacement layers at 10x, weight decay on both, no clipping, the backbone untouched."""
    from misc.indexing import PathIndex
    from net import resnet50_irn
    from step import train_irn
    work = str(tmp_path / 'w')
    shutil.copytree(os.path.join(tiny_voc['root'], 'SegmentationClassAug'), os.path.join(work, 'ir_label'))
    packs, states = recorded_batches(monkeypatch, train_irn, ('img', 'reduced_label')), []
    real = train_irn.accumulate_gradients

    def capture(model, *a, **k):
        states.append(copy.deepcopy(model.state_dict()))
        return real(model, *a, **k)
    monkeypatch.setattr(train_irn, 'accumulate_gradients', capture)
    lr, wd, crop, radius = 0.1, 1e-2, 96, 5
    run_sample.main(base_args(tiny_voc, work, '--train_irn_pass', 'True', '--train_list',
                              os.path.join(tiny_voc['meta'], 'val.txt'), '--irn_crop_size', str(crop),
                              '--irn_batch_size', '4', '--irn_num_epoches', '1', '--irn_micro_batch', '1',
                              '--irn_lr', str(lr), '--irn_weight_decay', str(wd), '--irn_radius', str(radius),
                              '--irn_dp_mean', 'False'))
    after = torch.load(os.path.join(work, 'ckpt', camio.IRN_WEIGHTS), weights_only=True)['net']
    logged = next(json.loads(line) for line in open(camio.scalars_path(os.path.join(work, 'metrics'), 'train_irn')))
    assert len(packs) == 1 and packs[0]['img'].shape == (4, 3, crop, crop)

    ref = resnet50_irn.Net(8, 'none')
    ref.load_state_dict(states[0])
    ref.train()
    p = PathIndex(radius, (crop // 4, crop // 4))
    red = packs[0]['reduced_label'].long().flatten(1)  # (n, h*w)
    a = red[:, torch.from_numpy(p.src_indices)][:, None]  # (n, 1, src)
    b = red[:, torch.from_numpy(p.dst_indices).reshape(-1)].reshape(red.shape[0], *p.dst_indices.shape)
    valid = (a < 21) & (b < 21)
    bg_pos, fg_pos, neg = ((a == b) & valid & (a == 0)).float(), ((a == b) & valid & (a > 0)).float(), \
        ((a != b) & valid).float()
    assert bg_pos.sum() > 0 and fg_pos.sum() > 0 and neg.sum() > 0
    edge, dp = ref(packs[0]['img'])
    pos_map, neg_map, dfg_map, dbg_map = resnet50_irn.irn_loss_maps(
        edge, dp, [torch.from_numpy(i) for i in p.path_indices], p.search_dst, p.radius_floor)
    eps = 1e-5
    l_pos = (bg_pos * pos_map).sum() / (bg_pos.sum() + eps) / 2 + (fg_pos * pos_map).sum() / (fg_pos.sum() + eps) / 2
    l_neg = (neg * neg_map).sum() / (neg.sum() + eps)
    l_dfg = (dfg_map * fg_pos[:, None]).sum() / (2 * fg_pos.sum() + eps)
    l_dbg = (dbg_map * bg_pos[:, None]).sum() / (2 * bg_pos.sum() + eps)
    for key, want in (('loss/pos', l_pos), ('loss/neg', l_neg), ('loss/dp_fg', l_dfg), ('loss/dp_bg', l_dbg)):
        assert logged[key] == pytest.approx(float(want.detach()), rel=1e-5), key
    ((l_pos + l_neg) / 2 + (l_dfg + l_dbg) / 2).backward()
    moved = 0
    for k, q in ref.named_parameters():
        before, got = states[0][k], after[k]
        if not k.startswith(('fc_edge', 'fc_dp')):
            assert q.grad is None and torch.equal(got, before), k  # the frozen backbone
            continue
        step_lr = lr * (10 if k.startswith('fc_dp') else 1)
        assert_update(k, before, got, before.double() - step_lr * (q.grad.double() + wd * before.double()))
        moved += 1
    assert moved == 17 + 22  # the authors' 17 edge and 22 displacement tensors
