"""Losses of the segmentation stage (docs/deeplab.md): cross-entropy on each MSC output against the labels resized to
that output, either plain (deeplab-pytorch: the mean over the pixels that are not 255) or balanced (CLIMS
main_v2.py criterion_balance, what ImageNet-init users were told to use: the mean of the CE over background
pixels and the CE over foreground pixels).

Every term is a sum over pixels divided by a pixel count of the whole (accumulation) batch. The counts are
computed first (`denominators`), so that micro-batches, and ranks, each add their sums over the same
denominators and the accumulated gradient equals the whole batch's.
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from misc.errors import BadInput
from misc.torchutils import fp32

IGNORE = 255
LOSSES = ('balanced', 'ce')


def resize_labels(labels, size):
    """(N,H,W) labels (0..255) -> (N,h,w) int64 on the same device, by PIL's NEAREST resize, as deeplab-pytorch's
    resize_labels does (the source pixel whose centre is nearest, in PIL's fixed-point arithmetic, which
    torch's 'nearest-exact' misses where a centre falls exactly on a boundary)."""
    h, w = (int(v) for v in size)
    if tuple(labels.shape[1:]) == (h, w):
        return labels.long()
    arr = labels.to('cpu', torch.uint8).numpy()
    out = np.stack([np.asarray(Image.fromarray(a).resize((w, h), resample=Image.NEAREST)) for a in arr])
    return torch.from_numpy(out.astype(np.int64)).to(labels.device)


def denominators(labels, kind):
    """Pixel counts of one output's labels: plain CE -> [non-ignored]; balanced -> [background, foreground]."""
    if kind == 'ce':
        return torch.stack([(labels != IGNORE).sum()]).double()
    if kind == 'balanced':
        return torch.stack([(labels == 0).sum(), ((labels != 0) & (labels != IGNORE)).sum()]).double()
    raise BadInput(f'segmentation loss must be one of {LOSSES}, got {kind!r}')


@fp32
def output_loss(logit, labels, den, kind):
    """Loss of one MSC output for a (micro-)batch, each pixel group divided by its count in `den` (from the
    whole batch). Balanced: groups without any pixel in the whole batch are left out of the mean (CLIMS would
    give NaN there); no pixel at all gives 0."""
    ce = F.cross_entropy(logit, labels, ignore_index=IGNORE, reduction='none')  # 0 at ignored pixels
    # empty groups contribute 0 / 1 and are left out of the mean, computed on the device (no host sync): where a
    # count is 0 its sum is 0 too, and elsewhere clamp_min(1) leaves the count as it is
    if kind == 'ce':
        return ce.sum() / den[0].clamp_min(1)
    groups = [(labels == 0, den[0]), ((labels != 0) & (labels != IGNORE), den[1])]
    terms = [(ce * m).sum() / d.clamp_min(1) for m, d in groups]
    present = (den > 0).to(terms[0].dtype)
    return (terms[0] * present[0] + terms[1] * present[1]) / present.sum().clamp_min(1)
