import numpy as np
import pytest
import torch
import torch.nn.functional as F

from net import resnet50_sfc
from net.resnet50_sfc import CAM, Net, normalize_cam, pcm_propagate, prototype_cam, prototype_seeds


def test_pcm_matches_authors(fixture):
    z = fixture('pcm')
    out = pcm_propagate(torch.from_numpy(z['cam']), torch.from_numpy(z['feature']))
    np.testing.assert_allclose(out.numpy(), z['out'], rtol=0, atol=1e-5)
    one = pcm_propagate(torch.from_numpy(z['cam']), torch.from_numpy(z['feature']), iters=1)
    np.testing.assert_allclose(one.numpy(), z['step1'], rtol=0, atol=1e-5)


def test_pcm_hand_computed_column_normalisation():
    # two pixels with orthogonal features: W = diag(1/(1+eps)); three pixels, two identical
    g = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # (1, D=2, hw=3)
    cam = torch.tensor([[[[1.0, 0.0, 0.5]]]])  # (1, 1, 1, 3)
    out = pcm_propagate(cam, g.reshape(1, 2, 1, 3), iters=1)
    gn = 1 / (1 + 1e-5)  # |g_i| = 1 -> g / (1 + eps)
    s = gn * gn  # S between two identical unit pixels; 0 between orthogonal ones
    w01 = s / (2 * s + 1e-5)  # columns 0 and 1 sum two entries s, column 2 one
    np.testing.assert_allclose(out.flatten().numpy(), [w01, w01, 0.5 * s / (s + 1e-5)], rtol=1e-6)


def _authors_prototype():
    from tools.benchmark import authors_prototype
    return authors_prototype


@pytest.mark.parametrize('form', ['ours', 'authors_form'])
def test_prototype_matches_authors(fixture, form):
    """Ours (matrix products) and the benchmark's re-statement of the authors' (n, C, D, h, w) form, which times
    the authors' make_cam and is cam_fidelity's reference, both against the authors' outputs."""
    proto = prototype_cam if form == 'ours' else _authors_prototype()
    z = fixture('prototype')
    seeds = prototype_seeds(torch.from_numpy(z['norm_cam']), torch.from_numpy(z['valid_mask_train']))
    np.testing.assert_array_equal(seeds.numpy(), z['seeds_train'])
    out = proto(torch.from_numpy(z['norm_cam']), torch.from_numpy(z['feature']),
                torch.from_numpy(z['valid_mask_train']))
    np.testing.assert_allclose(out.numpy(), z['out_train'], rtol=0, atol=1e-5)
    seeds = prototype_seeds(torch.from_numpy(z['infer_norm_cam']), torch.from_numpy(z['infer_label']))
    np.testing.assert_array_equal(seeds.numpy(), z['seeds_infer'])
    out = proto(torch.from_numpy(z['infer_norm_cam']), torch.from_numpy(z['infer_feature']),
                torch.from_numpy(z['infer_label']))
    np.testing.assert_allclose(out.numpy(), z['out_infer'], rtol=0, atol=1e-5)


def test_prototype_bg_factor_decides_seeds():
    # bg 0.5 vs class 0.2: with 0.3 * 0.5 = 0.15 < 0.2 the class wins the seed
    cam = torch.tensor([0.5, 0.2]).view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous()
    seeds = prototype_seeds(cam, torch.ones(1, 2, 1, 1))
    assert seeds[0, 1].sum() == 4 and seeds[0, 0].sum() == 0
    seeds = prototype_seeds(cam, torch.ones(1, 2, 1, 1), bg_factor=0.5)
    assert seeds[0, 0].sum() == 4


def test_prototype_cosine_equals_torch_cosine_similarity():
    g = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 5, 4, 6, generator=g)
    feat = torch.randn(2, 12, 4, 6, generator=g)
    mask = (torch.rand(2, 5, 1, 1, generator=g) > 0.4).float()
    seeds = prototype_seeds(cam, mask)
    proto = F.adaptive_avg_pool2d(seeds.unsqueeze(2) * feat.unsqueeze(1), 1)  # the authors' (n,C,D,1,1)
    ref = F.relu(torch.cosine_similarity(feat.unsqueeze(1), proto, dim=2))
    np.testing.assert_allclose(prototype_cam(cam, feat, mask).numpy(), ref.numpy(), atol=1e-6)


def test_normalize_cam():
    logits = torch.tensor([[[[2.0, -1.0]], [[1.0, 4.0]]]])  # (1, 2 classes, 1, 2)
    out = normalize_cam(logits)
    a = torch.tensor([[2 / (2 + 1e-5), 0.0], [1 / (4 + 1e-5), 4 / (4 + 1e-5)]])
    np.testing.assert_allclose(out[0, 1:, 0].numpy(), a.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), (1 - a.max(0).values).numpy(), rtol=1e-6)


def small_net(cls=CAM, num_cls=21):
    torch.manual_seed(0)
    return cls(num_cls, backbone_width=8).eval()


def test_training_forward_shapes_and_gradient_reach():
    net = small_net(Net)
    x = torch.randn(2, 3, 64, 96)
    out = net(x, torch.ones(2, 21, 4, 6))
    assert out['score'].shape == (2, 20, 1, 1)
    for k in ('cam', 'proto_cam', 'raw_cam'):
        assert out[k].shape == (2, 21, 4, 6)
    (out['cam'].sum() + out['proto_cam'].sum() + out['score'].sum()).backward()
    r = net.resnet50
    for m in (r.conv1, r.bn1, r.layer1, r.layer2):
        assert all(p.grad is None for p in m.parameters())
    for m in (r.layer3, r.layer4, net.classifier, net.f9, net.side1, net.side2, net.side3, net.side4):
        assert all(p.grad is not None for p in m.parameters())


