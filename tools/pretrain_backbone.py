"""Pretrain the demo-size backbones on a generated classification set: this project's stand-in for ImageNet.

    python -m tools.pretrain_backbone --out_dir weights/standin          # both networks (the committed files)
    python -m tools.pretrain_backbone --nets resnet50 --max_steps 3      # the first steps only

The real pipeline starts three networks from ImageNet weights (SFC's classifier, IRN's frozen backbone,
DeepLab). The demo cannot download them, and from random initialisation the method is not in the regime it was
made for. This command makes small weights that play ImageNet's part: a ResNet-50 and a ResNet-101 at the demo's
width, trained to classify generated images that share only the *visual vocabulary* of the demo data (shapes,
colours, textures, clutter) and none of its classes or masks, as ImageNet shares none of VOC's labels.

Classification set: n_hues x 6 textures = 72 balanced classes (a hue band of the HSV circle x solid, horizontal
/ vertical / diagonal stripes, checker, dots). Each image is a noisy gradient background with 0-3 small clutter
shapes of random classes and one large object of its class (ellipse, rectangle, triangle, ring, cross or star;
random size, position, saturation, brightness, texture period and contrast). Image i is a function of
(seed, i); train and val images come from disjoint index ranges. `--vocabulary wide` adds three texture families
(noise blotches, grain, concentric rings: n_hues x 9 classes) and lights half the shapes by a brightness gradient;
the committed files use the basic six.

Training: torchvision's ResNet layout and strides (2, 2, 2, 2), global average pool and a linear classifier,
BatchNorm with batch statistics, SGD momentum 0.9, weight decay 5e-5, cosine lr from 0.2 (batch 64), random
4-pixel-shift crops and flips drawn from a seeded generator, images normalised with the ImageNet mean/std as
the pipeline does. Deterministic from --seed on one machine (tests run the first steps twice and compare).
Writes <net>_w<width>.pth (a torchvision-layout state dict with fc.*, loadable by --backbone_weights and
--seg_init exactly like the ImageNet files) and <net>_w<width>.json (command, seed, settings, first-step
losses, val accuracy, time, SHA-256).
"""
import argparse
import hashlib
import math
import os
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from misc import camio  # noqa: E402
from misc.imutils import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from net.resnet50 import ResNet, batchnorm_training  # noqa: E402
from voc12.synthetic import shading  # noqa: E402

NETS = {'resnet50': (3, 4, 6, 3), 'resnet101': (3, 4, 23, 3)}
TEXTURES = ('solid', 'hstripe', 'vstripe', 'diagonal', 'checker', 'dots')
# --vocabulary wide: three more texture families (noise blotches, grain, concentric rings), and half the objects and
# clutter shapes lit by a linear brightness gradient, as ImageNet holds far more surface kinds than stripes and dots
VOCABULARIES = {'basic': TEXTURES, 'wide': TEXTURES + ('blotches', 'grain', 'rings')}
SHAPES = ('ellipse', 'rectangle', 'triangle', 'ring', 'cross', 'star')


