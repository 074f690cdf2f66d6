"""DeepLab-v2 as the WSSS community trains it on pseudo masks (docs/deeplab.md; kazuto1011/deeplab-pytorch @ 4219467,
`DeepLabV2_ResNet101_MSC`), with that repository's module names, so its state dicts (632 keys for 21
classes) are ours: `base.layer1.conv1.conv.weight`, `base.layer2.block1.reduce.bn.running_var`, `base.aspp.c0.bias`.

- MSRA/Caffe ResNet: stem 7x7/2 conv + BN + ReLU, MaxPool(3, 2, 1, ceil_mode=True) (`layer1`); bottleneck
  stages `layer2..5` with [3, 4, 23, 3] blocks (ResNet-101; [3, 4, 6, 3] for 50); the stride of a downsampling
  block sits in its 1x1 `reduce` conv (Caffe) or, for torchvision's weights, in the 3x3 (`stride_in`); layer3
  stride 2, layer4 dilation 2, layer5 dilation 4: output stride 8. BatchNorm eps 1e-5, always frozen.
- ASPP: four 3x3 convs 2048 -> classes with bias, dilation = padding = 6, 12, 18, 24, outputs summed.
- MSC: logits of the image and of bilinear (align_corners=False) 0.5x / 0.75x copies, the small ones resized
  bilinearly to the full-scale logit size, pixel-wise max. eval: the max; train: [full, 0.5x, 0.75x, max].

Init weights (`load_init`): a deeplab-pytorch checkpoint (whole, or backbone-only such as
deeplabv1_resnet101-coco.pth: the ASPP starts fresh), an ImageNet ResNet in that key layout (AdvCAM/ReCAM's
files), torchvision's ImageNet ResNet (`imagenet` = its URL, or a local file) through TORCHVISION_NAMES, or
`none`. Input normalisation follows the init: Caffe BGR mean subtraction, or torchvision RGB mean/std.
"""
import os
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import BadInput, MissingInput, Unavailable
from net.checkpoint import load_strict, unwrap_state_dict
from net.resnet50 import FixedBatchNorm

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # libs/models/__init__.py n_blocks
ASPP_RATES = (6, 12, 18, 24)  # DeepLabV2_ResNet101_MSC atrous_rates
MSC_SCALES = (0.5, 0.75)  # DeepLabV2_ResNet101_MSC scales
BN_EPS = 1e-5  # libs/models/resnet.py _ConvBnReLU
ASPP_INIT_STD = 0.01  # libs/models/deeplabv2.py _ASPP: normal(0, 0.01) weights, zero biases
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)  # configs/voc12.yaml IMAGE.MEAN (B, G, R), on 0-255 pixels
TORCHVISION_URL = {50: 'https://download.pytorch.org/models/resnet50-19c8e357.pth',
                   101: 'https://download.pytorch.org/models/resnet101-5d3b4d8f.pth'}  # torchvision ImageNet (v1)
INPUT_NORMS = ('caffe', 'torchvision')


class ConvBn(nn.Module):
    """conv (no bias) + frozen BN [+ ReLU]: deeplab-pytorch's _ConvBnReLU (keys `conv.*`, `bn.*`)."""

    def __init__(self, in_ch, out_ch, kernel, stride, padding, dilation, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, bias=False)
        self.bn = FixedBatchNorm(out_ch, eps=BN_EPS)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    def __init__(self, in_ch, out_ch, stride, dilation, downsample, stride_in='1x1'):
        super().__init__()
        mid = out_ch // 4
        s1, s3 = (stride, 1) if stride_in == '1x1' else (1, stride)
        self.reduce = ConvBn(in_ch, mid, 1, s1, 0, 1)
        self.conv3x3 = ConvBn(mid, mid, 3, s3, dilation, dilation)
        self.increase = ConvBn(mid, out_ch, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBn(in_ch, out_ch, 1, stride, 0, 1, relu=False) if downsample else nn.Identity()

    def forward(self, x):
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


def res_layer(n, in_ch, out_ch, stride, dilation, stride_in):
    layer = nn.Sequential()
    for i in range(n):
        layer.add_module(f'block{i + 1}', Bottleneck(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1,
                                                     dilation, i == 0, stride_in))
    return layer


class ASPP(nn.Module):
    """Four dilated 3x3 convs with bias, outputs summed (DeepLab-v2's ASPP-L)."""

    def __init__(self, in_ch, n_classes, rates=ASPP_RATES):
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f'c{i}', nn.Conv2d(in_ch, n_classes, 3, 1, padding=r, dilation=r, bias=True))
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.children():
            nn.init.normal_(m.weight, mean=0, std=ASPP_INIT_STD)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        out = None
        for m in self.children():
            y = m(x)
            out = y if out is None else out + y
        return out


