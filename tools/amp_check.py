"""Does mixed precision change the results? Float32 against --amp on the demo's data and recipe.

    python -m tools.amp_check --device cuda --amp bf16            # part of tools/gpu_check.sh
    python -m tools.amp_check --device cpu --amp bf16 --steps 200   # CPU autocast (bfloat16), as on this machine

1. CAMs: one SFC checkpoint (the demo recipe trained in float32 for --steps steps, or --sfc_weights), then make_cam
   on the val images twice, in float32 and with --amp. Reports the share of pixels whose CAM label (keys[argmax])
   agrees, per CAM, and the eval_cam mIoU of both (targets: >= 99.9 % agreement, mIoU within 0.1 point).
2. Training: the demo's SFC recipe for the whole epochs that cover --steps steps, in float32 and with --amp from
   the same start; reports the loss curves side by side (mean over windows of 20 steps) and their largest
   relative gap.
Writes <work_dir>/amp_check.json. Prints numbers; the thresholds are reported, not asserted.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from misc import camio  # noqa: E402
from misc.pyutils import format_table  # noqa: E402
from tools.ablation import DEMO_SFC_FLAGS, ensure_demo_data  # noqa: E402

WINDOW = 20


def run(argv):
    import run_sample
    return run_sample.main(argv + ['--run_log', 'False'])


def common(a, root, meta, work):
    return ['--voc12_root', root, '--work_dir', work, '--device', a.device, '--seed', str(a.seed),
            '--num_workers', str(a.num_workers), '--train_list', os.path.join(meta, 'train_aug.txt'),
            '--infer_list', os.path.join(meta, 'val.txt'), '--eval_list', os.path.join(meta, 'val.txt'),
            '--cls_labels', os.path.join(meta, 'cls_labels.npz'), '--cam_eval_source', 'proto_cam', 'cam', 'fused',
            '--channels_last', a.channels_last, *DEMO_SFC_FLAGS]


def curve(work):
    rows = [json.loads(line) for line in open(camio.scalars_path(os.path.join(work, 'metrics'), 'train_sfc'))]
    return {k: np.array([r[f'loss/{k}'] for r in rows]) for k in ('cls', 'pdw', 'wdw')}


def windowed(x):
    n = len(x) // WINDOW
    return x[:n * WINDOW].reshape(n, WINDOW).mean(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='auto')
    p.add_argument('--amp', default='bf16', choices=('tf32', 'bf16', 'fp16'))
    p.add_argument('--channels_last', default='auto', choices=('auto', 'True', 'False'))
    p.add_argument('--steps', default=200, type=int, help='SFC training steps of the demo recipe (both precisions)')
    p.add_argument('--sfc_weights', default=None, help='checkpoint for the CAM check (default: the float32 run)')
    p.add_argument('--work_dir', default='work/amp_check')
    p.add_argument('--data_dir', default=None, help='where the demo data are generated (default --work_dir)')
    p.add_argument('--seed', default=10, type=int)
    p.add_argument('--num_workers', default=2, type=int)
    a = p.parse_args(argv)
    t0 = time.time()
    a.work_dir = os.path.abspath(a.work_dir)
    root, meta = ensure_demo_data(argparse.Namespace(work_dir=a.data_dir or a.work_dir))
    n_train = len(open(os.path.join(meta, 'train_aug.txt')).read().split())
    epochs = max(1, -(-a.steps * 16 // n_train))  # whole epochs of the demo recipe's batch 16 covering --steps
    works = {prec: os.path.join(a.work_dir, prec) for prec in ('fp32', a.amp)}
    # 1. training curves from the same start
    for prec, work in works.items():
        if not os.path.isfile(os.path.join(work, 'ckpt', camio.SFC_WEIGHTS)):
            run(common(a, root, meta, work) + ['--sfc_num_epoches', str(epochs),
                                               '--amp', 'none' if prec == 'fp32' else a.amp,
                                               '--train_sfc_pass', 'True'])
    curves = {prec: curve(work) for prec, work in works.items()}
    # 2. CAMs of one checkpoint in both precisions
    weights = a.sfc_weights or os.path.join(works['fp32'], 'ckpt', camio.SFC_WEIGHTS)
    for prec, work in works.items():
        run(common(a, root, meta, work) + ['--sfc_weights', weights, '--amp', 'none' if prec == 'fp32' else a.amp,
                                           '--cam_skip_existing', 'False', '--make_cam_pass', 'True',
                                           '--eval_cam_pass', 'True'])
    val = open(os.path.join(meta, 'val.txt')).read().split()
    agree = {s: [0, 0] for s in ('cam', 'proto_cam')}
    for n in val:
        c32 = camio.load_cam(camio.cam_path(os.path.join(works['fp32'], 'cam'), n))
        cam = camio.load_cam(camio.cam_path(os.path.join(works[a.amp], 'cam'), n))
        for s in agree:
            l32 = c32['keys'][np.argmax(c32[s], 0)]
            lam = cam['keys'][np.argmax(cam[s], 0)]
            agree[s][0] += int((l32 == lam).sum())
            agree[s][1] += l32.size
    m = {prec: camio.load_json(os.path.join(w, 'metrics', 'eval_cam.json'))['sources'] for prec, w in works.items()}
    rows = []
    for s in ('cam', 'proto_cam', 'fused'):
        ag = agree.get(s)
        rows.append([s, f'{100 * ag[0] / ag[1]:.3f} %' if ag else '-', f'{m["fp32"][s]["miou"]:.4f}',
                     f'{m[a.amp][s]["miou"]:.4f}', f'{100 * (m[a.amp][s]["miou"] - m["fp32"][s]["miou"]):+.2f}'])
    print(f'CAMs of {weights} on {len(val)} val images, float32 against --amp {a.amp} ({a.device}):')
    print(format_table(['CAM', 'label agreement', 'mIoU fp32', f'mIoU {a.amp}', 'difference (points)'], rows))
    rows, gaps = [], {}
    w32 = {k: windowed(v) for k, v in curves['fp32'].items()}
    wam = {k: windowed(v) for k, v in curves[a.amp].items()}
    for i in range(len(w32['cls'])):
        rows.append([f'{i * WINDOW + 1}-{(i + 1) * WINDOW}'] + [f'{w32[k][i]:.4f} / {wam[k][i]:.4f}' for k in w32])
    for k in w32:
        gaps[k] = float(np.max(np.abs(wam[k] - w32[k]) / np.maximum(np.abs(w32[k]), 1e-12))) if len(w32[k]) else None
    print(f'SFC training losses, float32 / {a.amp}, mean over {WINDOW} steps:')
    print(format_table(['steps', 'lossCLS', 'L_PDW', 'L_WDW'], rows))
    print('largest relative gap of the windowed curves: ' + ', '.join(f'{k} {v:.3f}' for k, v in gaps.items()))
    out = {'device': a.device, 'amp': a.amp, 'steps': a.steps, 'weights': weights,
           'label_agreement': {s: v[0] / v[1] for s, v in agree.items()},
           'miou': {prec: {s: v['miou'] for s, v in mm.items()} for prec, mm in m.items()},
           'loss_curves': {prec: {k: v.tolist() for k, v in c.items()} for prec, c in curves.items()},
           'windowed_max_relative_gap': gaps, 'seconds': time.time() - t0}
    camio.save_json(os.path.join(a.work_dir, 'amp_check.json'), out)
    print(f'wrote {os.path.join(a.work_dir, "amp_check.json")} ({time.time() - t0:.0f} s)')
    return out


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
