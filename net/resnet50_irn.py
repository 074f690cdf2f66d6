"""IRN (docs/faithfulness §7.1): frozen ResNet-50 + class-boundary (edge) branch + displacement branch, GroupNorm
heads.

`Net.forward` gives (edge logits, displacement) at stride 4; `irn_loss_maps` the four loss maps of
training (B7.4); `EdgeDisplacement` the inference on an [image, flipped image] pair (B8.1), padded to
`crop_size` exactly as the authors (GroupNorm statistics depend on the padded size) or, for larger
images, to the next multiple of 32 (the authors' network breaks above 512).
Head widths scale with --backbone_width (64 = the authors': 32-channel edge convs, 64/128/256 dp convs).
"""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import BadInput
from misc.torchutils import fp32
from net import resnet50 as resnet
from net.checkpoint import alias_mapper, load_strict, strip_aliases, unwrap_state_dict

LOG_EPS = 1e-5  # SFC/network/resnet50_irn.py:206-207


def _head(cin, cout, groups, up=None):
    mods = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up:
        mods.append(nn.Upsample(scale_factor=up, mode='bilinear', align_corners=False))
    mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class MeanShift(nn.Module):
    """Identity while training; subtracts running_mean (2,) in eval mode (SFC/network/resnet50_irn.py:99-108)."""

    def __init__(self, n):
        super().__init__()
        self.register_buffer('running_mean', torch.zeros(n))

    def forward(self, x):
        return x if self.training else x - self.running_mean.view(1, -1, 1, 1)


class Net(nn.Module):
    def __init__(self, backbone_width=64, backbone_weights='none'):
        super().__init__()
        w = backbone_width
        if w % 8:
            raise BadInput(f'--backbone_width {w} must be a multiple of 8 for the IRN GroupNorm heads')
        self.resnet50 = resnet.resnet50(strides=(2, 2, 2, 1), width=w, weights=backbone_weights)
        c0, (c1, c2, c3, c4) = w, self.resnet50.channels()
        e = w // 2
        self.fc_edge1 = _head(c0, e, 4)
        self.fc_edge2 = _head(c1, e, 4)
        self.fc_edge3 = _head(c2, e, 4, 2)
        self.fc_edge4 = _head(c3, e, 4, 4)
        self.fc_edge5 = _head(c4, e, 4, 4)
        self.fc_edge6 = nn.Conv2d(5 * e, 1, 1, bias=True)
        self.fc_dp1 = _head(c0, w, 8)
        self.fc_dp2 = _head(c1, 2 * w, 16)
        self.fc_dp3 = _head(c2, 4 * w, 16)
        self.fc_dp4 = _head(c3, 4 * w, 16, 2)
        self.fc_dp5 = _head(c4, 4 * w, 16, 2)
        self.fc_dp6 = _head(12 * w, 4 * w, 16, 2)
        self.fc_dp7 = nn.Sequential(nn.Conv2d(7 * w, 4 * w, 1, bias=False), nn.GroupNorm(16, 4 * w), nn.ReLU(inplace=True),
                                    nn.Conv2d(4 * w, 2, 1, bias=False), MeanShift(2))
        for p in self.resnet50.parameters():  # the backbone is never trained (docs/faithfulness §7.1)
            p.requires_grad_(False)

    def edge_layers(self):
        return [self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4, self.fc_edge5, self.fc_edge6]

    def dp_layers(self):
        return [self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4, self.fc_dp5, self.fc_dp6, self.fc_dp7]

    def trainable_parameters(self):
        """(edge params, displacement params): the lr 0.1 / 1.0 groups (17 / 22 tensors)."""
        return ([p for m in self.edge_layers() for p in m.parameters()],
                [p for m in self.dp_layers() for p in m.parameters()])

    def train(self, mode=True):
        super().train(mode)
        self.resnet50.eval()  # as the authors (no effect with frozen-statistics BN)
        return self

    def forward(self, x):
        r = self.resnet50
        with torch.no_grad():  # every stage output is detached in the authors' network
            x1 = r.maxpool(r.relu(r.bn1(r.conv1(x))))
            x2 = r.layer1(x1)
            x3 = r.layer2(x2)
            x4 = r.layer3(x3)
            x5 = r.layer4(x4)
        e2 = self.fc_edge2(x2)
        hw = e2.shape[2:]
        edge = torch.cat([self.fc_edge1(x1), e2, self.fc_edge3(x3)[..., :hw[0], :hw[1]],
                          self.fc_edge4(x4)[..., :hw[0], :hw[1]], self.fc_edge5(x5)[..., :hw[0], :hw[1]]], dim=1)
        edge_out = self.fc_edge6(edge)
        dp3 = self.fc_dp3(x3)
        h3 = dp3.shape[2:]
        dp2 = self.fc_dp2(x2)
        up3 = self.fc_dp6(torch.cat([dp3, self.fc_dp4(x4)[..., :h3[0], :h3[1]], self.fc_dp5(x5)[..., :h3[0], :h3[1]]],
                                    dim=1))[..., :dp2.shape[2], :dp2.shape[3]]
        dp_out = self.fc_dp7(torch.cat([self.fc_dp1(x1), dp2, up3], dim=1))
        return edge_out, dp_out


