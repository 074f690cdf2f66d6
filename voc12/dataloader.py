"""PASCAL VOC 2012 datasets (docs/faithfulness §1). Nothing is read at import time; every path comes from the caller.

Datasets differ only in their `layout` (folders, extensions, class names); coco14 overrides it.
Samples are dicts: name, img, label (N_CAT,) float32 multi-hot (index k <-> class id k+1), and per dataset
valid_mask / size.
"""
import os

import numpy as np
import torch
from PIL import Image

from misc import imutils
from misc.camio import read_label
from misc.errors import BadInput, MissingInput, MissingLabel

CAT_LIST = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
            'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
            'tvmonitor']
IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


class VOC12Layout:
    """Where a VOC-format root keeps things."""
    name = 'voc12'
    cat_list = CAT_LIST
    img_dir = 'JPEGImages'
    img_ext = '.jpg'
    gt_dir = 'SegmentationClass'
    root_flag = '--voc12_root'

    @classmethod
    def check_root(cls, root):
        if not root or not os.path.isdir(root):
            raise MissingInput(f'dataset root {root!r} does not exist ({cls.root_flag})')
        if not os.path.isdir(os.path.join(root, cls.img_dir)):
            raise MissingInput(f'dataset root {root} has no {cls.img_dir}/ folder '
                               f'({cls.root_flag} must point at the folder that contains it)')

    @classmethod
    def n_cat(cls):
        return len(cls.cat_list)

    @classmethod
    def class_names(cls):
        return ['background'] + list(cls.cat_list)

    @classmethod
    def image_path(cls, root, name):
        return os.path.join(root, cls.img_dir, name + cls.img_ext)

    @classmethod
    def gt_path(cls, root, name):
        return os.path.join(root, cls.gt_dir, name + '.png')


N_CAT = VOC12Layout.n_cat()


def load_img_name_list(path):
    """Image ids of a list file. Accepts plain id lines ('2007_000032') and the SIPE/SFC format
    ('/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png'); ids stay strings."""
    if not path or not os.path.isfile(path):
        raise MissingInput(f'image list {path!r} does not exist; build the lists with '
                           f'`python -m voc12.make_cls_labels --voc12_root ROOT --out_dir WORK/meta` '
                           f'or pass an existing list file')
    names = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            tokens = line.split()
            if not tokens:
                continue
            tok = tokens[0]
            if '/' in tok or tok.lower().endswith(IMAGE_EXTS):
                tok = os.path.splitext(os.path.basename(tok))[0]
            names.append(tok)
    if not names:
        raise BadInput(f'image list {path} is empty: nothing to process')
    return names


def save_img_name_list(path, names):
    from misc.camio import atomic_write

    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            f.writelines(n + '\n' for n in names)
    atomic_write(path, write)


def load_cls_labels(path):
    """dict id -> float32 (N_CAT,) multi-hot, from a cls_labels.npz (names, labels) written by make_cls_labels."""
    if not path or not os.path.isfile(path):
        raise MissingInput(f'class-label file {path!r} does not exist; build it with '
                           f'`python -m voc12.make_cls_labels --voc12_root ROOT --out_dir WORK/meta` (--cls_labels)')
    with np.load(path, allow_pickle=False) as z:
        names, labels = z['names'], z['labels']
    return {str(n): labels[i].astype(np.float32) for i, n in enumerate(names)}


