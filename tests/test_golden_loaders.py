"""The loaders' samples against the same samples built here with PIL and NumPy alone, from the rules of the authors'
loaders (docs/faithfulness §1.5 and §7.2): the multi-scale + flip inference pyramid (PIL bicubic at round(h s) x
round(w s), the original pixels at scale 1, ImageNet normalisation computed in float64 and stored float32, the
flipped copy second) and the IRN training sample (image bicubic and label nearest at the rescale, the image's
normalisation, the crop pasted top-left into zeros / 255, the label reduced x0.25 with PIL nearest). Equality is
exact: every operation is the same deterministic library call."""
import os

import numpy as np
from PIL import Image

from voc12 import dataloader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the authors' ImageNet statistics


def names(tiny_voc, n=4):
    return open(os.path.join(tiny_voc['meta'], 'train_aug.txt')).read().split()[:n]


def image(tiny_voc, name):
    with Image.open(os.path.join(tiny_voc['root'], 'JPEGImages', name + '.jpg')) as im:
        return im.convert('RGB')


def normalised(pil_img):
    a = np.asarray(pil_img)
    out = np.empty(a.shape, np.float32)
    for c in range(3):
        out[..., c] = (a[..., c] / 255. - MEAN[c]) / STD[c]
    return out


def rounded(h, w, s):
    return int(np.round(h * s)), int(np.round(w * s))


def test_multiscale_flip_pyramid_is_the_authors(tiny_voc):
    scales = (1.0, 0.5, 1.5, 2.0)
    ids = names(tiny_voc)
    ds = dataloader.ClassificationDatasetMSF(os.path.join(tiny_voc['meta'], 'train_aug.txt'), tiny_voc['root'],
                                             os.path.join(tiny_voc['meta'], 'cls_labels.npz'), scales=scales)
    for i, name in enumerate(ids):
        pack = ds[i]
        im = image(tiny_voc, name)
        w, h = im.size
        assert pack['name'] == name and tuple(pack['size']) == (h, w)
        for s, got in zip(scales, pack['img']):
            sh, sw = rounded(h, w, s)
            x = normalised(im if s == 1.0 else im.resize((sw, sh), Image.BICUBIC)).transpose(2, 0, 1)
            want = np.stack([x, x[:, :, ::-1]])
            assert got.dtype == np.float32 and got.shape == want.shape, (name, s, got.shape)
            assert np.array_equal(got, want), (name, s, float(np.abs(got - want).max()))


