"""Deterministic synthetic PASCAL VOC-format dataset, for the demo and the tests.

    python -m voc12.synthetic --out_root work/demo/VOC2012 --n_train 200 --n_val 100 --n_aug 300 --seed 0

Writes a real VOC layout: JPEGImages/<id>.jpg, Annotations/<id>.xml, SegmentationClass/<id>.png (palette
PNG with a 255 band on object outlines, train and val ids), SegmentationClassAug/<id>.png (every id, as
SBD's augmented masks, so the list builder derives a train_aug split), ImageSets/Segmentation/
{train,val,trainval}.txt.

The data are built to show what SFC corrects: all 20 VOC classes with a long-tailed frequency (person in
about 40% of the images, cow in about 2-3%); every object is a shape painted with a class colour and a
class texture; each of six tail classes shares its colour with a head partner (differing only in texture)
and usually appears together with it. A plain CAM then tends to hand tail pixels to the head partner.
Image sizes vary in both directions and are never multiples of 16.
"""
import argparse
import os

import cv2
import numpy as np

from misc.errors import BadInput
from misc.imutils import voc_palette
from voc12.dataloader import CAT_LIST, save_img_name_list

# presence probability of each class (CAT_LIST order), long-tailed like VOC train_aug (docs/faithfulness §1.3)
PRESENCE = {'person': 0.34, 'chair': 0.11, 'dog': 0.10, 'car': 0.10, 'cat': 0.09, 'bottle': 0.07,
            'bird': 0.07, 'sofa': 0.06, 'diningtable': 0.05, 'aeroplane': 0.06, 'tvmonitor': 0.05,
            'pottedplant': 0.05, 'bicycle': 0.045, 'train': 0.045, 'motorbike': 0.05, 'boat': 0.04,
            'horse': 0.05, 'bus': 0.035, 'sheep': 0.03, 'cow': 0.025}
# tail class -> head partner: same colour, other texture, co-occurring with probability CO_OCCUR
PARTNER = {'horse': 'person', 'motorbike': 'person', 'diningtable': 'chair', 'sheep': 'dog', 'bus': 'car',
           'cow': 'cat'}
CO_OCCUR = 0.75
COLOURS = {'red': (205, 45, 40), 'green': (45, 165, 60), 'blue': (45, 85, 215), 'yellow': (225, 200, 45),
           'magenta': (200, 55, 185), 'cyan': (45, 190, 205), 'orange': (235, 125, 35), 'purple': (120, 55, 175),
           'brown': (135, 80, 40), 'pink': (245, 150, 175)}
SOLID, HSTRIPE, VSTRIPE, CHECKER = range(4)
APPEARANCE = {
    'person': ('red', SOLID), 'horse': ('red', HSTRIPE), 'motorbike': ('red', CHECKER),
    'chair': ('green', SOLID), 'diningtable': ('green', VSTRIPE),
    'dog': ('blue', SOLID), 'sheep': ('blue', CHECKER),
    'car': ('yellow', SOLID), 'bus': ('yellow', HSTRIPE),
    'cat': ('magenta', SOLID), 'cow': ('magenta', VSTRIPE),
    'aeroplane': ('cyan', SOLID), 'bicycle': ('cyan', CHECKER), 'bird': ('orange', SOLID),
    'boat': ('orange', HSTRIPE), 'bottle': ('purple', SOLID), 'pottedplant': ('purple', VSTRIPE),
    'sofa': ('brown', SOLID), 'train': ('brown', CHECKER), 'tvmonitor': ('pink', SOLID)}
MAX_CLASSES = 3
PERIOD = 8  # texture period in pixels


VARIANTS = ('a', 'b', 'c', 'd')
# variant c's textures: brightness patterns that tell classes apart where colours are shared (with the background too)
BLOTCH, GRAIN, DIAG, DOTS, RINGS, SHADED = range(10, 16)