def test_sizes_are_ceil_of_stride_16():
    net = small_net(Net)
    out = net(torch.randn(1, 3, 81, 50), torch.ones(1, 21, 1, 1))
    assert out['cam'].shape[2:] == (6, 4)


def test_flip_fusion_is_sum_of_image_and_flipped_flip():
    net = small_net()
    img = torch.randn(1, 3, 48, 64)
    pair = torch.cat([img, img.flip(-1)])
    label = torch.zeros(21)
    label[[0, 3, 7]] = 1
    with torch.no_grad():
        cam, proto, raw = net(pair, label)
        cam2, proto2, _ = net(torch.cat([img.flip(-1), img]), label)
        _, x4, logits, hie = net._features(pair)
    # reference: logits of both images, fused by sum before normalisation
    fused = logits[0:1] + logits[1:2].flip(-1)
    np.testing.assert_allclose(raw.detach().numpy(), normalize_cam(fused)[0].detach().numpy(), atol=1e-6)
    # the pair is symmetric: the fused CAM of [flip(img), img] is the mirror image
    np.testing.assert_allclose(cam2.detach().numpy(), cam.flip(-1).detach().numpy(), atol=1e-5)
    assert proto.shape == (21, 3, 4) and float(proto[[1, 2]].abs().max()) == 0.0  # absent classes: no prototype


def authors_state_dict(net):
    """Our tensors under the authors' 966 key names (docs/faithfulness §2.8): canonical + stage* + backbone.* +
    newly_added.*"""
    sd = dict(net.state_dict())
    out = dict(sd)
    for k, v in sd.items():
        if k.startswith('resnet50.'):
            rest = k[len('resnet50.'):]
            if rest.startswith('conv1.'):
                st = 'stage0.0.' + rest[len('conv1.'):]
            elif rest.startswith('bn1.'):
                st = 'stage0.1.' + rest[len('bn1.'):]
            else:
                layer, tail = rest.split('.', 1)
                st = f'stage{layer[-1]}.0.{tail}'
            out[st] = v
            out['backbone.' + st[len('stage'):]] = v
    for i, name in enumerate(['classifier', 'f9', 'side1', 'side2', 'side3', 'side4']):
        out[f'newly_added.{i}.weight'] = sd[f'{name}.weight']
    return out


def test_authors_checkpoint_with_966_keys_loads_strictly():
    src = Net(21, backbone_width=64)
    sd = authors_state_dict(src)
    assert len(sd) == 966
    assert len(src.state_dict()) == 324
    dst = CAM(21, backbone_width=64)
    resnet50_sfc.load_sfc_weights(dst, {'net': sd})
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_optimizer_groups_match_authors():
    net = Net(21, backbone_width=64)
    bb, new = net.trainable_parameters()
    assert len(bb) == 159 and len(new) == 6
    assert sum(p.numel() for p in bb) == 23508032 and sum(p.numel() for p in new) == 5126144


def test_checkpoint_errors_name_the_tensor():
    src = small_net(Net)
    sd = dict(src.state_dict())
    sd['classifier.weightX'] = sd.pop('classifier.weight')
    with pytest.raises(ValueError, match='classifier.weight'):
        resnet50_sfc.load_sfc_weights(small_net(), sd, 'ckpt.pth')
    sd = dict(src.state_dict())
    sd['side1.weight'] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(ValueError, match='side1.weight'):
        resnet50_sfc.load_sfc_weights(small_net(), sd, 'ckpt.pth')
    with pytest.raises(ValueError, match='20 foreground classes.*80'):
        resnet50_sfc.load_sfc_weights(small_net(num_cls=81), src.state_dict(), 'ckpt.pth')
    sd = authors_state_dict(src)
    sd['stage3.0.9.conv1.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match='alias'):
        resnet50_sfc.load_sfc_weights(small_net(), sd, 'ckpt.pth')


def test_module_prefix_is_stripped():
    src = small_net(Net)
    sd = {'module.' + k: v for k, v in src.state_dict().items()}
    resnet50_sfc.load_sfc_weights(small_net(), {'net': sd})


def test_folded_batchnorm_gives_the_same_cams():
    """In float64, so that the fold's reordering of the arithmetic is far below the tolerance (in float32 it is
    about 1e-5 relative and varies with the thread count), while a wrong fold (eps left out: about 1e-5 per layer)
    is far above it."""
    from net.resnet50 import fold_batchnorm
    net = small_net().double()
    g = torch.Generator().manual_seed(1)
    for m in net.resnet50.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    img = torch.randn(1, 3, 40, 56, generator=g, dtype=torch.float64)
    pair = torch.cat([img, img.flip(-1)])
    label = torch.zeros(21, dtype=torch.float64)
    label[[0, 5, 9]] = 1
    with torch.no_grad():
        ref = net(pair, label)
        fold_batchnorm(net.resnet50)
        out = net(pair, label)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.resnet50.modules())
    for a, b in zip(ref, out):
        assert b.dtype == torch.float64
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-10 * max(1.0, float(a.abs().max())))