class DeepLabV2(nn.Sequential):
    """The single-scale network: layer1 (stem) .. layer5, aspp; logits at stride 8."""

    def __init__(self, n_classes, depth=101, width=64, rates=ASPP_RATES, stride_in='1x1'):
        if depth not in BLOCKS:
            raise BadInput(f'DeepLab-v2 depth must be one of {sorted(BLOCKS)}, got {depth}')
        if stride_in not in ('1x1', '3x3'):
            raise BadInput(f"stride_in must be '1x1' (Caffe/MSRA) or '3x3' (torchvision), got {stride_in!r}")
        super().__init__()
        ch = [width * 2 ** p for p in range(6)]
        n = BLOCKS[depth]
        stem = nn.Sequential()
        stem.add_module('conv1', ConvBn(3, ch[0], 7, 2, 3, 1))
        stem.add_module('pool', nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        self.add_module('layer1', stem)
        self.add_module('layer2', res_layer(n[0], ch[0], ch[2], 1, 1, stride_in))
        self.add_module('layer3', res_layer(n[1], ch[2], ch[3], 2, 1, stride_in))
        self.add_module('layer4', res_layer(n[2], ch[3], ch[4], 1, 2, stride_in))
        self.add_module('layer5', res_layer(n[3], ch[4], ch[5], 1, 4, stride_in))
        self.add_module('aspp', ASPP(ch[5], n_classes, rates))


class DeepLabV2MSC(nn.Module):
    """DeepLab-v2 with multi-scale inputs. forward: eval -> (N,C,h,w) max logits at stride 8; train ->
    [full, *one per MSC scale, max]. BatchNorm never updates its statistics (FixedBatchNorm) and its affine
    parameters do not train (deeplab-pytorch: freeze_bn, only conv parameters in the optimizer)."""

    def __init__(self, n_classes, depth=101, width=64, rates=ASPP_RATES, msc_scales=MSC_SCALES, stride_in='1x1'):
        super().__init__()
        self.n_classes, self.depth, self.width, self.stride_in = n_classes, depth, width, stride_in
        self.base = DeepLabV2(n_classes, depth, width, rates, stride_in)
        self.msc_scales = tuple(float(s) for s in msc_scales)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)

    def forward(self, x):
        logits = self.base(x)
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False))
                   for s in self.msc_scales]
        size = logits.shape[2:]
        out = logits
        for p in pyramid:
            out = torch.maximum(out, F.interpolate(p, size=size, mode='bilinear', align_corners=False))
        return [logits] + pyramid + [out] if self.training else out

    def param_groups(self):
        """(backbone conv weights, ASPP weights, ASPP biases): deeplab-pytorch's 1x / 10x / 20x groups."""
        aspp = self.base.aspp
        backbone = [m.weight for name, m in self.base.named_modules() if isinstance(m, nn.Conv2d)
                    and not name.startswith('aspp')]
        return backbone, [m.weight for m in aspp.children()], [m.bias for m in aspp.children()]