def variant_style(variant):
    """(presence, partner, co_occur, appearance, render) of a dataset variant. 'a' is the demo's data (above); 'b' is
    a second, differently built set for checking claims made on 'a': the long-tail order is reshuffled over the
    classes, six other tail/head pairs share a colour, co-occurrence is weaker, and every class gets another colour
    and texture. 'c' is built differently again: textured and shaded objects (noise blotches, grain, diagonal
    stripes, dots, rings, plain shading), larger (45-85 % of the side), backgrounds made of patches in the objects'
    own colours, partial occlusion by background bars, and its own long tail and pairs (render 'shaded'). 'd' is a
    scene of many small irregular objects: 1-4 instances of each present class, each a smooth random blob of 18-40 %
    of the side that may overlap the others, on a background split at a horizon into two noisy regions; its own long
    tail and pairs, which share a texture and differ in colour by a small hue shift, co-occurring with probability
    0.8 (render 'blobs')."""
    if variant == 'a':
        return PRESENCE, PARTNER, CO_OCCUR, APPEARANCE, 'flat'
    if variant not in VARIANTS:
        raise BadInput(f'synthetic VOC variant must be one of {VARIANTS}, got {variant!r}')
    if variant == 'd':
        return _style_d()
    rng = np.random.default_rng(20240101 if variant == 'b' else 20240202)
    order, presence, partner = _long_tail(rng)
    colours = list(COLOURS)
    if variant == 'c':
        colours = [colours[i] for i in rng.permutation(len(colours))]
    textures = [SOLID, HSTRIPE, VSTRIPE, CHECKER] if variant == 'b' else [BLOTCH, GRAIN, DIAG, DOTS, RINGS, SHADED]
    appearance = {}
    for i, (tail, head) in enumerate(partner.items()):  # each pair: one colour, two textures
        c = colours[i]
        t_head, t_tail = rng.choice(len(textures), 2, replace=False)
        appearance[head], appearance[tail] = (c, textures[t_head]), (c, textures[t_tail])
    _give_the_rest(rng, order, appearance, [(c, t) for c in colours[6:] for t in textures])
    return (presence, partner, 0.6, appearance, 'flat') if variant == 'b' else (presence, partner, 0.7, appearance,
                                                                                'shaded')


def _long_tail(rng):
    """(class order, head first; presence of each class, VOC's long tail in that order; tail -> head partner for the
    six last and six first) of a variant."""
    order = [CAT_LIST[i] for i in rng.permutation(len(CAT_LIST))]
    presence = dict(zip(order, sorted(PRESENCE.values(), reverse=True)))
    return order, presence, dict(zip(order[-6:], order[:6]))


def _give_the_rest(rng, order, appearance, free):
    """The classes without an appearance yet each take one of the shuffled `free` ones (in class order)."""
    rng.shuffle(free)
    for cls in order:
        if cls not in appearance:
            appearance[cls] = free.pop()


def _style_d():
    """Variant d's classes: a long tail in another order; six tail/head pairs, each pair one texture with colours
    a small hue shift apart (instead of one colour with two textures); the other classes their own colour and
    texture. An appearance here is an RGB triple and a texture (variants a-c: a colour name and a texture)."""
    rng = np.random.default_rng(20240303)
    order, presence, partner = _long_tail(rng)
    names = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))]
    textures = [SOLID, HSTRIPE, VSTRIPE, CHECKER]
    appearance = {}
    for i, (tail, head) in enumerate(partner.items()):
        rgb = np.asarray(COLOURS[names[i]], np.float32)
        shifted = np.roll(rgb, 1) * 0.3 + rgb * 0.7  # a hue step of about 40 degrees, same brightness range
        t = textures[int(rng.integers(0, len(textures)))]
        appearance[head], appearance[tail] = (tuple(rgb), t), (tuple(shifted), t)
    _give_the_rest(rng, order, appearance, [(tuple(np.asarray(COLOURS[c], np.float32)), t) for c in names[6:]
                                            for t in textures])
    return presence, partner, 0.8, appearance, 'blobs'


