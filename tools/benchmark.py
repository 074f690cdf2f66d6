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
    import torch.nn.functional as F
    from misc.image_bank import ImageBank
    from misc.torchutils import PolyOptimizer
    from net import sfc_loss
    from net.resnet50_sfc import Net
    from step.train_sfc import stride_masks
    torch.manual_seed(0)
    n_cat, B, K, crop = a.classes, a.batch, a.bank, a.crop
    model = Net(n_cat + 1, backbone_width=a.width)
    bb, new = model.trainable_parameters()
    opt = PolyOptimizer([{'params': bb, 'lr': 0.1, 'weight_decay': 1e-4},
                         {'params': new, 'lr': 1.0, 'weight_decay': 1e-4}], 0.1, 1e-4, 100)
    bank = ImageBank(n_cat, crop, 'cpu')
    w = sfc_loss.channel_weights(torch.ones(n_cat))
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
        img2 = F.interpolate(img, scale_factor=0.5, mode='bilinear', align_corners=True)
        o1 = model(img, stride_masks(valid, label, crop // 16))
        o2 = model(img2, stride_masks(valid, label, crop // 32))
        y = label[:, :, None, None]
        y_bg = torch.cat([torch.ones_like(y[:, :1]), y], 1)
        loss = (sfc_loss.classification_loss(o1['score'], o2['score'], y)
                + 1.6 * sfc_loss.gsc_loss(o1['cam'], o1['proto_cam'], w)
                + 0.8 * sfc_loss.cross_scale_loss(o1['cam'], o2['cam'], y_bg, w))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if it:  # the first step warms up the allocator
            times.append(time.perf_counter() - t0)
    return {'stage': f'train_sfc step (crop {crop}, batch {B}+{K}, width {a.width})',
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


STAGES = {'train_step': stage_train_step, 'make_cam': stage_make_cam}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--stages', nargs='+', default=list(STAGES), choices=list(STAGES))
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
    p.add_argument('--width', type=int, default=64, help='backbone width (64 = ResNet-50)')
    p.add_argument('--classes', type=int, default=20)
    p.add_argument('--crop', type=int, default=512)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--bank', type=int, default=4)
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
               '--bank', str(a.bank), '--width_px', str(a.width_px), '--height', str(a.height),
               '--repeats', str(a.repeats), '--scales', *map(str, a.scales)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f'{s}: failed\n{out.stderr[-2000:]}')
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        extra = f', image bank {r["bank_mb"]:.0f} MB' if 'bank_mb' in r else ''
        print(f'{r["stage"]}: {r["seconds"]:.2f} s {r["unit"]}, peak RSS {r["peak_rss_mb"] / 1024:.2f} GB{extra}')


if __name__ == '__main__':
    main()
