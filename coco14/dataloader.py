"""MS COCO 2014 (docs/faithfulness §1, §9): the voc12 datasets with COCO's layout and its 80 classes
(overrides, not a fork).

Layout of --coco14_root: train2014/<id>.jpg, val2014/<id>.jpg, annotations/instances_{train,val}2014.json,
and SegmentationClass/{train2014,val2014}/<id>.png written by `python -m coco14.make_cls_labels`. Ids are
file names without extension (COCO_train2014_000000000009); the split folder comes from the id.
"""
import os

from misc.errors import BadInput, MissingInput
from voc12 import dataloader as voc
from voc12.dataloader import load_cls_labels, load_img_name_list, read_image  # noqa: F401  (same API as voc12)

# the 80 categories in the standard COCO order (category ids 1..90 with gaps; SIPE/data/labels_coco.txt)
CAT_LIST = ['person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
            'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
            'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
            'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
            'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
            'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
            'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
            'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
            'teddy bear', 'hair drier', 'toothbrush']
SPLITS = ('train2014', 'val2014')


def split_of(name):
    for s in SPLITS:
        if f'_{s}_' in name:
            return s
    raise BadInput(f'COCO id {name!r} names no split (expected COCO_train2014_... or COCO_val2014_...)')


class COCO14Layout(voc.VOC12Layout):
    name = 'coco14'
    cat_list = CAT_LIST
    gt_dir = 'SegmentationClass'
    root_flag = '--coco14_root'

    @classmethod
    def check_root(cls, root):
        if not root or not os.path.isdir(root):
            raise MissingInput(f'dataset root {root!r} does not exist ({cls.root_flag})')
        if not any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
            raise MissingInput(f'{root} has neither train2014/ nor val2014/ ({cls.root_flag} must be the COCO root)')

    @classmethod
    def image_path(cls, root, name):
        return os.path.join(root, split_of(name), name + '.jpg')

    @classmethod
    def gt_path(cls, root, name):
        return os.path.join(root, cls.gt_dir, split_of(name), name + '.png')


N_CAT = COCO14Layout.n_cat()


class ImageDataset(voc.ImageDataset):
    layout = COCO14Layout


class ClassificationDataset(voc.ClassificationDataset):
    layout = COCO14Layout


class ClassificationDatasetMSF(voc.ClassificationDatasetMSF):
    layout = COCO14Layout


class AffinityDataset(voc.AffinityDataset):
    layout = COCO14Layout


def load_gt(root, name, layout=COCO14Layout):
    return voc.load_gt(root, name, layout)


class SegmentationDataset(voc.SegmentationDataset):
    layout = COCO14Layout


class SegInferDataset(voc.SegInferDataset):
    layout = COCO14Layout