def blob_mask(rng, h, w, extent=(0.18, 0.4)):
    """A smooth random star-shaped blob: a radius that varies around the centre by a few low harmonics."""
    r = min(h, w) * rng.uniform(*extent) / 2
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    rad = np.ones_like(t)
    for k in (2, 3, 5):
        rad += rng.uniform(0, 0.35 / k * 2) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    rad = r * rad / rad.max()
    aspect = rng.uniform(0.6, 1.4)
    pts = np.stack([cx + rad * np.cos(t) * aspect ** 0.5, cy + rad * np.sin(t) / aspect ** 0.5], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def background_d(rng, h, w):
    """Variant d: two noisy regions split by a slanted horizon (sky and ground), each with its own grey-ish tint."""
    top, bottom = background(rng, h, w), background(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    y0 = h * rng.uniform(0.3, 0.7) + (xx - w / 2) * rng.uniform(-0.3, 0.3)
    return np.where((yy < y0)[..., None], top, bottom)


def image_size(rng, lo, hi):
    while True:
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        if h % 16 and w % 16:
            return h, w


def _classes(rng, style):
    presence, partner, co_occur = style[:3]
    present = [c for c in CAT_LIST if rng.random() < presence[c]]
    for tail, head in partner.items():
        if tail in present and head not in present and rng.random() < co_occur:
            present.append(head)
    if not present:
        p = np.array([presence[c] for c in CAT_LIST])
        present = [CAT_LIST[int(rng.choice(len(CAT_LIST), p=p / p.sum()))]]
    if len(present) > MAX_CLASSES:
        keep = [c for c in present if c in partner or c in partner.values()][:2]
        rest = [c for c in present if c not in keep]
        rng.shuffle(rest)
        present = keep + rest[:MAX_CLASSES - len(keep)]
    return present


def texture(kind, h, w, phase):
    """(h, w) float32 brightness pattern of a texture kind (solid, stripes, checker), shifted by phase."""
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy + phase[0], xx + phase[1]
    half = PERIOD // 2
    if kind == SOLID:
        return np.ones((h, w), np.float32)
    if kind == HSTRIPE:
        on = (yy // half) % 2 == 0
    elif kind == VSTRIPE:
        on = (xx // half) % 2 == 0
    else:
        on = ((yy // half) + (xx // half)) % 2 == 0
    return np.where(on, 1.0, 0.4).astype(np.float32)


def shape_mask(rng, h, w, extent=(0.3, 0.65)):
    mask = np.zeros((h, w), np.uint8)
    sh, sw = int(h * rng.uniform(*extent)), int(w * rng.uniform(*extent))
    cy, cx = int(rng.integers(sh // 2, h - sh // 2)), int(rng.integers(sw // 2, w - sw // 2))
    kind = rng.integers(0, 3)
    if kind == 0:
        cv2.ellipse(mask, (cx, cy), (sw // 2, sh // 2), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        cv2.rectangle(mask, (cx - sw // 2, cy - sh // 2), (cx + sw // 2, cy + sh // 2), 1, -1)
    else:
        pts = np.array([[cx, cy - sh // 2], [cx - sw // 2, cy + sh // 2], [cx + sw // 2, cy + sh // 2]], np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def background(rng, h, w):
    base = rng.uniform(85, 165) + rng.uniform(-12, 12, size=3)
    gy, gx = np.mgrid[0:h, 0:w] / max(h, w)
    grad = (rng.uniform(-25, 25) * gy + rng.uniform(-25, 25) * gx)[..., None]
    noise = rng.normal(0, 9, size=(h, w, 3))
    return base + grad + noise


def texture_c(kind, rng, h, w):
    """(h, w) brightness of a variant-c texture: low-frequency noise blotches, fine grain, diagonal stripes, a dot
    grid, rings around a random centre, or plain (the shading is added by the caller)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == BLOTCH:
        n = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), 5)
        return np.where(n > 0, 1.0, 0.45).astype(np.float32)
    if kind == GRAIN:
        return np.clip(0.75 + 0.25 * rng.normal(size=(h, w)), 0.4, 1.0).astype(np.float32)
    if kind == DIAG:
        return np.where(((xx + yy + rng.integers(0, 10)) // 5) % 2 == 0, 1.0, 0.45).astype(np.float32)
    if kind == DOTS:
        p = 9
        d = ((xx + rng.integers(0, p)) % p - p / 2) ** 2 + ((yy + rng.integers(0, p)) % p - p / 2) ** 2
        return np.where(d < 6, 0.4, 1.0).astype(np.float32)
    if kind == RINGS:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        return np.where((np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) // 4) % 2 == 0, 1.0, 0.5).astype(np.float32)
    return np.ones((h, w), np.float32)


def shading(rng, h, w, lo=0.65, hi=1.25):
    """A linear light gradient in a random direction, from lo to hi across the image."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = rng.uniform(0, 2 * np.pi)
    g = np.cos(a) * xx + np.sin(a) * yy
    g = (g - g.min()) / max(g.max() - g.min(), 1e-6)
    return (lo + (hi - lo) * g).astype(np.float32)


def background_c(rng, h, w):
    """Variant c: patches (rectangles, ellipses) in the objects' colours, flat but shaded, over a noisy grey."""
    img = background(rng, h, w)
    names = list(COLOURS)
    for _ in range(int(rng.integers(3, 7))):
        m = np.zeros((h, w), np.uint8)
        ph, pw = int(h * rng.uniform(0.2, 0.6)), int(w * rng.uniform(0.2, 0.6))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        if rng.random() < 0.5:
            cv2.rectangle(m, (cx - pw // 2, cy - ph // 2), (cx + pw // 2, cy + ph // 2), 1, -1)
        else:
            cv2.ellipse(m, (cx, cy), (pw // 2, ph // 2), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        col = np.asarray(COLOURS[names[int(rng.integers(0, len(names)))]], np.float32) * rng.uniform(0.7, 1.0)
        fill = col[None, None] * shading(rng, h, w, 0.8, 1.1)[..., None] + rng.normal(0, 8, size=(h, w, 3))
        img[m.astype(bool)] = fill[m.astype(bool)]
    return img


def make_sample(rng, h, w, style=None):
    """One image (H,W,3 uint8), its GT (H,W uint8, 255 band) and the visible objects [(class, bbox)]."""
    style = style or variant_style('a')
    shaded, blobs = style[4] == 'shaded', style[4] == 'blobs'
    img = background_c(rng, h, w) if shaded else background_d(rng, h, w) if blobs else background(rng, h, w)
    gt = np.zeros((h, w), np.uint8)
    for cls in _classes(rng, style):
        n_inst = int(rng.integers(1, 5)) if blobs else 1 + int(rng.random() < 0.25)
        colour, kind = style[3][cls]
        for _ in range(n_inst):
            if blobs:
                m = blob_mask(rng, h, w)
            else:
                m = shape_mask(rng, h, w, (0.45, 0.85) if shaded else (0.3, 0.65))
            if shaded:
                tex = texture_c(kind, rng, h, w) * shading(rng, h, w)
            else:
                tex = texture(kind, h, w, rng.integers(0, PERIOD, size=2))
            rgb = colour if blobs else COLOURS[colour]
            col = np.asarray(rgb, np.float32) * rng.uniform(0.85, 1.1)
            fill = col[None, None, :] * tex[..., None] + rng.normal(0, 10, size=(h, w, 3))
            img[m] = fill[m]
            gt[m] = CAT_LIST.index(cls) + 1
    if shaded and rng.random() < 0.4:  # a background bar in front of the objects: partial occlusion
        bar = np.zeros((h, w), np.uint8)
        t = max(3, int(min(h, w) * rng.uniform(0.06, 0.14)))
        p0 = (int(rng.integers(0, w)), 0) if rng.random() < 0.5 else (0, int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), h - 1) if p0[1] == 0 else (w - 1, int(rng.integers(0, h)))
        cv2.line(bar, p0, p1, 1, t)
        names = list(COLOURS)
        col = np.asarray(COLOURS[names[int(rng.integers(0, len(names)))]], np.float32) * 0.8
        img[bar.astype(bool)] = col + rng.normal(0, 8, size=(int(bar.sum()), 3))
        gt[bar.astype(bool)] = 0
    objects = []
    band = np.zeros((h, w), bool)
    kernel = np.ones((3, 3), np.uint8)
    for cid in np.unique(gt):
        if cid == 0:
            continue
        m = (gt == cid).astype(np.uint8)
        if m.sum() < (0.005 if blobs else 0.03) * h * w:  # d's small blobs are whole objects, not remnants
            gt[m.astype(bool)] = 0  # too little left visible after occlusion: treat as background clutter
            continue
        ys, xs = np.nonzero(m)
        objects.append((CAT_LIST[cid - 1], (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)))
        band |= (cv2.dilate(m, kernel) - cv2.erode(m, kernel)).astype(bool)
    gt_band = gt.copy()
    gt_band[band] = 255
    return np.clip(img, 0, 255).astype(np.uint8), gt, gt_band, objects


def _xml(name, h, w, objects):
    parts = [f'<annotation><folder>VOC2012</folder><filename>{name}.jpg</filename>',
             f'<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>1</segmented>']
    for cls, (x0, y0, x1, y1) in objects:
        part = '<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part>' \
            if cls == 'person' else ''
        parts.append(f'<object><name>{cls}</name><pose>Unspecified</pose><truncated>0</truncated>'
                     f'<difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>'
                     f'<ymax>{y1}</ymax></bndbox>{part}</object>')
    parts.append('</annotation>')
    return '\n'.join(parts) + '\n'


def _save_png(path, arr, palette):
    from PIL import Image
    img = Image.fromarray(arr, mode='P')
    img.putpalette(palette.reshape(-1).tolist())
    img.save(path)


def make_synthetic_voc(out_root, n_train=200, n_val=100, n_aug=300, seed=0, min_size=72, max_size=136, variant='a'):
    """Write the dataset; returns {'train': ids, 'val': ids, 'aug': ids}. Deterministic in seed."""
    rng = np.random.default_rng(seed)
    style = variant_style(variant)
    for d in ('JPEGImages', 'Annotations', 'SegmentationClass', 'SegmentationClassAug', 'ImageSets/Segmentation'):
        os.makedirs(os.path.join(out_root, d), exist_ok=True)
    palette = voc_palette()
    splits = {'train': n_train, 'val': n_val, 'aug': n_aug}
    ids, k = {}, 0
    for split, n in splits.items():
        ids[split] = []
        for _ in range(n):
            name = f'2012_{k:06d}'
            k += 1
            h, w = image_size(rng, min_size, max_size)
            img, gt, gt_band, objects = make_sample(rng, h, w, style)
            if not objects:  # every image carries at least one class
                img, gt, gt_band, objects = make_sample(rng, h, w, style)
            cv2.imwrite(os.path.join(out_root, 'JPEGImages', name + '.jpg'), img[:, :, ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
            with open(os.path.join(out_root, 'Annotations', name + '.xml'), 'w') as f:
                f.write(_xml(name, h, w, objects))
            if split != 'aug':
                _save_png(os.path.join(out_root, 'SegmentationClass', name + '.png'), gt_band, palette)
            _save_png(os.path.join(out_root, 'SegmentationClassAug', name + '.png'), gt, palette)
            ids[split].append(name)
    seg = os.path.join(out_root, 'ImageSets', 'Segmentation')
    save_img_name_list(os.path.join(seg, 'train.txt'), ids['train'])
    save_img_name_list(os.path.join(seg, 'val.txt'), ids['val'])
    save_img_name_list(os.path.join(seg, 'trainval.txt'), ids['train'] + ids['val'])
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out_root', required=True, type=str)
    p.add_argument('--n_train', default=200, type=int)
    p.add_argument('--n_val', default=100, type=int)
    p.add_argument('--n_aug', default=300, type=int)
    p.add_argument('--seed', default=0, type=int)
    p.add_argument('--min_size', default=72, type=int)
    p.add_argument('--max_size', default=136, type=int)
    p.add_argument('--variant', default='a', choices=VARIANTS,
                   help="a: the demo's data; b: a differently built set (other long tail, pairs, appearances); c: "
                        'textured, shaded, larger objects on backgrounds in their colours, partial occlusion; d: many '
                        'small overlapping blobs, pairs told apart by a hue shift, a horizon in the background')
    a = p.parse_args(argv)
    ids = make_synthetic_voc(a.out_root, a.n_train, a.n_val, a.n_aug, a.seed, a.min_size, a.max_size, a.variant)
    print(f'synthetic VOC at {a.out_root}: ' + ', '.join(f'{k} {len(v)}' for k, v in ids.items()))


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