# --- init weights and checkpoints -------------------------------------------------------------------------------
# torchvision ResNet names -> deeplab-pytorch names (fc.* is ImageNet's classifier and is dropped)
TORCHVISION_NAMES = [
    (r'conv1\.(.*)', r'layer1.conv1.conv.\1'), (r'bn1\.(.*)', r'layer1.conv1.bn.\1'),
    (r'layer(\d)\.(\d+)\.conv1\.(.*)', 'reduce.conv'), (r'layer(\d)\.(\d+)\.bn1\.(.*)', 'reduce.bn'),
    (r'layer(\d)\.(\d+)\.conv2\.(.*)', 'conv3x3.conv'), (r'layer(\d)\.(\d+)\.bn2\.(.*)', 'conv3x3.bn'),
    (r'layer(\d)\.(\d+)\.conv3\.(.*)', 'increase.conv'), (r'layer(\d)\.(\d+)\.bn3\.(.*)', 'increase.bn'),
    (r'layer(\d)\.(\d+)\.downsample\.0\.(.*)', 'shortcut.conv'),
    (r'layer(\d)\.(\d+)\.downsample\.1\.(.*)', 'shortcut.bn')]


def torchvision_to_deeplab(key):
    """'layer3.4.conv2.weight' -> 'layer4.block5.conv3x3.conv.weight'; None for fc.*; ValueError otherwise."""
    if key.startswith('fc.'):
        return None
    for pattern, target in TORCHVISION_NAMES:
        m = re.fullmatch(pattern, key)
        if m:
            if m.re.groups == 1:
                return m.expand(target)
            layer, block, rest = m.groups()
            return f'layer{int(layer) + 1}.block{int(block) + 1}.{target}.{rest}'
    raise BadInput(f'tensor {key!r} has no place in DeepLab-v2 (not a torchvision ResNet name)')


def detect_layout(sd, source):
    """'torchvision' (conv1.weight, layer1.0.*) or 'deeplab' (layer1.conv1.conv.weight, with or without base.)."""
    if 'conv1.weight' in sd and any(k.startswith('layer1.0.') for k in sd):
        return 'torchvision'
    if any(k.startswith(('base.layer1.conv1.', 'layer1.conv1.conv.')) for k in sd):
        return 'deeplab'
    raise BadInput(f'{source}: neither a deeplab-pytorch state dict (base.layer1.conv1.conv.weight ...) nor a '
                   f'torchvision ResNet (conv1.weight, layer1.0.conv1.weight ...); first keys: {list(sd)[:4]}')


def to_model_keys(sd, source):
    """(state dict with our keys `base.*`, layout). Strips module./base. prefixes, maps torchvision names."""
    layout = detect_layout(sd, source)
    out = {}
    for k, v in sd.items():
        if layout == 'torchvision':
            k = torchvision_to_deeplab(k)
            if k is None:
                continue
        elif k.startswith('base.'):
            k = k[5:]
        out['base.' + k] = v
    return out, layout


def checkpoint_depth(sd):
    """ResNet depth of a state dict in our key layout, from the blocks of layer4 (None if unknown)."""
    blocks = {int(m.group(1)) for k in sd for m in [re.match(r'base\.layer4\.block(\d+)\.', k)] if m}
    n = max(blocks) if blocks else None
    return next((d for d, b in BLOCKS.items() if b[2] == n), None)


def read_state_dict(path_or_url, source):
    if re.match(r'https?://', path_or_url):
        try:
            return torch.hub.load_state_dict_from_url(path_or_url, map_location='cpu', progress=True)
        except Exception as e:
            raise Unavailable(f'could not download {path_or_url} ({e}). Download it elsewhere and pass its path to '
                              f'{source}, or pass none to train from random initialisation (not comparable '
                              f'to the paper).') from None
    if not os.path.isfile(path_or_url):
        raise MissingInput(f'{source} {path_or_url}: no such file (use imagenet, a path, or none)')
    from misc.camio import load_checkpoint
    return load_checkpoint(path_or_url)


