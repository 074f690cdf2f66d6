"""How far does each make_cam variant (memory layout, BatchNorm folding, threads, --amp) move the CAMs? Prints numbers.

    python -m tools.cam_fidelity --sfc_weights work/demo/ckpt/res50_sfc.pth --width 8   # after bash run_demo.sh
    python -m tools.cam_fidelity --sfc_weights best.pth                                 # the authors' checkpoint

Every variant computes make_cam's arrays (step.make_cam.cams_of: 4 scales x flip, post-processing, kept channels)
for the same generated 500x375 images and the same trained weights. Distances (max abs difference of the stored
classifier and prototype CAMs, and changed labels keys[argmax]; and the relative L2 error of the trunk's layer-4
features against float64, on the first image) are measured against the authors' arithmetic (NCHW,
BatchNorm as its own op, float32, 2 threads, their prototype through an (n, 21, 768, h, w) tensor) and against
the same network in float64. The authors' own 1-thread/2-thread gap is the scale: on VOC images with the authors'
checkpoint it was 5.7e-5, and BatchNorm folded in float32 was 3.8e-4 away with 50 of 492 362 labels changed
(docs/faithfulness.md §12).

It needs a trained checkpoint: a randomly initialised ResNet-50, even with trained-looking BatchNorm statistics,
is so well conditioned that every float32 variant lands within 2e-6 of every other (measured), which says
nothing about trained networks.
"""
import argparse
import copy
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from misc.errors import MissingInput
from misc.pyutils import format_table  # noqa: E402

# (name, channels_last, fold: None | 'float32' | 'float64', threads, dtype, amp, prototype: ours | authors')
VARIANTS = [
    ("the authors' arithmetic: NCHW, BN unfolded, 2 threads, their prototype (reference)", False, None, 2, 'float32',
     'none', 'authors'),
    ('the default: the same with our prototype (matrix products)', False, None, 2, 'float32', 'none', 'ours'),
    ('NCHW, BN unfolded, 1 thread', False, None, 1, 'float32', 'none', 'ours'),
    ('NCHW, BN folded in float32', False, 'float32', 2, 'float32', 'none', 'ours'),
    ('NCHW, BN folded in float64 (--cam_fold_bn True)', False, 'float64', 2, 'float32', 'none', 'ours'),
    ('channels-last, BN unfolded (--channels_last True)', True, None, 2, 'float32', 'none', 'ours'),
    ('channels-last, BN folded in float64 (both flags)', True, 'float64', 2, 'float32', 'none', 'ours'),
    ('channels-last, BN folded in float32', True, 'float32', 2, 'float32', 'none', 'ours'),
    ('NCHW, --amp bf16', False, None, 2, 'float32', 'bf16', 'ours'),
    ('NCHW, --amp fp16', False, None, 2, 'float32', 'fp16', 'ours'),
    ('float64 (the exact value, for scale)', False, None, 2, 'float64', 'none', 'ours'),
]