def pair_displacement(dp, search_dst, radius_floor):
    """dp(src) - dp(src + d) for every direction d (n, 2, n_dirs, n_src) (SFC/network/resnet50_irn.py:177-191)."""
    h, w = dp.shape[2:]
    r = radius_floor
    ch, cw = h - r, w - 2 * r
    src = dp[:, :, :ch, r:r + cw]
    dst = torch.stack([dp[:, :, dy:dy + ch, r + dx:r + dx + cw] for dy, dx in search_dst], dim=2)
    return (src.unsqueeze(2) - dst).reshape(dp.shape[0], dp.shape[1], len(search_dst), -1)


def irn_loss_maps(edge_out, dp_out, path_indices, search_dst, radius_floor, eps=LOG_EPS):
    """The four loss maps of AffinityDisplacementLoss (docs/faithfulness §7.4):
    pos = -log(aff + eps), neg = -log(1 + eps - aff) (n, dirs, src); dp_fg = |pair - d|, dp_bg = |pair| (n, 2, dirs, src)."""
    from misc.indexing import path_affinity
    aff = path_affinity(torch.sigmoid(edge_out), path_indices)
    pair = pair_displacement(dp_out, search_dst, radius_floor)
    target = torch.as_tensor(search_dst, dtype=pair.dtype, device=pair.device).t().reshape(1, 2, -1, 1)
    return -torch.log(aff + eps), -torch.log(1 + eps - aff), (pair - target).abs(), pair.abs()


class _DisplacementL1(torch.autograd.Function):
    """(sum |dp(s) - dp(s+d) - d| fg(d,s), sum |dp(s) - dp(s+d)| bg(d,s)) summed over batch, both components,
    directions and sources, one direction at a time: the (n, 2, dirs, src) maps (0.5 GB each at batch 32,
    crop 512) are never built. Same values and gradient (sign(0) = 0) as the map formulation."""

    @staticmethod
    def forward(ctx, dp, fg, bg, search_dst, r):
        h, w = dp.shape[2:]
        ch, cw = h - r, w - 2 * r
        src = dp[:, :, :ch, r:r + cw]
        n = dp.shape[0]
        s_fg = dp.new_zeros(())
        s_bg = dp.new_zeros(())
        for k, (dy, dx) in enumerate(search_dst):
            diff = src - dp[:, :, dy:dy + ch, r + dx:r + dx + cw]
            f, b = fg[:, k].view(n, 1, ch, cw), bg[:, k].view(n, 1, ch, cw)
            t = torch.tensor([dy, dx], dtype=dp.dtype, device=dp.device).view(1, 2, 1, 1)
            s_fg = s_fg + ((diff - t).abs() * f).sum()
            s_bg = s_bg + (diff.abs() * b).sum()
        ctx.save_for_backward(dp, fg, bg)
        ctx.search_dst, ctx.r = search_dst, r
        return s_fg, s_bg

    @staticmethod
    def backward(ctx, g_fg, g_bg):
        dp, fg, bg = ctx.saved_tensors
        r = ctx.r
        h, w = dp.shape[2:]
        ch, cw = h - r, w - 2 * r
        n = dp.shape[0]
        src = dp[:, :, :ch, r:r + cw]
        grad = torch.zeros_like(dp)
        for k, (dy, dx) in enumerate(ctx.search_dst):
            diff = src - dp[:, :, dy:dy + ch, r + dx:r + dx + cw]
            t = torch.tensor([dy, dx], dtype=dp.dtype, device=dp.device).view(1, 2, 1, 1)
            g = (torch.sign(diff - t) * fg[:, k].view(n, 1, ch, cw) * g_fg
                 + torch.sign(diff) * bg[:, k].view(n, 1, ch, cw) * g_bg)
            grad[:, :, :ch, r:r + cw] += g
            grad[:, :, dy:dy + ch, r + dx:r + dx + cw] -= g
        return grad, None, None, None, None


def label_counts(bg_pos, fg_pos, neg):
    """The loss denominators: label counts over the whole batch."""
    return {'bg': bg_pos.sum().double(), 'fg': fg_pos.sum().double(), 'neg': neg.sum().double()}