def read_image(path):
    """RGB uint8 (H,W,3); grayscale and CMYK files are converted. Errors name the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert('RGB'))
    except FileNotFoundError:
        raise MissingInput(f'image {path} is missing (listed in the image list but not on disk)') from None
    except (OSError, SyntaxError) as e:
        raise BadInput(f'image {path} cannot be decoded ({e}); replace the file or drop it from the list') from None


class ImageDataset(torch.utils.data.Dataset):
    """Raw uint8 images of a list (eval, CRF)."""
    layout = VOC12Layout

    def __init__(self, img_name_list_path, root):
        self.layout.check_root(root)
        self.root = root
        self.list_path = img_name_list_path
        self.names = load_img_name_list(img_name_list_path)
        missing = [n for n in self.names if not os.path.isfile(self.image_path(n))]
        if missing:
            raise MissingInput(f'{len(missing)} ids of {img_name_list_path} have no image under {root} '
                               f'(first: {self.image_path(missing[0])}); fix the list or the root')

    def __len__(self):
        return len(self.names)

    def image_path(self, name):
        return self.layout.image_path(self.root, name)

    def read(self, name):
        return read_image(self.image_path(name))

    def __getitem__(self, idx):
        name = self.names[idx]
        return {'name': name, 'img': self.read(name)}


class _Epoched:
    """Datasets whose augmentation is a function of (seed, epoch, index): the training loader passes
    (epoch, index) pairs (misc.trainutils.StepSampler); a plain index uses the epoch of set_epoch()."""
    epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def epoch_index(self, idx):
        return (int(idx[0]), int(idx[1])) if isinstance(idx, (tuple, list)) else (self.epoch, int(idx))


class _Labelled(ImageDataset):
    def __init__(self, img_name_list_path, root, cls_labels_path):
        super().__init__(img_name_list_path, root)
        labels = load_cls_labels(cls_labels_path)
        missing = [n for n in self.names if n not in labels]
        if missing:
            raise MissingLabel(f'{len(missing)} ids of {img_name_list_path} have no image-level label in '
                               f'{cls_labels_path} (first: {missing[:3]}); rebuild it with voc12.make_cls_labels')
        self.labels = np.stack([labels[n] for n in self.names]).astype(np.float32)
        n_cat = self.layout.n_cat()
        if self.labels.shape[1] != n_cat:
            raise BadInput(f'{cls_labels_path} has {self.labels.shape[1]} classes, {self.layout.name} has {n_cat}')

    def class_counts(self):
        """Images per class over this list (docs/faithfulness §1: the MSDW weights come from these)."""
        return self.labels.sum(0).astype(np.int64)


class ClassificationDataset(_Epoched, _Labelled):
    """SFC training samples (docs/faithfulness §1.4): optional random resize-long and flip, random crop.

    The crop's valid mask is stored once (crop, crop) uint8, not as 21 float copies; the training step
    expands it to bg + class channels at stride 16. Randomness comes from a generator seeded by
    (seed, epoch, index), so a resumed run sees exactly the crops of an uninterrupted one.
    crop_size None gives the whole normalised image (validation).
    """

    def __init__(self, img_name_list_path, root, cls_labels_path, crop_size=None, resize_long=None,
                 hor_flip=False, seed=0):
        super().__init__(img_name_list_path, root, cls_labels_path)
        self.crop_size, self.resize_long, self.hor_flip = crop_size, resize_long, hor_flip
        self.seed = int(seed)

    def __getitem__(self, idx):
        epoch, idx = self.epoch_index(idx)
        name = self.names[idx]
        img = self.read(name)
        rng = np.random.default_rng([self.seed, epoch, idx])
        if self.resize_long is not None:
            img = imutils.resize_long(img, int(rng.integers(self.resize_long[0], self.resize_long[1] + 1)))
        if self.hor_flip and rng.integers(0, 2):
            img = np.ascontiguousarray(img[:, ::-1])
        if self.crop_size is None:
            out_img = imutils.normalize(img)
            valid = np.ones(img.shape[:2], dtype=np.uint8)
        else:
            c = self.crop_size
            box = imutils.random_crop_box(rng, img.shape[0], img.shape[1], c)
            ct, cb, cl, cr, it, ib, il, ir = box
            out_img = np.zeros((c, c, 3), dtype=np.float32)  # 0 = the mean colour after normalisation
            out_img[ct:cb, cl:cr] = imutils.normalize(img[it:ib, il:ir])
            valid = imutils.crop_valid_mask(box, c)
        return {'name': name, 'img': np.ascontiguousarray(out_img.transpose(2, 0, 1)),
                'valid_mask': valid, 'label': self.labels[idx]}


class ClassificationDatasetMSF(_Labelled):
    """Multi-scale + flip inference samples (docs/faithfulness §1.5): img is a list over scales of (2,3,h_s,w_s)
    [image, image flipped along width]; scale 1 uses the original pixels, others PIL bicubic."""

    def __init__(self, img_name_list_path, root, cls_labels_path, scales=(1.0,)):
        super().__init__(img_name_list_path, root, cls_labels_path)
        self.scales = tuple(float(s) for s in scales)

    def __getitem__(self, idx):
        name = self.names[idx]
        img = self.read(name)
        return {'name': name, 'img': multiscale_flip(img, self.scales), 'size': img.shape[:2],
                'label': self.labels[idx]}


def multiscale_flip(img, scales):
    out = []
    for s in scales:
        s_img = img if s == 1.0 else imutils.pil_rescale(img, s, 3)
        x = imutils.normalize(s_img).transpose(2, 0, 1)
        out.append(np.ascontiguousarray(np.stack([x, x[:, :, ::-1]])))
    return out


class AffinityDataset(_Epoched, ImageDataset):
    """IRN training samples (docs/faithfulness §7.2): image + IR label (ir_label/<id>.png), random rescale in
    [rescale[0], rescale[1]) (image bicubic, label nearest), normalise, joint flip, joint random crop
    (image pad 0, label pad 255); the label is then reduced x0.25 (PIL nearest). Affinity labels are built
    from the reduced label by the training step (on the device), not shipped as 3 x 152 x 13 090 floats."""

    def __init__(self, img_name_list_path, root, label_dir, crop_size, rescale=(0.5, 1.0), hor_flip=True,
                 crop_method='random', seed=0):
        super().__init__(img_name_list_path, root)
        self.label_dir, self.crop_size = label_dir, crop_size
        self.rescale, self.hor_flip, self.crop_method = rescale, hor_flip, crop_method
        self.seed = int(seed)
        missing = [n for n in self.names if not os.path.isfile(os.path.join(label_dir, n + '.png'))]
        if missing:
            raise MissingInput(f'{len(missing)} ids of {img_name_list_path} have no IR label in {label_dir} '
                               f'(first: {missing[0]}); run cam_to_ir_label (--cam_to_ir_label_pass True) on them')

    def __getitem__(self, idx):
        epoch, idx = self.epoch_index(idx)
        name = self.names[idx]
        img = self.read(name)
        label = read_label(os.path.join(self.label_dir, name + '.png'))
        if label.shape != img.shape[:2]:
            raise BadInput(f'IR label of {name} is {label.shape}, its image {img.shape[:2]}')
        rng = np.random.default_rng([self.seed, epoch, idx])
        if self.rescale is not None:
            s = imutils.random_scale_factor(rng, self.rescale[0], self.rescale[1])
            size = imutils.scaled_size(img.shape[0], img.shape[1], s)
            img, label = imutils.pil_resize(img, size, 3), imutils.pil_resize(label, size, 0)
        img = imutils.normalize(img)
        if self.hor_flip and rng.integers(0, 2):
            img, label = img[:, ::-1], label[:, ::-1]
        c = self.crop_size
        box = (imutils.random_crop_box(rng, img.shape[0], img.shape[1], c) if self.crop_method == 'random'
               else imutils.top_left_box(img.shape[0], img.shape[1], c))
        img = imutils.apply_crop(np.ascontiguousarray(img), box, c, 0)
        label = imutils.apply_crop(np.ascontiguousarray(label), box, c, 255)
        reduced = imutils.pil_rescale(label.astype(np.uint8), 0.25, 0)
        return {'name': name, 'img': np.ascontiguousarray(img.transpose(2, 0, 1)), 'reduced_label': reduced}


def load_gt(root, name, layout=VOC12Layout):
    """uint8 (H,W) class-index GT (255 = void) from the layout's GT folder."""
    path = layout.gt_path(root, name)
    if not os.path.isfile(path):
        raise MissingInput(f'GT mask {path} is missing; evaluation needs a GT PNG for every id of --eval_list')
    return read_label(path)