def layer4_features(model, x, dtype, amp, channels_last):
    """The trunk's layer-4 output (float64) for one [image, flipped image] pair, as the variant computes it."""
    import torch
    from misc.torchutils import autocast, to_memory_format
    r = model.resnet50
    with torch.inference_mode(), autocast(amp, 'cpu'):
        x = to_memory_format(torch.from_numpy(x).to(getattr(torch, dtype)), channels_last)
        return r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))))).double()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sfc_weights', required=True, help='a trained SFC checkpoint (ours or the authors\')')
    p.add_argument('--width', default=64, type=int, help='its backbone width (64 = the real ResNet-50; the demo: 8)')
    p.add_argument('--classes', default=20, type=int)
    p.add_argument('--images', default=4, type=int)
    p.add_argument('--height', default=375, type=int)
    p.add_argument('--width_px', default=500, type=int)
    p.add_argument('--scales', default=[1.0, 0.5, 1.5, 2.0], type=float, nargs='+')
    p.add_argument('--seed', default=0, type=int)
    p.add_argument('--variants', default=None, type=int, nargs='+', help='indices into the variant list (default all)')
    p.add_argument('--json', default=None, help='also write the results to this file')
    a = p.parse_args(argv)
    import torch
    from misc import camio
    from misc.torchutils import prepare_for_inference
    from net.resnet50 import fold_batchnorm
    from net import resnet50_sfc
    from net.resnet50_sfc import CAM, load_sfc_weights
    import run_sample
    from tools.benchmark import authors_prototype
    from step.make_cam import cams_of
    from voc12.dataloader import multiscale_flip
    from voc12.synthetic import make_sample
    t0 = time.time()
    torch.manual_seed(a.seed)
    base = CAM(a.classes + 1, backbone_width=a.width)
    rng = np.random.default_rng(a.seed)
    samples = [make_sample(rng, a.height, a.width_px) for _ in range(a.images)]
    if not os.path.isfile(a.sfc_weights):
        raise MissingInput(f'--sfc_weights {a.sfc_weights} does not exist (bash run_demo.sh writes '
                           f'work/demo/ckpt/res50_sfc.pth, a width-8 network: pass --width 8)')
    load_sfc_weights(base, camio.load_checkpoint(a.sfc_weights), a.sfc_weights)
    packs = []
    for img, gt, _, _ in samples:
        label = np.zeros(a.classes, np.float32)
        present = [c - 1 for c in np.unique(gt) if 0 < c <= a.classes]
        label[present] = 1
        packs.append((img, torch.from_numpy(label)))
    threads0, ours = torch.get_num_threads(), resnet50_sfc.prototype_cam
    chosen = [VARIANTS[i] for i in (a.variants if a.variants is not None else range(len(VARIANTS)))]
    outs, secs, feats = {}, {}, {}
    for name, cl, fold, threads, dtype, amp, proto in chosen:
        model = copy.deepcopy(base)
        if fold:
            fold_batchnorm(model.resnet50, getattr(torch, fold))
        model = prepare_for_inference(model.to(getattr(torch, dtype)), 'cpu', fold_bn=False, channels_last=cl)
        args = run_sample.get_parser().parse_args(['--channels_last', str(cl), '--amp', amp])
        torch.set_num_threads(threads)
        resnet50_sfc.prototype_cam = authors_prototype if proto == 'authors' else ours
        res, t1 = [], time.time()
        try:
            for img, label in packs:
                pack = {'img': [torch.from_numpy(x).to(getattr(torch, dtype)) for x in multiscale_flip(img, a.scales)],
                        'label': label}
                res.append(cams_of(model, pack, a.classes + 1, img.shape[:2], args, 'cpu'))
            secs[name] = (time.time() - t1) / len(packs)
            feats[name] = layer4_features(model, multiscale_flip(packs[0][0], a.scales[:1])[0], dtype, amp, cl)
        finally:
            torch.set_num_threads(threads0)
            resnet50_sfc.prototype_cam = ours
        outs[name] = res
        print(f'  {name}: {secs[name]:.2f} s per image', flush=True)
    ref_name, exact_name = VARIANTS[0][0], VARIANTS[-1][0]

    def dist(x, y):
        d = {'cam': 0.0, 'proto': 0.0, 'cam_labels': 0, 'proto_labels': 0, 'pixels': 0}
        for (c1, p1, k1), (c2, p2, k2) in zip(x, y):
            for key, m1, m2 in (('cam', c1, c2), ('proto', p1, p2)):
                d[key] = max(d[key], float(np.abs(m1.astype(np.float64) - m2).max()))
                d[key + '_labels'] += int((k1[np.argmax(m1, 0)] != k2[np.argmax(m2, 0)]).sum())
            d['pixels'] += c1.shape[1] * c1.shape[2]
        return d
    rows, results = [], []
    for name, *_ in chosen:
        r = {'variant': name, 'seconds_per_image': secs[name]}
        cells = [name, f'{secs[name]:.2f}']
        if exact_name in feats:  # how much the trunk's own output moved: what the CAMs' argmaxes then amplify
            r['layer4_relative_error'] = float((feats[name] - feats[exact_name]).norm() / feats[exact_name].norm())
        cells.append(f'{r["layer4_relative_error"]:.1e}' if 'layer4_relative_error' in r else '-')
        for other, tag in ((ref_name, 'reference'), (exact_name, 'float64')):
            if other in outs and other != name:
                d = dist(outs[name], outs[other])
                r[tag] = d
                cells += [f'{d["cam"]:.2e}', f'{d["proto"]:.2e}', f'{d["cam_labels"]} / {d["proto_labels"]}']
            else:
                cells += ['-', '-', '-']
        rows.append(cells)
        results.append(r)
    n_pix = sum(s[0].shape[0] * s[0].shape[1] for s in samples)
    print(f'make_cam arrays of {a.images} images ({a.width_px}x{a.height}, {n_pix} labels), {a.sfc_weights}:')
    print(format_table(['variant', 's/image', 'layer-4 rel. err', 'cam vs ref', 'proto vs ref',
                        'labels vs ref (cam / proto)', 'cam vs f64', 'proto vs f64', 'labels vs f64'], rows))
    print(f'({time.time() - t0:.0f} s)')
    if a.json:
        camio.save_json(a.json, {'sfc_weights': a.sfc_weights, 'images': a.images, 'labels': n_pix,
                                 'variants': results})
    return results


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
