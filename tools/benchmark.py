"""Speed and memory of the heavy stages on this machine: prints numbers, asserts nothing.

    python tools/benchmark.py                 # every stage, the authors' sizes (ResNet-50, crop 512, batch 16+4)
    python tools/benchmark.py --stages make_cam --threads 1

Each stage runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own.
Random weights are used (no download); the cost does not depend on the weight values.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_train_step(a):
    import torch
    from misc.image_bank import ImageBank
    from misc.torchutils import PolyOptimizer
    from net import sfc_loss
    from net.resnet50_sfc import Net
    from step.train_sfc import sfc_step_gradients
    import argparse as ap
    torch.manual_seed(0)
    n_cat, B, K, crop = a.classes, a.batch, a.bank, a.crop
    model = Net(n_cat + 1, backbone_width=a.width)
    bb, new = model.trainable_parameters()
    opt = PolyOptimizer([{'params': bb, 'lr': 0.1, 'weight_decay': 1e-4},
                         {'params': new, 'lr': 1.0, 'weight_decay': 1e-4}], 0.1, 1e-4, 100)
    bank = ImageBank(n_cat, crop, 'cpu')
    w = sfc_loss.channel_weights(torch.ones(n_cat))
    args = ap.Namespace(sfc_micro_batch=a.sfc_micro_batch, sfc_half_scale=0.5, sfc_pdw=True, sfc_wdw=True,
                        sfc_pdw_weight=1.6, sfc_wdw_weight=0.8)
    g = torch.Generator().manual_seed(0)
    times = []
    base = _peak_mb()
    for it in range(a.repeats + 1):
        img = torch.randn(B, 3, crop, crop)
        valid = torch.ones(B, crop, crop, dtype=torch.uint8)
        label = (torch.rand(B, n_cat, generator=g) < 0.1).float()
        t0 = time.perf_counter()
        bank.update(img, valid, label)
        bi, bm, bl = bank.sample(K, g)
        img, valid, label = torch.cat([img, bi]), torch.cat([valid, bm]), torch.cat([label, bl])
        sfc_step_gradients(model, img, valid, label, w, args, crop // 16, crop // 32, opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if it:  # the first step warms up the allocator
            times.append(time.perf_counter() - t0)
    return {'stage': f'train_sfc step (crop {crop}, batch {B}+{K} in micro-batches of {a.sfc_micro_batch or B + K}, width {a.width})',
            'seconds': sum(times) / len(times), 'unit': 'per step', 'peak_rss_mb': _peak_mb(),
            'bank_mb': bank.nbytes() / 2 ** 20, 'model_built_rss_mb': base}


def stage_make_cam(a):
    import numpy as np
    import torch
    from step.make_cam import postprocess
    from net.resnet50_sfc import CAM
    from voc12.dataloader import multiscale_flip
    torch.manual_seed(0)
    from net.resnet50 import fold_batchnorm
    model = CAM(a.classes + 1, backbone_width=a.width).eval()
    fold_batchnorm(model.resnet50)  # as make_cam does (--cam_fold_bn True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (a.height, a.width_px, 3), dtype=np.uint8)
    label = torch.zeros(a.classes + 1)
    label[[0, 3, 15]] = 1
    keys = np.array([0, 3, 15])
    times = []
    for it in range(a.repeats + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():
            outs = [model(torch.from_numpy(x), label) for x in multiscale_flip(img, a.scales)]
            postprocess([o[0] for o in outs], img.shape[:2], keys)
            postprocess([o[1] for o in outs], img.shape[:2], keys)
        if it:
            times.append(time.perf_counter() - t0)
    return {'stage': f'make_cam ({a.width_px}x{a.height}, scales {tuple(a.scales)} x flip, width {a.width})',
            'seconds': sum(times) / len(times), 'unit': 'per image', 'peak_rss_mb': _peak_mb()}


def _synthetic_cams(a, k=3):
    """A 500x375 image with two objects and CAM-like arrays for keys [0, 3, 15] (cost does not depend on values)."""
    import numpy as np
    rng = np.random.default_rng(0)
    h, w = a.height, a.width_px
    img = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    blobs = [np.exp(-((yy - h * 0.4) ** 2 + (xx - w * 0.3) ** 2) / (2 * (h / 6) ** 2)),
             np.exp(-((yy - h * 0.6) ** 2 + (xx - w * 0.7) ** 2) / (2 * (h / 5) ** 2))]
    cam = np.stack([1 - np.maximum(*blobs) + 0.4] + [2 * b for b in blobs]).astype(np.float32)
    img[blobs[0] > 0.5] = (200, 40, 40)
    img[blobs[1] > 0.5] = (40, 40, 200)
    return img, {'keys': np.array([0, 3, 15]), 'cam': cam, 'proto_cam': cam * 0.9}


def stage_cam_to_ir_label(a):
    from step.cam_to_ir_label import ir_label
    img, cams = _synthetic_cams(a)
    times = []
    for it in range(a.repeats + 1):
        t0 = time.perf_counter()
        ir_label(img, {k: v.copy() for k, v in cams.items()})
        if it:
            times.append(time.perf_counter() - t0)
    return {'stage': f'cam_to_ir_label ({a.width_px}x{a.height}, K=3, two CRF passes t=12)',
            'seconds': sum(times) / len(times), 'unit': 'per image', 'peak_rss_mb': _peak_mb()}


def stage_make_sem_seg(a):
    import argparse as ap
    import torch
    from net.resnet50 import fold_batchnorm
    from net.resnet50_irn import EdgeDisplacement
    from step.make_sem_seg import pseudo_label
    from voc12.dataloader import multiscale_flip
    torch.manual_seed(0)
    model = EdgeDisplacement(crop_size=512, backbone_width=a.width).eval()
    fold_batchnorm(model.resnet50)  # as make_sem_seg does (--cam_fold_bn True)
    img, cams = _synthetic_cams(a)
    args = ap.Namespace(sem_seg_proto_weight=0.3, sem_seg_power=1.3, sem_seg_double_power=True, sem_seg_bg_value=0.25,
                        sem_seg_radius=5, beta=10, exp_times=8)
    times, walk = [], []
    for it in range(a.repeats + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():
            edge, _ = model(torch.from_numpy(multiscale_flip(img, (1.0,))[0]))
            t1 = time.perf_counter()
            pseudo_label(cams, edge, img.shape[:2], args)
        if it:
            times.append(time.perf_counter() - t0)
            walk.append(time.perf_counter() - t1)
    return {'stage': f'make_sem_seg ({a.width_px}x{a.height}: IRN edges + both random walks T^256, width {a.width})',
            'seconds': sum(times) / len(times), 'unit': 'per image', 'peak_rss_mb': _peak_mb(),
            'walk_s': sum(walk) / len(walk)}


def stage_train_irn_step(a):
    import torch
    from misc.indexing import PathIndex
    from misc.torchutils import PolyOptimizer
    from net import resnet50_irn
    from step.train_irn import accumulate_gradients, affinity_labels_torch
    torch.manual_seed(0)
    crop, B = a.crop, a.irn_batch
    model = resnet50_irn.Net(a.width).train()
    e, d = model.trainable_parameters()
    opt = PolyOptimizer([{'params': e, 'lr': 0.1, 'weight_decay': 1e-4}, {'params': d, 'lr': 1.0, 'weight_decay': 1e-4}],
                        0.1, 1e-4, 100)
    p = PathIndex(10, (crop // 4, crop // 4))
    inds = [torch.from_numpy(i) for i in p.path_indices]
    src, dst = torch.from_numpy(p.src_indices), torch.from_numpy(p.dst_indices)
    times = []
    for it in range(a.repeats + 1):
        img = torch.randn(B, 3, crop, crop)
        red = torch.randint(0, 3, (B, crop // 4, crop // 4), dtype=torch.uint8)
        t0 = time.perf_counter()
        labels = affinity_labels_torch(red, src, dst, 21)
        accumulate_gradients(model, img, labels, inds, p, a.irn_micro_batch or B, opt)
        opt.step()
        if it:
            times.append(time.perf_counter() - t0)
    return {'stage': f'train_irn step (crop {crop}, batch {B} in micro-batches of {a.irn_micro_batch or B}, width {a.width})', 'seconds': sum(times) / len(times),
            'unit': 'per step', 'peak_rss_mb': _peak_mb()}


def stage_train_seg_step(a):
    import torch
    from net import deeplab
    from step.train_seg import optimizer_for, seg_step_gradients
    import argparse as ap
    torch.manual_seed(0)
    B, crop = a.seg_batch, a.seg_crop
    model = deeplab.build(a.classes + 1, a.seg_depth, a.width, '1x1').train()
    opt = optimizer_for(model, ap.Namespace(seg_lr=2.5e-4, seg_weight_decay=5e-4, seg_head_lr_mult=10,
                                            seg_head_bias_lr_mult=20, seg_momentum=0.9, seg_poly_power=0.9,
                                            seg_lr_decay_every=10), 30000)
    times = []
    base = _peak_mb()
    for it in range(a.repeats + 1):
        img = torch.randn(B, 3, crop, crop) * 50
        label = torch.randint(0, a.classes + 1, (B, crop, crop), dtype=torch.uint8)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        seg_step_gradients(model, img, label, 'balanced', 1, a.seg_micro_batch)
        opt.step()
        if it:
            times.append(time.perf_counter() - t0)
    return {'stage': f'train_seg step (DeepLab-v2 ResNet-{a.seg_depth} MSC, crop {crop}, batch {B} in micro-batches of '
                     f'{a.seg_micro_batch or B}, width {a.width})', 'seconds': sum(times) / len(times),
            'unit': 'per step', 'peak_rss_mb': _peak_mb(), 'model_built_rss_mb': base}


def stage_make_seg(a):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from misc.imutils import crf_inference_softmax
    from net import deeplab
    from step.make_seg import predict_logits
    torch.manual_seed(0)
    model = deeplab.build(a.classes + 1, a.seg_depth, a.width, '1x1').eval()
    img, _ = _synthetic_cams(a)
    x = torch.from_numpy(deeplab.normalize_image(img, 'caffe').transpose(2, 0, 1).copy())[None]
    times, crf = [], []
    for it in range(a.repeats + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():
            prob = F.softmax(predict_logits(model, x, img.shape[:2]), dim=0).numpy()
        t1 = time.perf_counter()
        np.argmax(crf_inference_softmax(img, prob), axis=0)
        if it:
            times.append(time.perf_counter() - t0)
            crf.append(time.perf_counter() - t1)
    return {'stage': f'make_seg ({a.width_px}x{a.height}: DeepLab-v2 ResNet-{a.seg_depth} MSC + dense CRF 10 it, '
                     f'width {a.width})', 'seconds': sum(times) / len(times), 'unit': 'per image',
            'peak_rss_mb': _peak_mb(), 'crf_s': sum(crf) / len(crf)}


STAGES = {'train_step': stage_train_step, 'make_cam': stage_make_cam, 'cam_to_ir_label': stage_cam_to_ir_label,
          'train_irn_step': stage_train_irn_step, 'make_sem_seg': stage_make_sem_seg,
          'train_seg_step': stage_train_seg_step, 'make_seg': stage_make_seg}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--stages', nargs='+', default=list(STAGES), choices=list(STAGES))
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
    p.add_argument('--width', type=int, default=64, help='backbone width (64 = ResNet-50)')
    p.add_argument('--classes', type=int, default=20)
    p.add_argument('--crop', type=int, default=512)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--bank', type=int, default=4)
    p.add_argument('--sfc_micro_batch', type=int, default=10)
    p.add_argument('--irn_batch', type=int, default=32)
    p.add_argument('--irn_micro_batch', type=int, default=8)
    p.add_argument('--seg_batch', type=int, default=10, help='train_seg images per update (the ImageNet recipe)')
    p.add_argument('--seg_crop', type=int, default=321)
    p.add_argument('--seg_micro_batch', type=int, default=0, help='0 = the whole batch in one pass')
    p.add_argument('--seg_depth', type=int, default=101)
    p.add_argument('--width_px', type=int, default=500)
    p.add_argument('--height', type=int, default=375)
    p.add_argument('--scales', type=float, nargs='+', default=[1.0, 0.5, 1.5, 2.0])
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--_child', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps(STAGES[a._child](a)))
        return
    import torch
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, threads {a.threads or torch.get_num_threads()}')
    for s in a.stages:
        cmd = [sys.executable, os.path.abspath(__file__), '--_child', s, '--threads', str(a.threads),
               '--width', str(a.width), '--classes', str(a.classes), '--crop', str(a.crop), '--batch', str(a.batch),
               '--bank', str(a.bank), '--sfc_micro_batch', str(a.sfc_micro_batch), '--irn_batch', str(a.irn_batch), '--irn_micro_batch', str(a.irn_micro_batch),
               '--seg_batch', str(a.seg_batch), '--seg_crop', str(a.seg_crop), '--seg_micro_batch', str(a.seg_micro_batch),
               '--seg_depth', str(a.seg_depth), '--width_px', str(a.width_px), '--height', str(a.height),
               '--repeats', str(a.repeats), '--scales', *map(str, a.scales)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f'{s}: failed\n{out.stderr[-2000:]}')
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        extra = f', image bank {r["bank_mb"]:.0f} MB' if 'bank_mb' in r else ''
        extra += f' (random walks {r["walk_s"]:.2f} s)' if 'walk_s' in r else ''
        extra += f' (CRF {r["crf_s"]:.2f} s = {100 * r["crf_s"] / r["seconds"]:.0f}%)' if 'crf_s' in r else ''
        print(f'{r["stage"]}: {r["seconds"]:.2f} s {r["unit"]}, peak RSS {r["peak_rss_mb"] / 1024:.2f} GB{extra}')


if __name__ == '__main__':
    main()
