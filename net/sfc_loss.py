"""SFC training losses (docs/faithfulness §3.6, §3.7) as pure functions."""
import numpy as np
import torch
import torch.nn.functional as F

from misc.torchutils import fp32

EPS = 1e-5  # max-normalisation of the prototype CAM (SFC/train_resnet50_SFC.py:185)


def dc_offset(steps_per_epoch, bank_samples, n_classes):
    """The count offset steps/epoch x bank images/step x 3 / classes (= 660*4*3/20 = 396 for VOC;
    docs/faithfulness §3.7)."""
    return steps_per_epoch * bank_samples * 3 / n_classes


def msdw_class_weights(counts, offset):
    """MSDW per-class coefficients from per-class image counts N_c (docs/faithfulness §1, §3.7):
    ben_c = sum_c' |N_c - N_c'|; a_c = ben_c / (N_c + offset); a / mean(a). float32, in the counts' order."""
    n = np.asarray(counts, dtype=np.float64)
    ben = np.abs(n[:, None] - n[None, :]).sum(1)
    a = (ben / (n + offset)).astype(np.float32)
    return a / a.mean()


def channel_weights(class_weights):
    """(C,) weight per CAM channel: background 1, then the class coefficients."""
    w = torch.as_tensor(np.asarray(class_weights), dtype=torch.float32)
    return torch.cat([torch.ones(1), w])


@fp32
def classification_loss(score_full, score_half, label):
    """(MLSM(s1, y) + MLSM(s2, y)) / 2 with F.multilabel_soft_margin_loss's mean reduction."""
    return (F.multilabel_soft_margin_loss(score_full, label) + F.multilabel_soft_margin_loss(score_half, label)) / 2


@fp32
def gsc_loss(cam, proto_cam, weight, eps=EPS):
    """L_PDW before its factor: mean over (n, every channel, h, w) of w_c |P - Q / (max_hw Q + eps)|
    (docs/faithfulness §3.6)."""
    q = proto_cam / (proto_cam.amax(dim=(2, 3), keepdim=True) + eps)
    return (weight.view(1, -1, 1, 1) * (cam - q).abs()).mean()


@fp32
def cross_scale_loss(cam_full, cam_half, label_bg, weight):
    """L_WDW before its factor: mean over (n, classes 1.., h, w) of w_c |D(P1) y - P2 y|,
    D = bilinear x0.5 with align_corners=True (docs/faithfulness §3.6)."""
    down = F.interpolate(cam_full, scale_factor=0.5, mode='bilinear', align_corners=True)
    if down.shape[2:] != cam_half.shape[2:]:
        raise ValueError(f'half-scale CAM {tuple(cam_half.shape[2:])} does not match the downsampled '
                         f'full-scale CAM {tuple(down.shape[2:])}: the crop size must be a multiple of 32')
    diff = (down * label_bg - cam_half * label_bg)[:, 1:]
    return (weight[1:].view(1, -1, 1, 1) * diff.abs()).mean()