# --- the generated classification set ------------------------------------------------------------------------
def texture(kind, h, w, period, contrast, phase):
    """(h, w) brightness pattern in [1 - contrast, 1]."""
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy + phase[0], xx + phase[1]
    half = max(1, period // 2)
    if kind == 'solid':
        return np.ones((h, w), np.float32)
    if kind in ('blotches', 'grain', 'rings'):  # the wide vocabulary: drawn from a generator seeded by the phase
        rng = np.random.default_rng([int(phase[0]), int(phase[1]), period])
        if kind == 'blotches':  # smooth noise cut at zero: patches of about the period's size
            n = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), period / 2.5)
            on = n > 0
        elif kind == 'grain':  # per-pixel noise, not a pattern
            return np.clip(1.0 - contrast * rng.uniform(0, 1, (h, w)), 0, 1).astype(np.float32)
        else:  # rings of half-period width around a random centre
            cy, cx = rng.uniform(-h / 2, 1.5 * h), rng.uniform(-w / 2, 1.5 * w)
            on = (np.sqrt((yy - phase[0] - cy) ** 2 + (xx - phase[1] - cx) ** 2) // half) % 2 == 0
        return np.where(on, 1.0, 1.0 - contrast).astype(np.float32)
    if kind == 'hstripe':
        on = (yy // half) % 2 == 0
    elif kind == 'vstripe':
        on = (xx // half) % 2 == 0
    elif kind == 'diagonal':
        on = ((xx + yy) // half) % 2 == 0
    elif kind == 'checker':
        on = ((yy // half) + (xx // half)) % 2 == 0
    else:  # dots
        on = ((yy % period) < half) & ((xx % period) < half)
    return np.where(on, 1.0, 1.0 - contrast).astype(np.float32)


def shape_mask(rng, size, lo, hi):
    m = np.zeros((size, size), np.uint8)
    sh, sw = (max(4, int(size * rng.uniform(lo, hi))) for _ in range(2))
    cy, cx = int(rng.integers(sh // 2, size - sh // 2 + 1)), int(rng.integers(sw // 2, size - sw // 2 + 1))
    kind = SHAPES[int(rng.integers(0, len(SHAPES)))]
    if kind == 'ellipse':
        cv2.ellipse(m, (cx, cy), (sw // 2, sh // 2), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 'rectangle':
        cv2.rectangle(m, (cx - sw // 2, cy - sh // 2), (cx + sw // 2, cy + sh // 2), 1, -1)
    elif kind == 'triangle':
        cv2.fillPoly(m, [np.array([[cx, cy - sh // 2], [cx - sw // 2, cy + sh // 2], [cx + sw // 2, cy + sh // 2]],
                                  np.int32)], 1)
    elif kind == 'ring':
        cv2.ellipse(m, (cx, cy), (sw // 2, sh // 2), 0, 0, 360, 1, max(2, min(sh, sw) // 5))
    elif kind == 'cross':
        t = max(2, min(sh, sw) // 4)
        cv2.rectangle(m, (cx - sw // 2, cy - t), (cx + sw // 2, cy + t), 1, -1)
        cv2.rectangle(m, (cx - t, cy - sh // 2), (cx + t, cy + sh // 2), 1, -1)
    else:  # star
        ang = np.linspace(0, 2 * np.pi, 11)[:-1] + rng.uniform(0, np.pi)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([cx + r * np.cos(ang) * sw / 2, cy + r * np.sin(ang) * sh / 2], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


def class_colour(rng, hue_band, n_hues):
    """An RGB colour (float32, 0-255) in hue band `hue_band` of the HSV circle, random saturation/brightness."""
    hue = (hue_band + rng.uniform(0.15, 0.85)) / n_hues * 180.0  # OpenCV hue range 0-180
    hsv = np.uint8([[[hue, rng.uniform(150, 255), rng.uniform(130, 250)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def paint(rng, img, mask, cls, n_hues, textures=TEXTURES):
    size = img.shape[0]
    hue_band, tex = divmod(cls, len(textures))
    pattern = texture(textures[tex], size, size, int(rng.integers(6, 11)), rng.uniform(0.35, 0.65),
                      rng.integers(0, 10, size=2))
    if textures != TEXTURES and rng.uniform() < 0.5:  # the wide vocabulary lights half the shapes
        pattern = pattern * shading(rng, size, size)  # the demo data's light gradient, 0.65 to 1.25
    fill = class_colour(rng, hue_band, n_hues)[None, None] * pattern[..., None] + rng.normal(0, 8, (size, size, 3))
    img[mask] = fill[mask]


def make_image(seed, index, size, n_hues, textures=TEXTURES):
    """(uint8 (size, size, 3) RGB image, class id) of image `index`; class = index mod the class count."""
    n_cls = n_hues * len(textures)
    cls = index % n_cls
    rng = np.random.default_rng([seed, index])
    base = rng.uniform(80, 170) + rng.uniform(-15, 15, size=3)
    g = np.mgrid[0:size, 0:size] / size
    img = base + (rng.uniform(-25, 25) * g[0] + rng.uniform(-25, 25) * g[1])[..., None] + rng.normal(0, 9, (size, size, 3))
    for _ in range(int(rng.integers(0, 4))):  # clutter: small shapes of any class, under the object
        paint(rng, img, shape_mask(rng, size, 0.12, 0.25), int(rng.integers(0, n_cls)), n_hues, textures)
    paint(rng, img, shape_mask(rng, size, 0.45, 0.8), cls, n_hues, textures)
    return np.clip(img, 0, 255).astype(np.uint8), cls


class GeneratedSet:
    """Images start..start+n of the generated set, made on first use and kept (uint8)."""

    def __init__(self, seed, start, n, size, n_hues, textures=TEXTURES):
        self.seed, self.start, self.n, self.size, self.n_hues = seed, start, n, size, n_hues
        self.textures = textures
        self.img = np.zeros((n, size, size, 3), np.uint8)
        self.label = np.zeros(n, np.int64)
        self.done = np.zeros(n, bool)

    def batch(self, idx):
        for i in idx:
            if not self.done[i]:
                self.img[i], self.label[i] = make_image(self.seed, self.start + int(i), self.size, self.n_hues,
                                                        self.textures)
                self.done[i] = True
        return self.img[idx], self.label[idx]


def to_tensor(img):
    x = torch.from_numpy(img).float().div_(255).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x, g, pad=4):
    """Random shift by up to `pad` pixels (zero = mean padding) and horizontal flip, from generator g."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    out = torch.stack([xp[i, :, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


# --- the network -----------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, layer1..4, fc) at width w, strides (2, 2, 2, 2)."""

    def __init__(self, layers, width, n_classes):
        super().__init__()
        self.body = ResNet(layers, strides=(2, 2, 2, 2), width=width)
        self.fc = nn.Linear(width * 32, n_classes)

    def forward(self, x):
        r = self.body
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        return self.fc(x.mean((2, 3)))

    def torchvision_state_dict(self):
        sd = {k: v.detach().clone() for k, v in self.body.state_dict().items()}
        sd['fc.weight'], sd['fc.bias'] = self.fc.weight.detach().clone(), self.fc.bias.detach().clone()
        return sd


def evaluate(model, data, batch):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, data.n, batch):
            img, lab = data.batch(np.arange(i, min(i + batch, data.n)))
            correct += int((model(to_tensor(img)).argmax(1) == torch.from_numpy(lab)).sum())
    model.train()
    return correct / data.n


def train(net, a, log=print):
    """Train one network; returns (model, record)."""
    textures = VOCABULARIES[a.vocabulary]
    n_cls = a.n_hues * len(textures)
    torch.manual_seed(a.seed)
    model = Classifier(NETS[net], a.width, n_cls)
    for m in model.modules():  # zero-init the last BN of each residual branch (standard for ResNets from scratch)
        if hasattr(m, 'bn3'):
            nn.init.zeros_(m.bn3.weight)
    train_set = GeneratedSet(a.seed, 0, a.n_train, a.size, a.n_hues, textures)
    val_set = GeneratedSet(a.seed, 10 ** 7, a.n_val, a.size, a.n_hues, textures)
    steps_per_epoch = a.n_train // a.batch
    total = steps_per_epoch * a.epochs
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.weight_decay)
    g = torch.Generator().manual_seed(a.seed)
    losses, t0, step = [], time.time(), 0
    model.train()
    with batchnorm_training(model):
        for epoch in range(a.epochs):
            order = torch.randperm(a.n_train, generator=g).numpy()
            for b in range(steps_per_epoch):
                if a.max_steps and step >= a.max_steps:
                    break
                for grp in opt.param_groups:
                    grp['lr'] = a.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                img, lab = train_set.batch(order[b * a.batch:(b + 1) * a.batch])
                loss = F.cross_entropy(model(augment(to_tensor(img), g)), torch.from_numpy(lab))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
                if step % 50 == 0 or step == 1:
                    log(f'  {net}: step {step}/{total}  loss {np.mean(losses[-50:]):.4f}  {time.time() - t0:.0f}s')
    record = {'net': net, 'width': a.width, 'layers': list(NETS[net]), 'classes': n_cls, 'steps': step,
              'first_losses': losses[:5], 'final_loss': float(np.mean(losses[-50:])) if losses else None,
              'train_seconds': round(time.time() - t0, 1)}
    if not a.max_steps:
        record['val_top1'] = evaluate(model, val_set, a.batch)
        log(f'  {net}: val top-1 {record["val_top1"]:.4f} on {a.n_val} held-out images ({n_cls} classes, chance '
            f'{1 / n_cls:.4f})')
    return model, record


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out_dir', default=None, type=str, help='where <net>_w<width>.pth/.json go (none: not written)')
    p.add_argument('--nets', nargs='+', default=list(NETS), choices=list(NETS))
    p.add_argument('--width', default=8, type=int, help='the demo width (64 = the real networks)')
    p.add_argument('--size', default=64, type=int, help='image side in pixels')
    p.add_argument('--n_hues', default=12, type=int, help='hue bands; classes = hues x textures')
    p.add_argument('--vocabulary', default='basic', choices=list(VOCABULARIES),
                   help='basic: 6 textures (the committed width-8 pair); wide: 9 textures and lit shapes')
    p.add_argument('--n_train', default=14400, type=int)
    p.add_argument('--n_val', default=2160, type=int)
    p.add_argument('--epochs', default=12, type=int)
    p.add_argument('--batch', default=64, type=int)
    p.add_argument('--lr', default=0.2, type=float)
    p.add_argument('--weight_decay', default=5e-5, type=float)
    p.add_argument('--seed', default=0, type=int)
    p.add_argument('--threads', default=2, type=int, help='torch threads (results are reproducible per setting)')
    p.add_argument('--max_steps', default=0, type=int, help='stop after this many steps (0 = all); no validation')
    return p


def main(argv=None):
    a = get_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    command = 'python -m tools.pretrain_backbone ' + ' '.join(argv if argv is not None else sys.argv[1:])
    for net in a.nets:
        model, record = train(net, a)
        if a.out_dir:
            name = f'{net}_w{a.width}'
            path = os.path.join(a.out_dir, name + '.pth')
            camio.save_checkpoint(model.torchvision_state_dict(), path)
            with open(path, 'rb') as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            record.update({'command': command, 'seed': a.seed, 'settings': {k: v for k, v in vars(a).items()
                                                                             if k not in ('out_dir', 'nets')},
                           'torch': torch.__version__, 'file': name + '.pth', 'sha256': sha,
                           'bytes': os.path.getsize(path)})
            camio.save_json(os.path.join(a.out_dir, name + '.json'), record)
            print(f'  wrote {path} ({os.path.getsize(path) / 2 ** 20:.1f} MB)')


if __name__ == '__main__':
    main()
