"""Prepare MS COCO 2014 for the pipeline (docs/faithfulness §1, §9), with pycocotools.

    python -m coco14.make_cls_labels --coco14_root data/coco2014 --out_dir work/coco/meta

For each split with annotations/instances_<split>.json it writes
- <out_dir>/<split>.txt: ids (file names without extension) of the images that have at least one
  annotation (82 081 for train2014, as the authors' train_coco.txt);
- <out_dir>/cls_labels.npz: names and uint8 (N, 80) multi-hot labels in the standard category order, from
  every annotation of the image (crowd ones too: a crowd of people still means "person");
- <coco14_root>/SegmentationClass/<split>/<id>.png: class-index GT for evaluation. Rule for overlaps:
  non-crowd instances are painted from the largest area to the smallest, so a smaller object lying on a
  larger one stays visible; then crowd regions not covered by any non-crowd instance become 255 (ignored).
Existing PNGs are kept (re-runs are cheap).
"""
import argparse
import os

import numpy as np
from tqdm import tqdm

from coco14.dataloader import CAT_LIST, SPLITS
from misc.camio import atomic_write, is_complete_label, save_json, write_label
from misc.errors import BadInput, MissingInput
from misc.imutils import voc_palette
from voc12.dataloader import save_img_name_list


def _coco(path):
    if not os.path.isfile(path):
        raise MissingInput(f'{path} is missing: --coco14_root must hold annotations/instances_<split>.json')
    from pycocotools.coco import COCO
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def category_index(coco, path):
    """COCO category id -> class index 1..80 (standard order = ascending id); checks the names."""
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c['id'])
    names = [c['name'] for c in cats]
    if names != CAT_LIST:
        raise BadInput(f'{path}: categories {names[:5]}... are not the 80 COCO categories in standard order')
    return {c['id']: i + 1 for i, c in enumerate(cats)}


def class_map(coco, img_id, cat_index, h, w):
    """uint8 (h, w): 0 background, class indices, 255 on crowd regions (the rule in the module docstring)."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
    out = np.zeros((h, w), np.uint8)
    for a in sorted((a for a in anns if not a.get('iscrowd', 0)), key=lambda a: -a['area']):
        out[coco.annToMask(a) > 0] = cat_index[a['category_id']]
    covered = out > 0
    for a in (a for a in anns if a.get('iscrowd', 0)):
        out[(coco.annToMask(a) > 0) & ~covered] = 255
    return out


def prepare(root, out_dir, splits=SPLITS, write_gt=True):
    os.makedirs(out_dir, exist_ok=True)
    names_all, labels_all, lists = [], [], {}
    palette = voc_palette()
    for split in splits:
        path = os.path.join(root, 'annotations', f'instances_{split}.json')
        coco = _coco(path)
        cat_index = category_index(coco, path)
        names = []
        for img in tqdm(sorted(coco.loadImgs(coco.getImgIds()), key=lambda i: i['file_name']), desc=split,
                        dynamic_ncols=True, mininterval=5):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id'], iscrowd=None))
            if not anns:
                continue
            name = os.path.splitext(img['file_name'])[0]
            y = np.zeros(len(CAT_LIST), np.uint8)
            for a in anns:
                y[cat_index[a['category_id']] - 1] = 1
            names.append(name)
            names_all.append(name)
            labels_all.append(y)
            if write_gt:
                gt = os.path.join(root, 'SegmentationClass', split, name + '.png')
                if not is_complete_label(gt):
                    write_label(gt, class_map(coco, img['id'], cat_index, img['height'], img['width']), palette)
        if not names:
            raise BadInput(f'{path} has no annotated image')
        lists[split] = names
        save_img_name_list(os.path.join(out_dir, split + '.txt'), names)
    labels = np.stack(labels_all)

    def write(tmp):
        with open(tmp, 'wb') as f:
            np.savez(f, names=np.array(names_all), labels=labels)
    atomic_write(os.path.join(out_dir, 'cls_labels.npz'), write)
    save_json(os.path.join(out_dir, 'class_counts.json'),
              {s: dict(zip(CAT_LIST, labels[[names_all.index(n) for n in ns]].sum(0).tolist())) for s, ns in lists.items()})
    return lists, labels


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--coco14_root', required=True, type=str)
    p.add_argument('--out_dir', required=True, type=str)
    p.add_argument('--splits', nargs='+', default=list(SPLITS), choices=list(SPLITS))
    p.add_argument('--write_gt', default=True, type=lambda v: str(v).lower() in ('1', 'true', 'yes'),
                   help='write the class-index GT PNGs (needed for evaluation)')
    a = p.parse_args(argv)
    lists, labels = prepare(a.coco14_root, a.out_dir, a.splits, a.write_gt)
    for s, n in lists.items():
        print(f'{s}: {len(n)} annotated images')
    print(f'cls_labels.npz: {len(labels)} ids -> {a.out_dir}')


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
