"""The SFC network (docs/faithfulness §2): ResNet-50 CAM classifier + PCM refinement + prototype (IS) CAM.

`Net` is the training network (dict outputs), `CAM` the inference network on an [image, flipped image]
pair. Attribute names (resnet50, side1..4, classifier, f9) are the authors', so their checkpoints load;
the authors' alias prefixes (stage*, backbone.*, newly_added.*) are recognised and dropped on load and
never written: our state dicts hold each tensor once.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.errors import BadInput
from net import resnet50 as resnet
from misc.torchutils import fp32
from net.checkpoint import alias_mapper, load_strict, strip_aliases, unwrap_state_dict

EPS = 1e-5  # norms, max-normalisation, PCM column sums (SFC/network/resnet50_SFC.py:40-42, :81, :87-90)
COS_EPS = 1e-8  # torch.cosine_similarity default (SFC/network/resnet50_SFC.py:60)
PROTO_BG_FACTOR = 0.3  # background scale before the seed argmax (SFC/network/resnet50_SFC.py:49)
PCM_ITERS = 2  # two propagation steps (SFC/network/resnet50_SFC.py:43-44)


@fp32
def normalize_cam(logits, size=None, eps=EPS):
    """relu, per-channel max-normalisation, background = 1 - max over classes, prepended (docs/faithfulness §2.4).
    logits (n,C-1,h,w) -> (n,C,h,w), resized bilinearly (align_corners=True) to `size` if given."""
    a = F.relu(logits)
    a = a / (a.amax(dim=(2, 3), keepdim=True) + eps)
    bg = 1 - a.amax(dim=1, keepdim=True)
    out = torch.cat([bg, a], dim=1)
    if size is not None and tuple(out.shape[2:]) != tuple(size):
        out = F.interpolate(out, size=size, mode='bilinear', align_corners=True)
    return out


@fp32
def pcm_propagate(cam, g, eps=EPS, iters=PCM_ITERS):
    """PCM after the f9 convolution (docs/faithfulness §2.5): cam (n,C,h,w), g (n,D,h,w) -> (n,C,h,w).

    W_ij = relu(cos-like ĝ_i.ĝ_j) / (sum_i' S_i'j + eps), ĝ = g / (||g|| + eps); C'' = (C W) W.
    """
    n, c, h, w = cam.shape
    g = g.reshape(n, g.shape[1], h * w)
    g = g / (torch.norm(g, dim=1, keepdim=True) + eps)
    aff = F.relu(torch.bmm(g.transpose(1, 2), g))  # (n, hw, hw)
    aff = aff / (aff.sum(dim=1, keepdim=True) + eps)
    out = cam.reshape(n, c, h * w)
    for _ in range(iters):
        out = torch.bmm(out, aff)
    return out.reshape(n, c, h, w)


def prototype_seeds(norm_cam, mask, bg_factor=PROTO_BG_FACTOR):
    """one-hot(argmax_c P'_c) * mask with P'_0 = bg_factor * P_0 (docs/faithfulness §2.6 steps 1-2); ties -> first."""
    p = norm_cam.detach().clone()
    p[:, 0] *= bg_factor
    winner = p.argmax(dim=1)
    seeds = F.one_hot(winner, norm_cam.shape[1]).permute(0, 3, 1, 2).to(norm_cam.dtype)
    return seeds * mask


@fp32
def prototype_cam(norm_cam, feature, mask, bg_factor=PROTO_BG_FACTOR, cos_eps=COS_EPS):
    """The prototype (IS) CAM (docs/faithfulness §2.6): relu(cos(F(p), proto_c)), proto_c = sum_p S_c(p) F(p) / (h w).

    norm_cam (n,C,h,w), feature (n,D,h,w), mask (n,C,h,w) or (n,C,1,1). Computed with matrix products:
    the authors' (n,C,D,h,w) intermediate (1.3 GB at batch 20) is never built. The cosine follows
    torch.cosine_similarity: x.y / (max(|x|, eps) max(|y|, eps)).
    """
    n, c, h, w = norm_cam.shape
    seeds = prototype_seeds(norm_cam, mask, bg_factor).reshape(n, c, h * w)
    f = feature.reshape(n, feature.shape[1], h * w)
    proto = torch.bmm(seeds, f.transpose(1, 2)) / (h * w)  # (n, C, D)
    dot = torch.bmm(proto, f)  # (n, C, hw)
    f_norm = torch.norm(f, dim=1, keepdim=True).clamp_min(cos_eps)  # (n, 1, hw)
    p_norm = torch.norm(proto, dim=2, keepdim=True).clamp_min(cos_eps)  # (n, C, 1)
    return F.relu(dot / (p_norm * f_norm)).reshape(n, c, h, w)


@fp32
def hierarchical_feature(sides, size, eps=EPS):
    """L2-normalise each side feature over channels, resize bilinearly (align_corners=False) to size, concat."""
    out = []
    for s in sides:
        s = s / (torch.norm(s, dim=1, keepdim=True) + eps)
        if tuple(s.shape[2:]) != tuple(size):
            s = F.interpolate(s, size=size, mode='bilinear', align_corners=False)
        out.append(s)
    return torch.cat(out, dim=1)


class Net(nn.Module):
    def __init__(self, num_cls=21, backbone_width=64, backbone_weights='none', bg_factor=PROTO_BG_FACTOR):
        super().__init__()
        self.num_cls = num_cls
        self.bg_factor = bg_factor
        self.resnet50 = resnet.resnet50(strides=(2, 2, 2, 1), width=backbone_width, weights=backbone_weights)
        c1, c2, c3, c4 = self.resnet50.channels()
        w = backbone_width
        # 1x1 convs without bias, created in the authors' order (SFC/network/resnet50_SFC.py:24-30)
        self.side1 = nn.Conv2d(c1, 2 * w, 1, bias=False)
        self.side2 = nn.Conv2d(c2, 2 * w, 1, bias=False)
        self.side3 = nn.Conv2d(c3, 4 * w, 1, bias=False)
        self.side4 = nn.Conv2d(c4, 4 * w, 1, bias=False)
        self.classifier = nn.Conv2d(c4, num_cls - 1, 1, bias=False)
        self.f9 = nn.Conv2d(3 + c4, c4, 1, bias=False)
        # conv1/bn1 are frozen; layer1-2 never receive a gradient (stage2's output is detached and the
        # side convs read detached features), so they run without autograd (docs/faithfulness §2.3).
        r = self.resnet50
        for m in (r.conv1, r.bn1, r.layer1, r.layer2):
            for p in m.parameters():
                p.requires_grad_(False)

    def new_layers(self):
        return [self.classifier, self.f9, self.side1, self.side2, self.side3, self.side4]

    def trainable_parameters(self):
        """(backbone params incl. the frozen ones, new-layer params): the 1x / 10x lr groups (159 / 6 tensors)."""
        return list(self.resnet50.parameters()), [p for m in self.new_layers() for p in m.parameters()]

    def _features(self, x):
        r = self.resnet50
        with torch.no_grad():
            x1 = r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))
            x2 = r.layer2(x1)
        x3 = r.layer3(x2)
        x4 = r.layer4(x3)
        return (x3, x4) + self._heads(x1, x2, x3, x4)

    @fp32
    def _heads(self, x1, x2, x3, x4):
        """Classifier and side convs, in float32 under --amp: the 1x1 heads are a few % of the work, and the CAMs
        and the prototype's cosines are what the method's argmaxes read."""
        sides = [self.side1(x1), self.side2(x2), self.side3(x3.detach()), self.side4(x4.detach())]
        return self.classifier(x4), hierarchical_feature(sides, x3.shape[2:])

    @fp32
    def pcm(self, cam, x, x4):
        """PCM with its f9 projection in float32 (the affinities of PCM are products of these features)."""
        f = torch.cat([F.interpolate(x, size=x4.shape[2:], mode='bilinear', align_corners=True), x4], dim=1)
        return pcm_propagate(cam, self.f9(f))

    def forward(self, x, valid_mask):
        """x (n,3,H,W); valid_mask (n,C,h,w) at stride 16 (bg channel = real-image area, class channels
        masked by the labels) -> dict: score (n,C-1,1,1) logits, cam = PCM CAM (n,C,h,w) (authors' cam1),
        proto_cam = prototype CAM (cam2), raw_cam = normalised CAM before PCM (orignal_cam)."""
        x3, x4, logits, hie = self._features(x)
        score = logits.mean(dim=(2, 3), keepdim=True)
        raw = normalize_cam(logits, x3.shape[2:]) * valid_mask
        cam = self.pcm(raw, x, x4)
        proto = prototype_cam(cam, hie, valid_mask, self.bg_factor)
        return {'score': score, 'cam': cam, 'proto_cam': proto, 'raw_cam': raw}


class CAM(Net):
    """Inference on x = [image, flipped image] (2,3,H,W) with label (C,) incl. background (docs/faithfulness §2.7).
    Flip fusion by sums; no mask before PCM (absent classes stay active); prototype masked by the label.
    Returns (cam, proto_cam, raw_cam), each (C,h,w)."""

    def forward(self, x, label):
        x3, x4, logits, hie = self._features(x)

        def fuse(t):
            return t[0:1] + t[1:2].flip(-1)
        raw = normalize_cam(fuse(logits), x3.shape[2:])
        cam = self.pcm(raw, fuse(x), fuse(x4))
        proto = prototype_cam(cam, fuse(hie), label.reshape(1, -1, 1, 1).to(cam.dtype), self.bg_factor)
        return cam[0], proto[0], raw[0]


# --- checkpoints ---------------------------------------------------------------------------------------------
# the authors' aliases: stage0..4, backbone.0..4 and newly_added.0..5 (SFC/network/resnet50_SFC.py:18-33)
canonical_key = alias_mapper(0, {'newly_added': ['classifier', 'f9', 'side1', 'side2', 'side3', 'side4']})


def load_sfc_weights(model, obj, source='checkpoint'):
    """Load our checkpoints and the authors' ({'net': sd}, 966 keys) strictly (docs/faithfulness §2.8)."""
    sd = strip_aliases(unwrap_state_dict(obj), canonical_key, source)
    w = sd.get('classifier.weight')
    if w is not None and w.shape[0] != model.num_cls - 1:
        raise BadInput(f'{source} was trained for {w.shape[0]} foreground classes, the network has '
                       f'{model.num_cls - 1} (check --dataset and --sfc_weights)')
    load_strict(model, sd, source)
    return model
