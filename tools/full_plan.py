"""What a full VOC or COCO run of the recipes costs on this machine, without the datasets: `run_voc.sh --plan True` and
`run_coco.sh --plan True` on stand-ins of the right shape (the real list sizes, images of the real sizes: 40 generated
images of 500x375 / 640x480, linked under every id), so that the plan's micro-benchmarks run at the real sizes here.

    python -m tools.full_plan                    # both recipes on this machine's default device
    python -m tools.full_plan --dataset voc --device cuda

Prints the two plans (the steps, their work, the per-item times measured here, the estimates). The stand-ins live in
a temporary folder (or --data_dir, kept and reused); nothing else is written.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# the real list sizes: VOC train_aug / train / val; COCO train2014 / val2014 (images with annotations)
SIZES = {'voc': {'train_aug': 10582, 'train': 1464, 'val': 1449}, 'coco': {'train2014': 82081, 'val2014': 40137}}


def _base_images(folder, n, size, rng):
    """n generated images (and GT PNGs) of the dataset's typical size, half of them portrait."""
    from PIL import Image
    from voc12.synthetic import make_sample, variant_style
    os.makedirs(folder, exist_ok=True)
    out = []
    for i in range(n):
        h, w = size if i % 3 else size[::-1]
        img, _, band, _ = make_sample(rng, h, w, variant_style('a'))
        p, g = os.path.join(folder, f'{i}.jpg'), os.path.join(folder, f'{i}.png')
        Image.fromarray(img).save(p, quality=90)
        Image.fromarray(band).save(g)
        out.append((p, g))
    return out


def _link(src, dst):
    if not os.path.lexists(dst):
        os.symlink(src, dst)


def stand_in(kind, root, n_base=40):
    """A stand-in root and its meta lists for `kind` (voc or coco) under root; returns (root, meta)."""
    meta = os.path.join(root, 'meta')
    if os.path.isfile(os.path.join(meta, 'cls_labels.npz')):
        return root, meta
    rng = np.random.default_rng(0)
    base = _base_images(os.path.join(root, 'base'), n_base, (375, 500) if kind == 'voc' else (480, 640), rng)
    os.makedirs(meta, exist_ok=True)
    ids, n_cat = {}, 20 if kind == 'voc' else 80
    if kind == 'voc':
        for d in ('JPEGImages', 'SegmentationClass'):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        ids['train_aug'] = [f'2011_{k:06d}' for k in range(SIZES['voc']['train_aug'])]
        ids['train'] = ids['train_aug'][:SIZES['voc']['train']]
        ids['val'] = [f'2012_{k:06d}' for k in range(SIZES['voc']['val'])]
        every = ids['train_aug'] + ids['val']
        for k, n in enumerate(every):
            _link(base[k % n_base][0], os.path.join(root, 'JPEGImages', n + '.jpg'))
            _link(base[k % n_base][1], os.path.join(root, 'SegmentationClass', n + '.png'))
    else:
        every = []
        for split, n_ids in SIZES['coco'].items():
            for d in (split, os.path.join('SegmentationClass', split)):
                os.makedirs(os.path.join(root, d), exist_ok=True)
            ids[split] = [f'COCO_{split}_{k:012d}' for k in range(n_ids)]
            for k, n in enumerate(ids[split]):
                _link(base[k % n_base][0], os.path.join(root, split, n + '.jpg'))
                _link(base[k % n_base][1], os.path.join(root, 'SegmentationClass', split, n + '.png'))
            every += ids[split]
    for split, names in ids.items():
        with open(os.path.join(meta, split + '.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')
    labels = (rng.random((len(every), n_cat)) < 1.5 / n_cat).astype(np.uint8)
    labels[np.arange(len(every)), rng.integers(0, n_cat, len(every))] = 1
    np.savez(os.path.join(meta, 'cls_labels.npz'), names=np.array(every), labels=labels)
    return root, meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', default='both', choices=('voc', 'coco', 'both'))
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    p.add_argument('--data_dir', default=None, help='where the stand-ins go (default: a temporary folder)')
    a = p.parse_args(argv)
    kinds = ('voc', 'coco') if a.dataset == 'both' else (a.dataset,)
    with tempfile.TemporaryDirectory(prefix='sfc_full_plan_') as tmp:
        base = a.data_dir or tmp
        for kind in kinds:
            root, _ = stand_in(kind, os.path.join(base, kind))
            env = dict(os.environ, DEVICE=a.device, WORK_DIR=root, PYTHON=os.environ.get('PYTHON', sys.executable),
                       **({'VOC12_ROOT': root} if kind == 'voc' else {'COCO14_ROOT': root}))
            script = 'run_voc.sh' if kind == 'voc' else 'run_coco.sh'
            print(f'=== {script} --plan True on a stand-in of full {kind.upper()} ({root}) ===', flush=True)
            subprocess.run(['bash', os.path.join(ROOT, script), '--plan', 'True', '--check_data', 'False'], env=env,
                           check=True, cwd=ROOT)


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
