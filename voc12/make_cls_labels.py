"""Build the image lists and image-level labels of a VOC-format root (docs/faithfulness §1, §1.3).

    python -m voc12.make_cls_labels --voc12_root VOCdevkit/VOC2012 --out_dir work/voc/meta

Writes train.txt and val.txt (ImageSets/Segmentation), train_aug.txt when SegmentationClassAug/ exists
(SBD train+val together with VOC train, minus VOC val: every id with an augmented mask or in train, not in
val) and with it train_aug_val.txt (train_aug and val: the images whose pseudo masks DeepLab trains on, and those
they are scored on), trainval.txt (train and val), and cls_labels.npz: `names` (str) and `labels` uint8 (N, 20)
multi-hot in CAT_LIST order. Labels come from Annotations/<id>.xml (every <name> equal to a category, as IRN's
make_cls_labels), falling back to the segmentation PNG (SegmentationClass, then SegmentationClassAug) where the
XML is absent.
"""
import argparse
import os
import xml.etree.ElementTree as ET

import numpy as np

from misc.camio import atomic_write, read_label, save_json
from misc.errors import BadInput, MissingInput
from voc12.dataloader import CAT_LIST, load_img_name_list, save_img_name_list

AUG_DIR = 'SegmentationClassAug'


def labels_from_xml(path, cat_list=CAT_LIST):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise BadInput(f'annotation {path} is not valid XML ({e})') from None
    y = np.zeros(len(cat_list), dtype=np.uint8)
    for el in root.iter('name'):
        name = (el.text or '').strip()
        if name in cat_list:
            y[cat_list.index(name)] = 1
    return y


def labels_from_png(path, n_cat=len(CAT_LIST)):
    lab = read_label(path)
    ids = np.unique(lab)
    ids = ids[(ids >= 1) & (ids <= n_cat)]
    y = np.zeros(n_cat, dtype=np.uint8)
    y[ids - 1] = 1
    return y


def image_label(root, name):
    xml = os.path.join(root, 'Annotations', name + '.xml')
    if os.path.isfile(xml):
        return labels_from_xml(xml)
    for d in ('SegmentationClass', AUG_DIR):
        png = os.path.join(root, d, name + '.png')
        if os.path.isfile(png):
            return labels_from_png(png)
    raise MissingInput(f'no Annotations/{name}.xml and no segmentation PNG for {name} under {root}: '
                       f'its image-level label cannot be built')


def build(root, out_dir):
    seg_sets = os.path.join(root, 'ImageSets', 'Segmentation')
    if not os.path.isdir(root):
        raise MissingInput(f'--voc12_root {root} does not exist')
    lists = {}
    for split in ('train', 'val'):
        p = os.path.join(seg_sets, split + '.txt')
        if not os.path.isfile(p):
            raise MissingInput(f'{p} is missing: --voc12_root must be the VOC2012 folder '
                               f'(with JPEGImages/, ImageSets/Segmentation/)')
        lists[split] = sorted(set(load_img_name_list(p)))
    aug = os.path.join(root, AUG_DIR)
    if os.path.isdir(aug):
        aug_ids = {os.path.splitext(f)[0] for f in os.listdir(aug) if f.endswith('.png')}
        lists['train_aug'] = sorted((aug_ids | set(lists['train'])) - set(lists['val']))
    all_ids = sorted(set().union(*lists.values()))
    missing = [n for n in all_ids if not os.path.isfile(os.path.join(root, 'JPEGImages', n + '.jpg'))]
    if missing:
        raise MissingInput(f'{len(missing)} listed ids have no JPEGImages/<id>.jpg under {root} '
                           f'(first: {missing[:3]})')
    labels = np.stack([image_label(root, n) for n in all_ids])
    empty = [n for n, y in zip(all_ids, labels) if not y.any()]
    os.makedirs(out_dir, exist_ok=True)
    for split, names in lists.items():
        save_img_name_list(os.path.join(out_dir, split + '.txt'), names)
    save_img_name_list(os.path.join(out_dir, 'trainval.txt'), sorted(set(lists['train']) | set(lists['val'])))
    if 'train_aug' in lists:
        save_img_name_list(os.path.join(out_dir, 'train_aug_val.txt'), sorted(set(lists['train_aug']) | set(lists['val'])))

    def write(tmp):
        with open(tmp, 'wb') as f:
            np.savez(f, names=np.array(all_ids), labels=labels)
    atomic_write(os.path.join(out_dir, 'cls_labels.npz'), write)
    counts = {split: dict(zip(CAT_LIST, labels[[all_ids.index(n) for n in names]].sum(0).tolist()))
              for split, names in lists.items()}
    save_json(os.path.join(out_dir, 'class_counts.json'), counts)
    return lists, labels, empty


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--voc12_root', required=True, type=str)
    p.add_argument('--out_dir', required=True, type=str, help='where the lists and cls_labels.npz go')
    a = p.parse_args(argv)
    lists, labels, empty = build(a.voc12_root, a.out_dir)
    for split, names in lists.items():
        print(f'{split}: {len(names)} images')
    print(f'cls_labels.npz: {len(labels)} ids, {int(labels.sum())} labels -> {a.out_dir}')
    if empty:
        print(f'warning: {len(empty)} images carry no class (first: {empty[:3]})')


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
