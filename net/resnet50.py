"""ResNet-50 with frozen-statistics BatchNorm and configurable strides (docs/faithfulness §2.1; IRN/SIPE/SFC
resnet50.py).

Attribute names (conv1, bn1, layer1..4, downsample.0/.1) match torchvision's, so the ImageNet file
resnet50-19c8e357.pth loads strictly (minus fc). `width` scales every channel count for the demo and the
tests; width 64 is exactly the authors' network.
"""
import contextlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import BadInput, MissingInput, Unavailable

IMAGENET_URL = 'https://download.pytorch.org/models/resnet50-19c8e357.pth'  # SFC/network/resnet50.py:6


class FixedBatchNorm(nn.BatchNorm2d):
    """BatchNorm that always normalises with its stored statistics (training=False), eps 1e-5.

    While `calibrating` is set it first overwrites its statistics with the batch's (data-dependent
    initialisation for randomly initialised backbones, never used with ImageNet weights). While
    `batch_statistics` is set and the module is in training mode it is an ordinary BatchNorm (batch statistics,
    running ones updated): only the stand-in pretraining (tools/pretrain_backbone.py) uses that, as ImageNet
    training did.
    """
    calibrating = False
    batch_statistics = False

    def forward(self, x):
        if self.batch_statistics and self.training:
            return super().forward(x)
        if self.calibrating:
            with torch.no_grad():
                self.running_mean.copy_(x.mean((0, 2, 3)))
                self.running_var.copy_(x.var((0, 2, 3), unbiased=False))
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = FixedBatchNorm(planes)
        # the stride sits on the 3x3 conv (SFC/network/resnet50.py:16-53)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=dilation, bias=False,
                               dilation=dilation)
        self.bn2 = FixedBatchNorm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = FixedBatchNorm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), strides=(2, 2, 2, 1), dilations=(1, 1, 1, 1), width=64):
        super().__init__()
        self.width = width
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=strides[0], padding=3, bias=False)
        self.bn1 = FixedBatchNorm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0], 1, dilations[0])
        self.layer2 = self._make_layer(width * 2, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(width * 4, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_layer(width * 8, layers[3], strides[3], dilations[3])

    def _make_layer(self, planes, blocks, stride, dilation):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                                       FixedBatchNorm(planes * 4))
        mods = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=1)]
        self.inplanes = planes * 4
        mods += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def channels(self):
        """Output channels of layer1..4."""
        return [self.width * 4, self.width * 8, self.width * 16, self.width * 32]


def resnet50(strides=(2, 2, 2, 1), dilations=(1, 1, 1, 1), width=64, weights='none'):
    """weights: 'imagenet' (the torchvision URL, docs/faithfulness §2.1), a local .pth path, or 'none' (random
    init)."""
    model = ResNet((3, 4, 6, 3), strides, dilations, width)
    if weights not in (None, 'none'):
        load_imagenet_weights(model, weights)
    return model


def load_imagenet_weights(model, weights):
    """torchvision-layout weights (ImageNet's, or the demo's stand-in of weights/standin/) loaded strictly."""
    if weights == 'imagenet':
        if model.width != 64:
            raise BadInput(f'ImageNet weights need --backbone_width 64 (the real ResNet-50), got {model.width}')
        try:
            sd = torch.hub.load_state_dict_from_url(IMAGENET_URL, map_location='cpu', progress=True)
        except Exception as e:
            raise Unavailable(
                f'could not download the ImageNet ResNet-50 weights from {IMAGENET_URL} ({e}). Download that file '
                f'elsewhere and pass --backbone_weights /path/to/resnet50-19c8e357.pth, or pass '
                f'--backbone_weights none to train from random initialisation (not comparable to the paper).') from None
    else:
        if not os.path.isfile(weights):
            raise MissingInput(f'--backbone_weights {weights}: no such file (use imagenet, a path, or none)')
        sd = torch.load(weights, map_location='cpu', weights_only=True)
        if isinstance(sd, dict) and 'state_dict' in sd and isinstance(sd['state_dict'], dict):
            sd = sd['state_dict']
    sd = {k: v for k, v in sd.items() if not k.startswith('fc.')}
    stem = sd.get('conv1.weight')
    if stem is not None and stem.shape[0] != model.width:
        raise BadInput(f'--backbone_weights {weights} is a ResNet of width {stem.shape[0]}, the network has width '
                       f'{model.width}: pass --backbone_width {stem.shape[0]}')
    from net.checkpoint import load_strict
    load_strict(model, sd, source=str(weights))


def calibrate(resnet, images):
    """Random initialisation only: set every BatchNorm's statistics from a batch of images, layer by
    layer, so that a randomly initialised backbone starts with unit-scale activations. Returns the count."""
    with torch.no_grad(), calibrating_batchnorm(resnet) as bns:
        resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(
            resnet.conv1(images))))))))
    return len(bns)


@contextlib.contextmanager
def _batchnorm_mode(module, attr):
    bns = [m for m in module.modules() if isinstance(m, FixedBatchNorm)]
    for m in bns:
        setattr(m, attr, True)
    try:
        yield bns
    finally:
        for m in bns:
            setattr(m, attr, False)


def batchnorm_training(module):
    """Inside this context every FixedBatchNorm of `module` in training mode is an ordinary BatchNorm."""
    return _batchnorm_mode(module, 'batch_statistics')


def calibrating_batchnorm(module):
    """Inside this context every FixedBatchNorm of `module` takes its statistics from the data it sees."""
    return _batchnorm_mode(module, 'calibrating')


def fold_batchnorm(model, compute_dtype=torch.float64):
    """Inference only: fold every FixedBatchNorm into the conv before it (conv gains a bias, the BN becomes
    Identity). The folded weights w * gamma / sqrt(var + eps) and bias are computed in `compute_dtype` (float64:
    rounded once to the weights' dtype; float32 is what torch's own fusion does, kept for tools/cam_fidelity.py)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent, conv_name, bn_name):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if isinstance(bn, FixedBatchNorm):
            dtype = conv.weight.dtype
            c, b = copy.deepcopy(conv).to(compute_dtype).eval(), copy.deepcopy(bn).to(compute_dtype).eval()
            setattr(parent, conv_name, fuse_conv_bn_eval(c, b).to(dtype))
            setattr(parent, bn_name, nn.Identity())
    for m in list(model.modules()):
        if isinstance(m, ResNet):
            fold(m, 'conv1', 'bn1')
        elif isinstance(m, Bottleneck):
            for i in (1, 2, 3):
                fold(m, f'conv{i}', f'bn{i}')
            if m.downsample is not None:
                fold(m.downsample, '0', '1')
    return model
