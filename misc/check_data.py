"""Dataset checker: one actionable line per problem, a summary, exit status 1 when anything is wrong.

    python -m misc.check_data --dataset voc12 --root VOCdevkit/VOC2012 \
        --lists work/voc/meta/train_aug.txt --gt_lists work/voc/meta/train.txt --cls_labels work/voc/meta/cls_labels.npz

Checks: the root's folders; every list exists and is non-empty; every id has an image and an image-level
label (and a non-empty one); with --decode every image decodes; for --gt_lists every id has a GT mask
whose size equals the image's and whose values are class ids or 255. run_sample.py runs the quick part
(no decoding) before its steps (--check_data).
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

from misc.dataset import get_dataset


def check(ds_mod, root, lists, gt_lists=(), cls_labels=None, decode=False):
    """-> (problems: list of str, summary rows: list of (list, images, problems))."""
    layout = ds_mod.ImageDataset.layout
    problems, summary = [], []
    try:
        layout.check_root(root)
    except FileNotFoundError as e:
        return [str(e)], summary
    labels = None
    if cls_labels:
        try:
            labels = ds_mod.load_cls_labels(cls_labels)
        except (OSError, ValueError) as e:
            problems.append(str(e))
    n_cls = layout.n_cat() + 1
    for path in dict.fromkeys(list(lists) + list(gt_lists)):
        before = len(problems)
        try:
            names = ds_mod.load_img_name_list(path)
        except (OSError, ValueError) as e:
            problems.append(str(e))
            summary.append((path, 0, 1))
            continue
        for n in names:
            img_path = layout.image_path(root, n)
            if not os.path.isfile(img_path):
                problems.append(f'{path}: {n}: image {img_path} is missing (drop the id or restore the file)')
                continue
            size = None
            try:
                with Image.open(img_path) as im:
                    size = im.size[::-1]
                    if decode:
                        im.load()
            except (OSError, SyntaxError) as e:
                problems.append(f'{path}: {n}: image {img_path} cannot be decoded ({e}); replace it or drop the id')
            if labels is not None:
                if n not in labels:
                    problems.append(f'{path}: {n}: no image-level label in {cls_labels} (rebuild it with make_cls_labels)')
                elif not np.any(labels[n]):
                    problems.append(f'{path}: {n}: its image-level label is empty (no class); drop the id')
            if path in gt_lists:
                gt_path = layout.gt_path(root, n)
                if not os.path.isfile(gt_path):
                    problems.append(f'{path}: {n}: GT mask {gt_path} is missing (evaluation needs it)')
                    continue
                try:
                    with Image.open(gt_path) as g:
                        gt = np.array(g)
                except (OSError, SyntaxError) as e:
                    problems.append(f'{path}: {n}: GT mask {gt_path} cannot be decoded ({e})')
                    continue
                if gt.ndim != 2:
                    problems.append(f'{path}: {n}: GT mask {gt_path} is not single-channel (shape {gt.shape}); '
                                    f'save class indices (palette or L mode)')
                elif size is not None and tuple(gt.shape) != tuple(size):
                    problems.append(f'{path}: {n}: GT mask is {gt.shape[0]}x{gt.shape[1]}, the image {size[0]}x{size[1]}')
                else:
                    bad = np.setdiff1d(np.unique(gt), np.r_[np.arange(n_cls), 255])
                    if bad.size:
                        problems.append(f'{path}: {n}: GT mask has values {bad.tolist()[:5]} outside 0..{n_cls - 1} and 255')
        summary.append((path, len(names), len(problems) - before))
    return problems, summary


def report(problems, summary, limit=50):
    for path, n, k in summary:
        print(f'  {path}: {n} images, {k} problems')
    for p in problems[:limit]:
        print('  PROBLEM ' + p)
    if len(problems) > limit:
        print(f'  ... and {len(problems) - limit} more')
    print(f'  data check: {"OK" if not problems else f"{len(problems)} problems"}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', default='voc12', choices=('voc12', 'coco14'))
    p.add_argument('--root', required=True, type=str)
    p.add_argument('--lists', nargs='+', default=[], type=str, help='lists whose images and labels are checked')
    p.add_argument('--gt_lists', nargs='*', default=[], type=str, help='lists whose GT masks are checked too')
    p.add_argument('--cls_labels', default=None, type=str)
    p.add_argument('--decode', default=True, type=lambda v: str(v).lower() in ('1', 'true', 'yes'),
                   help='decode every image (slower, finds truncated files)')
    a = p.parse_args(argv)
    problems, summary = check(get_dataset(a.dataset), a.root, a.lists, a.gt_lists, a.cls_labels, a.decode)
    report(problems, summary)
    return 1 if problems else 0


if __name__ == '__main__':
    from misc.errors import cli
    sys.exit(cli(main))