def test_irn_training_sample_is_the_authors(tiny_voc, tmp_path):
    """A fixed rescale (0.75, so that both resizes act), no flip and the top-left crop (the random draws are the
    loader's own and tested with it elsewhere); the GT masks stand in for IR labels."""
    crop, s = 48, 0.75
    label_dir = os.path.join(tiny_voc['root'], 'SegmentationClassAug')
    ids = names(tiny_voc)
    ds = dataloader.AffinityDataset(os.path.join(tiny_voc['meta'], 'train_aug.txt'), tiny_voc['root'], label_dir,
                                    crop, rescale=(s, s), hor_flip=False, crop_method='top_left')
    padded = []
    for i, name in enumerate(ids):
        got = ds[i]
        im = image(tiny_voc, name)
        with Image.open(os.path.join(label_dir, name + '.png')) as lab:
            lab = Image.fromarray(np.array(lab).astype(np.uint8))
        w, h = im.size
        sh, sw = rounded(h, w, s)
        img = normalised(im.resize((sw, sh), Image.BICUBIC))
        lab = np.asarray(lab.resize((sw, sh), Image.NEAREST))
        ch, cw = min(crop, sh), min(crop, sw)
        want_img = np.zeros((crop, crop, 3), np.float32)
        want_img[:ch, :cw] = img[:ch, :cw]
        want_lab = np.full((crop, crop), 255, np.uint8)
        want_lab[:ch, :cw] = lab[:ch, :cw]
        reduced = np.asarray(Image.fromarray(want_lab).resize((crop // 4, crop // 4), Image.NEAREST))
        assert np.array_equal(got['img'], want_img.transpose(2, 0, 1)), name
        assert np.array_equal(got['reduced_label'], reduced), name
        assert len(np.setdiff1d(np.unique(reduced), [255])) >= 2, name  # background and an object
        padded.append(bool((reduced == 255).any()))
    assert any(padded) and not all(padded)  # images smaller and larger than the crop


def authors_box(rng, h, w, crop):
    """SIPE's random_crop: the width's offset drawn first, then the height's; the smaller side's image goes to a
    random place in the container, the larger side's container takes a random window of the image."""
    def one(space):
        return (0, int(rng.integers(0, space + 1))) if space > 0 else (int(rng.integers(0, -space + 1)), 0)
    cont_left, img_left = one(w - crop)
    cont_top, img_top = one(h - crop)
    ch, cw = min(crop, h), min(crop, w)
    return cont_top, cont_left, img_top, img_left, ch, cw


def test_sfc_training_crop_is_the_authors(tiny_voc):
    """ClassificationDataset with the random resize-long (60-100), the flip and crop 64, against PIL and NumPy on
    the same draws from the (seed, epoch, index) generator, in the loader's order: long side, flip, crop offsets."""
    from voc12.dataloader import ClassificationDataset
    meta = tiny_voc['meta']
    crop, seed = 64, 7
    ds = ClassificationDataset(os.path.join(meta, 'train_aug.txt'), tiny_voc['root'],
                               os.path.join(meta, 'cls_labels.npz'), crop_size=crop, resize_long=(60, 100),
                               hor_flip=True, seed=seed)
    flips, placed = set(), set()
    for i, name in enumerate(names(tiny_voc, 8)):
        epoch, idx = ds.epoch_index(i)
        got = ds[i]
        rng = np.random.default_rng([seed, epoch, idx])
        im = image(tiny_voc, name)
        w, h = im.size
        target = int(rng.integers(60, 101))
        s = target / h if w < h else target / w
        sh, sw = rounded(h, w, s)
        im = im.resize((sw, sh), Image.BICUBIC)
        flip = bool(rng.integers(0, 2))
        a = np.asarray(im)[:, ::-1] if flip else np.asarray(im)
        ct, cl, it, il, ch, cw = authors_box(rng, sh, sw, crop)
        want = np.zeros((crop, crop, 3), np.float32)
        want[ct:ct + ch, cl:cl + cw] = normalised(Image.fromarray(np.ascontiguousarray(a[it:it + ch, il:il + cw])))
        valid = np.zeros((crop, crop), np.uint8)
        valid[ct:ct + ch, cl:cl + cw] = 1
        assert np.array_equal(got['img'], want.transpose(2, 0, 1)), name
        assert np.array_equal(got['valid_mask'], valid), name
        flips.add(flip)
        placed.add((ct > 0 or cl > 0, it > 0 or il > 0))
    assert flips == {True, False} and len(placed) > 1  # both flips, and windows both ways


def test_segmentation_training_crop_is_deeplab_pytorchs(tiny_voc):
    """SegmentationDataset (uniform scale in [0.5, 1.5], crop 64, flip) against deeplab-pytorch's _augmentation on
    the same draws (scale, crop offsets, flip): the BGR float image resized by cv2 bilinear and the label by PIL
    nearest to int(h s) x int(w s), padded at the bottom/right with the mean colour / 255, cropped, flipped, then
    the mean subtracted. The image agrees to float32 rounding (deeplab-pytorch subtracts the mean after the
    resize, we before; bilinear weights sum to 1), the label exactly."""
    import cv2

    from voc12.dataloader import SegmentationDataset
    mean = np.asarray((104.008, 116.669, 122.675), np.float32)  # configs/voc12.yaml, BGR
    crop, seed = 64, 3
    label_dir = os.path.join(tiny_voc['root'], 'SegmentationClassAug')
    ds = SegmentationDataset(os.path.join(tiny_voc['meta'], 'train_aug.txt'), tiny_voc['root'], label_dir, crop,
                             [0.5, 1.5], 'uniform', hor_flip=True, input_norm='caffe', seed=seed)
    flips, padded = set(), set()
    for i, name in enumerate(names(tiny_voc, 8)):
        epoch, idx = ds.epoch_index(i)
        got = ds[i]
        rng = np.random.default_rng([seed, epoch, idx])
        bgr = np.asarray(image(tiny_voc, name))[..., ::-1].astype(np.float32)
        with Image.open(os.path.join(label_dir, name + '.png')) as lab:
            lab = np.array(lab).astype(np.uint8)
        h, w = lab.shape
        s = float(rng.uniform(0.5, 1.5))
        h, w = int(h * s), int(w * s)
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        lab = np.asarray(Image.fromarray(lab).resize((w, h), resample=Image.NEAREST))
        ph, pw = max(crop - h, 0), max(crop - w, 0)
        if ph or pw:
            bgr = cv2.copyMakeBorder(bgr, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=mean.tolist())
            lab = cv2.copyMakeBorder(lab, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=255)
        top, left = int(rng.integers(0, lab.shape[0] - crop + 1)), int(rng.integers(0, lab.shape[1] - crop + 1))
        bgr, lab = bgr[top:top + crop, left:left + crop], lab[top:top + crop, left:left + crop]
        flip = rng.random() < 0.5
        if flip:
            bgr, lab = bgr[:, ::-1], lab[:, ::-1]
        want = (bgr - mean).transpose(2, 0, 1)
        assert got['img'].shape == want.shape and np.abs(got['img'] - want).max() < 1e-3, name
        assert np.array_equal(got['label'], lab), name
        flips.add(flip)
        padded.add(bool(ph or pw))
    assert flips == {True, False} and padded == {True, False}
