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