@fp32
def irn_training_loss(edge_out, dp_out, path_indices, search_dst, radius_floor, bg_pos, fg_pos, neg, counts=None,
                      eps=LOG_EPS):
    """The training loss of SFC/train_irn.py:53-75 without the full loss maps (memory-lean, same values).
    Labels may be bool. Every term is a sum over the batch divided by a batch-wide label count, so with
    `counts` of the whole batch the terms of micro-batches add up to the full batch's terms."""
    from misc.indexing import path_affinity
    c = counts or label_counts(bg_pos, fg_pos, neg)
    dt = edge_out.dtype
    aff = path_affinity(torch.sigmoid(edge_out), path_indices)
    pos_map = -torch.log(aff + eps)
    bg = (bg_pos * pos_map).sum() / (c['bg'].to(dt) + eps)
    fg = (fg_pos * pos_map).sum() / (c['fg'].to(dt) + eps)
    del pos_map
    negl = (neg * -torch.log(1 + eps - aff)).sum() / (c['neg'].to(dt) + eps)
    s_fg, s_bg = _DisplacementL1.apply(dp_out, fg_pos, bg_pos, [tuple(int(v) for v in d) for d in search_dst],
                                       radius_floor)
    dp_fg = s_fg / (2 * c['fg'].to(dt) + eps)
    dp_bg = s_bg / (2 * c['bg'].to(dt) + eps)
    pos = bg / 2 + fg / 2
    return {'bg_pos': bg, 'fg_pos': fg, 'pos': pos, 'neg': negl, 'dp_fg': dp_fg, 'dp_bg': dp_bg,
            'total': (pos + negl) / 2 + (dp_fg + dp_bg) / 2}


def irn_losses(maps, bg_pos, fg_pos, neg, eps=LOG_EPS):
    """Reductions of SFC/train_irn.py:60-71 -> dict of the terms and `total`."""
    pos_map, neg_map, dp_fg_map, dp_bg_map = maps
    bg = (bg_pos * pos_map).sum() / (bg_pos.sum() + eps)
    fg = (fg_pos * pos_map).sum() / (fg_pos.sum() + eps)
    pos = bg / 2 + fg / 2
    negl = (neg * neg_map).sum() / (neg.sum() + eps)
    dp_fg = (dp_fg_map * fg_pos.unsqueeze(1)).sum() / (2 * fg_pos.sum() + eps)
    dp_bg = (dp_bg_map * bg_pos.unsqueeze(1)).sum() / (2 * bg_pos.sum() + eps)
    return {'bg_pos': bg, 'fg_pos': fg, 'pos': pos, 'neg': negl, 'dp_fg': dp_fg, 'dp_bg': dp_bg,
            'total': (pos + negl) / 2 + (dp_fg + dp_bg) / 2}


class EdgeDisplacement(Net):
    """Inference on x = [image, flipped image] (2,3,H,W) -> (edge (1,h4,w4) in [0,1], displacement (2,h4,w4)),
    h4 = (H-1)//4+1: sigmoid of the mean of the image's and the un-flipped flipped image's edge logits."""

    def __init__(self, crop_size=512, stride=4, **kw):
        super().__init__(**kw)
        self.crop_size, self.stride = crop_size, stride

    def padded_size(self, h, w):
        return tuple(self.crop_size if s <= self.crop_size else -(-s // 32) * 32 for s in (h, w))

    def forward(self, x):
        h, w = x.shape[2:]
        fh, fw = (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
        ph, pw = self.padded_size(h, w)
        edge_out, dp_out = super().forward(F.pad(x, [0, pw - w, 0, ph - h]))
        edge_out, dp_out = edge_out[..., :fh, :fw], dp_out[..., :fh, :fw]
        edge = torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2)
        return edge, dp_out[0]


# --- checkpoints ---------------------------------------------------------------------------------------------
IGNORED = re.compile(r'^(path_indices\d+|disp_target)$')  # AffinityDisplacementLoss buffers (docs/faithfulness §2.8)


# the authors' aliases: stage1..5, backbone.0..4, edge_layers, dp_layers, mean_shift (SFC/network/resnet50_irn.py)
canonical_key = alias_mapper(1, {'edge_layers': [f'fc_edge{i}' for i in range(1, 7)],
                                 'dp_layers': [f'fc_dp{i}' for i in range(1, 8)]},
                             {'mean_shift.running_mean': 'fc_dp7.4.running_mean'})


def load_irn_weights(model, obj, source='checkpoint'):
    """Our IRN checkpoints and the authors' raw state dicts (1 056 keys): aliases checked and dropped,
    path_indices*/disp_target named and ignored, everything else strict."""
    out = strip_aliases(unwrap_state_dict(obj), canonical_key, source, IGNORED)
    load_strict(model, out, source)
    return model