def init_layout(init, source='--seg_init'):
    """(state dict in our keys or None, layout 'torchvision' | 'deeplab' | 'none') of an init choice: 'none',
    'imagenet' (torchvision's file for the depth is resolved by the caller), a URL or a local path."""
    if init in (None, 'none'):
        return None, 'none'
    sd = unwrap_state_dict(read_state_dict(init, source))
    return to_model_keys(sd, f'{source} {init}')


def resolve_stride_and_norm(layout, stride_in='auto', input_norm='auto'):
    """(stride_in, input_norm) for weights of this layout; 'auto' follows the weights: torchvision trained the
    stride in the 3x3 and expects RGB/255 mean/std, Caffe-converted (and random) weights the 1x1 and BGR minus
    the mean."""
    tv = layout == 'torchvision'
    return (('3x3' if tv else '1x1') if stride_in == 'auto' else stride_in,
            ('torchvision' if tv else 'caffe') if input_norm == 'auto' else input_norm)


def load_weights(model, sd, source, allow_fresh_head=True):
    """Strict load of a state dict in our keys. A checkpoint without ASPP tensors loads the backbone and keeps
    the fresh ASPP (allow_fresh_head); every other missing, unexpected or mis-shaped tensor is an error
    naming it, with the depth, width or class count it implies. Returns 'whole' or 'backbone'."""
    own = model.state_dict()
    has_head = any(k.startswith('base.aspp.') for k in sd)
    depth = checkpoint_depth(sd)
    if depth is not None and depth != model.depth:
        raise BadInput(f'{source} is a ResNet-{depth} (layer4 has {BLOCKS[depth][2]} blocks); this network is a '
                       f'ResNet-{model.depth} (--seg_depth {model.depth})')
    w = sd.get('base.layer1.conv1.conv.weight')
    if w is not None and w.shape[0] != own['base.layer1.conv1.conv.weight'].shape[0]:
        raise BadInput(f'{source} has a stem of {w.shape[0]} channels, this network {model.width} '
                       f'(--backbone_width {model.width}; 64 is the real network)')
    head = sd.get('base.aspp.c0.weight')
    if head is not None and head.shape[0] != model.n_classes:
        raise BadInput(f'{source} was trained for {head.shape[0]} classes (ASPP), this run has '
                       f'{model.n_classes} (check --dataset, or start from a backbone-only checkpoint)')
    if not has_head:
        if not allow_fresh_head:
            raise BadInput(f'{source} holds no ASPP tensors (base.aspp.*): a backbone, not a trained DeepLab')
        load_strict(model, sd, source, fresh=('base.aspp.',))
        return 'backbone'
    load_strict(model, sd, source)
    return 'whole'


def normalize_image(img, norm):
    """uint8 RGB (H,W,3) -> float32 (H,W,3) in the order and scale the weights expect: 'caffe' = BGR 0-255 minus
    CAFFE_MEAN_BGR (deeplab-pytorch), 'torchvision' = RGB (x/255 - mean)/std."""
    from misc.imutils import normalize
    if norm == 'caffe':
        return (img[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, np.float32)).astype(np.float32)
    if norm == 'torchvision':
        return normalize(img)
    raise BadInput(f'input normalisation must be one of {INPUT_NORMS}, got {norm!r}')


def build(n_classes, depth, width, stride_in, rates=ASPP_RATES, msc_scales=MSC_SCALES):
    return DeepLabV2MSC(n_classes, depth, width, rates, msc_scales, stride_in)


def checkpoint_meta(model, input_norm):
    """What make_seg needs to rebuild the network and feed it (stored next to the weights)."""
    return {'arch': 'deeplabv2_msc', 'n_classes': model.n_classes, 'depth': model.depth, 'width': model.width,
            'stride_in': model.stride_in, 'input_norm': input_norm, 'msc_scales': list(model.msc_scales),
            'aspp_rates': [m.dilation[0] for m in model.base.aspp.children()]}
