"""Deterministic synthetic MS COCO 2014-format data, for the tests and quick trials.

    python -m coco14.synthetic --out_root work/coco_synth --n_train 40 --n_val 20 --seed 0

Writes train2014/ and val2014/ JPEGs named COCO_<split>_<12 digits>.jpg (every 5th one grayscale, as some
COCO images are) and annotations/instances_<split>.json with the 80 standard categories; instances use
polygon segmentations (rectangles, triangles) or compressed RLE (ellipses), about one in eight is a crowd
region (uncompressed RLE, iscrowd 1), and some instances overlap.
"""
import argparse
import json
import os

import cv2
import numpy as np

from coco14.dataloader import CAT_LIST
from voc12.synthetic import COLOURS, PERIOD, background, image_size, texture

# the standard COCO category ids of CAT_LIST (1..90 with gaps)
CAT_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
           34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
           62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def _instance(rng, h, w):
    """(mask, segmentation) with a polygon for rectangles/triangles and compressed RLE for ellipses."""
    from pycocotools import mask as mask_utils
    sh, sw = int(h * rng.uniform(0.3, 0.6)), int(w * rng.uniform(0.3, 0.6))
    cy, cx = int(rng.integers(sh // 2, h - sh // 2)), int(rng.integers(sw // 2, w - sw // 2))
    kind = int(rng.integers(0, 3))
    m = np.zeros((h, w), np.uint8)
    if kind == 0:
        cv2.ellipse(m, (cx, cy), (sw // 2, sh // 2), 0.0, 0, 360, 1, -1)
        rle = mask_utils.encode(np.asfortranarray(m))
        rle['counts'] = rle['counts'].decode('ascii')
        return m.astype(bool), rle
    if kind == 1:
        pts = [[cx - sw // 2, cy - sh // 2], [cx + sw // 2, cy - sh // 2], [cx + sw // 2, cy + sh // 2],
               [cx - sw // 2, cy + sh // 2]]
    else:
        pts = [[cx, cy - sh // 2], [cx - sw // 2, cy + sh // 2], [cx + sw // 2, cy + sh // 2]]
    poly = [float(v) for p in pts for v in p]
    # rasterise exactly as pycocotools will, so the painted pixels are the annotated ones
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
    return mask_utils.decode(rle).astype(bool), [poly]


def _uncompressed_rle(mask):
    """COCO's crowd format: column-major run lengths starting with a background run."""
    flat = np.asfortranarray(mask.astype(np.uint8)).reshape(-1, order='F')
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {'counts': counts, 'size': [int(mask.shape[0]), int(mask.shape[1])]}


def make_synthetic_coco(out_root, n_train=40, n_val=20, seed=0, min_size=64, max_size=120, n_classes=12):
    """Writes the data; returns {split: [ids]}. Categories drawn from the first n_classes of CAT_LIST."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS.values())
    ids, ann_id = {}, 1
    os.makedirs(os.path.join(out_root, 'annotations'), exist_ok=True)
    for split, n in (('train2014', n_train), ('val2014', n_val)):
        os.makedirs(os.path.join(out_root, split), exist_ok=True)
        images, anns, ids[split] = [], [], []
        for k in range(n):
            img_id = (1 if split == 'train2014' else 500000) + k * 7
            name = f'COCO_{split}_{img_id:012d}'
            h, w = image_size(rng, min_size, max_size)
            img = background(rng, h, w)
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.integers(0, n_classes))
                m, seg = _instance(rng, h, w)
                tex = texture(c % 4, h, w, rng.integers(0, PERIOD, size=2))
                fill = np.asarray(colours[c % len(colours)], np.float32)[None, None] * tex[..., None]
                img[m] = fill[m] + rng.normal(0, 8, size=(int(m.sum()), 3))
                crowd = rng.random() < 0.125
                if crowd:
                    seg = _uncompressed_rle(m)
                ys, xs = np.nonzero(m)
                anns.append({'id': ann_id, 'image_id': img_id, 'category_id': CAT_IDS[c], 'segmentation': seg,
                             'area': float(m.sum()), 'iscrowd': int(crowd),
                             'bbox': [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                      float(ys.max() - ys.min() + 1)]})
                ann_id += 1
            img = np.clip(img, 0, 255).astype(np.uint8)
            path = os.path.join(out_root, split, name + '.jpg')
            if k % 5 == 4:
                cv2.imwrite(path, cv2.cvtColor(img[:, :, ::-1], cv2.COLOR_BGR2GRAY), [cv2.IMWRITE_JPEG_QUALITY, 92])
            else:
                cv2.imwrite(path, img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            images.append({'id': img_id, 'file_name': name + '.jpg', 'height': h, 'width': w})
            ids[split].append(name)
        cats = [{'id': i, 'name': nm, 'supercategory': 'thing'} for i, nm in zip(CAT_IDS, CAT_LIST)]
        with open(os.path.join(out_root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump({'images': images, 'annotations': anns, 'categories': cats}, f)
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out_root', required=True, type=str)
    p.add_argument('--n_train', default=40, type=int)
    p.add_argument('--n_val', default=20, type=int)
    p.add_argument('--seed', default=0, type=int)
    p.add_argument('--n_classes', default=12, type=int)
    p.add_argument('--min_size', default=64, type=int)
    p.add_argument('--max_size', default=120, type=int)
    a = p.parse_args(argv)
    ids = make_synthetic_coco(a.out_root, a.n_train, a.n_val, a.seed, a.min_size, a.max_size, a.n_classes)
    print(f'synthetic COCO at {a.out_root}: ' + ', '.join(f'{k} {len(v)}' for k, v in ids.items()))


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