class SegmentationDataset(_Epoched, ImageDataset):
    """DeepLab training samples from pseudo masks (docs/deeplab.md; deeplab-pytorch libs/datasets/base.py): image and
    mask (`label_dir/<id>.png`, 0..C-1 and 255 = ignore) scaled by a random factor (a choice of `scales`, or
    uniform in [min, max] with scale_mode 'uniform'; sizes int(h*s), int(w*s)), image bilinear (cv2), mask
    nearest (PIL); both padded at the bottom/right to the crop (image with its mean, i.e. 0 after
    normalisation, mask with 255), a random crop, a joint horizontal flip with p=0.5. The image is normalised
    as the init weights expect (net.deeplab.normalize_image). Randomness comes from (seed, epoch, index)."""

    def __init__(self, img_name_list_path, root, label_dir, crop_size, scales, scale_mode='uniform',
                 base_size=None, hor_flip=True, input_norm='caffe', seed=0):
        super().__init__(img_name_list_path, root)
        if scale_mode not in ('uniform', 'choice'):
            raise BadInput(f"scale mode must be 'uniform' or 'choice', got {scale_mode!r}")
        self.label_dir, self.crop_size, self.base_size = label_dir, int(crop_size), base_size
        self.scales, self.scale_mode = [float(s) for s in scales], scale_mode
        self.hor_flip, self.input_norm = hor_flip, input_norm
        self.seed = int(seed)
        self.n_classes = self.layout.n_cat() + 1
        self.label_sizes = None  # set by train_seg: the sizes of the network's outputs for this crop
        missing = [n for n in self.names if not os.path.isfile(self.label_path(n))]
        if missing:
            raise MissingInput(f'{len(missing)} ids of {img_name_list_path} have no pseudo mask in {label_dir} '
                               f'(first: {missing[0]}); run the step that writes them (make_sem_seg for sem_seg/, '
                               f'cam_to_ir_label for ir_label/) on this list, or point --seg_label_dir elsewhere')

    def label_path(self, name):
        return os.path.join(self.label_dir, name + '.png')

    def read_mask(self, name):
        """The pseudo mask of `name`, checked: readable, single-channel, values 0..C-1 or 255."""
        path = self.label_path(name)
        try:
            label = read_label(path)
        except (OSError, ValueError) as e:
            raise BadInput(f'pseudo mask of {name} cannot be read ({e}); re-run the step that wrote it') from None
        bad = np.setdiff1d(np.unique(label), np.r_[np.arange(self.n_classes), 255])
        if bad.size:
            raise BadInput(f'pseudo mask of {name} ({path}) holds value {int(bad[0])}: allowed are class ids '
                           f'0..{self.n_classes - 1} and 255 (ignore) for {self.layout.name}')
        return label

    def scale_factor(self, rng):
        if self.scale_mode == 'choice':
            return self.scales[int(rng.integers(0, len(self.scales)))]
        return float(rng.uniform(min(self.scales), max(self.scales)))

    def __getitem__(self, idx):
        import cv2
        from net.deeplab import normalize_image
        epoch, idx = self.epoch_index(idx)
        name = self.names[idx]
        img, label = self.read(name), self.read_mask(name)
        if label.shape != img.shape[:2]:
            raise BadInput(f'pseudo mask of {name} is {label.shape}, its image {img.shape[:2]}')
        rng = np.random.default_rng([self.seed, epoch, idx])
        h, w = label.shape
        if self.base_size:
            h, w = (self.base_size, int(self.base_size * w / h)) if h > w else (int(self.base_size * h / w), self.base_size)
        s = self.scale_factor(rng)
        h, w = max(1, int(h * s)), max(1, int(w * s))
        x = cv2.resize(normalize_image(img, self.input_norm), (w, h), interpolation=cv2.INTER_LINEAR)
        label = imutils.pil_resize(label, (h, w), 0)
        c = self.crop_size
        ph, pw = max(c, h), max(c, w)
        xp = np.zeros((ph, pw, 3), np.float32)  # the mean colour, bottom/right padding
        xp[:h, :w] = x
        lp = np.full((ph, pw), 255, np.uint8)
        lp[:h, :w] = label
        top, left = int(rng.integers(0, ph - c + 1)), int(rng.integers(0, pw - c + 1))
        x, label = xp[top:top + c, left:left + c], lp[top:top + c, left:left + c]
        if self.hor_flip and rng.random() < 0.5:
            x, label = x[:, ::-1], label[:, ::-1]
        label = np.ascontiguousarray(label)
        out = {'name': name, 'img': np.ascontiguousarray(x.transpose(2, 0, 1)), 'label': label}
        if self.label_sizes:  # the labels at each output size of the network, resized here (PIL nearest)
            out['labels'] = [imutils.pil_resize(label, size, 0) for size in self.label_sizes]
        return out


class SegInferDataset(ImageDataset):
    """Inference samples for the segmentation model: the raw RGB image (for the CRF) and the normalised one."""

    def __init__(self, img_name_list_path, root, input_norm='caffe'):
        super().__init__(img_name_list_path, root)
        self.input_norm = input_norm

    def __getitem__(self, idx):
        from net.deeplab import normalize_image
        name = self.names[idx]
        img = self.read(name)
        return {'name': name, 'raw': img.copy(),  # writable: the loader turns it into a tensor
                'img': np.ascontiguousarray(normalize_image(img, self.input_norm).transpose(2, 0, 1))}
