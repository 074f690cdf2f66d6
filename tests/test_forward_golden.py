"""Golden forward passes: the whole SFC networks (Net for training, CAM for make_cam) and the IRN networks (Net for
training, EdgeDisplacement for make_sem_seg), from the image to every output, against the authors' networks run on
the same rule-generated weights (tests/fixtures/sfc_forward.npz, irn_forward.npz; README there). The weights are not
shipped: the rule that made them is reproduced here from the fixture's own parameters and key list. Tolerances come
from the noise floor the fixtures record (their 2-thread and float64 reruns differ from the stored arrays by at most
1.2e-5 for the SFC features and 8.6e-6 for the IRN displacement)."""
import json

import numpy as np
import pytest
import torch

from net import resnet50_irn, resnet50_sfc


def rule_state_dict(z, aliases=False):
    """The fixtures' weight rule: the i-th canonical key gets generator seed base + i; conv weights He-normal (the
    residual branch's last conv x the residual scale), BN gamma 1 + 0.1 randn, running_var 1 + 0.1 rand,
    num_batches_tracked 0, everything else 0.1 randn. aliases=True: also every alias name of the authors' modules
    holding its canonical tensor, i.e. a state dict laid out as the authors' checkpoints are."""
    listing = json.loads(bytes(z['keys_json']))
    keys = listing['keys']
    rule = json.loads(bytes(z['rule_json']))
    base, residual = int(z['rule_seed_base']), float(z['rule_residual_scale'])
    assert rule['seed_base'] == base
    sd = {}
    for i, (name, shape) in enumerate(keys):
        g = torch.Generator().manual_seed(base + i)
        s = tuple(shape)
        if name.endswith('num_batches_tracked'):
            t = torch.zeros(s, dtype=torch.long)
        elif len(s) == 4 and name.endswith('weight'):
            t = torch.randn(s, generator=g) * (2.0 / (s[1] * s[2] * s[3])) ** 0.5
            if name.endswith('.conv3.weight'):
                t = t * residual
        elif name.endswith('running_var'):
            t = 1 + rule['running_var_span'] * torch.rand(s, generator=g)
        elif name.endswith('weight'):
            t = 1 + rule['bn_gamma_std'] * torch.randn(s, generator=g)
        else:
            t = rule['beta_std'] * torch.randn(s, generator=g)
        sd[name] = t
    if aliases:
        sd.update({alias: sd[canonical] for alias, canonical in listing['aliases'].items()})
    return sd


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixtures were recorded on one thread
    yield
    torch.set_num_threads(n)


def close(got, want, atol, what):
    got = got.detach().float().numpy()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = float(np.abs(got - want).max())
    assert err <= atol, f'{what}: max |diff| {err:.2e} > {atol:g}'
    return err


def hooked(model, names):
    """Outputs of the named submodules during the next forward."""
    seen = {}
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    return seen


# --- SFC ---------------------------------------------------------------------------------------------------------
FEATURES_ATOL = 1e-4    # x4, classifier logits, side convs, score: values up to 16, noise up to 1.2e-5
MAPS_ATOL = 2e-5        # the normalised CAM before PCM (orignal_cam): values up to 1, noise up to 7.9e-6
PCM_ATOL = 3e-6         # the PCM and prototype CAMs: noise up to 3.3e-7 (10x); the image resized into PCM's f9 with
#                         the other align_corners moves the PCM CAM by 6.8e-6, and this sees it


def test_sfc_training_network_forward_matches_the_authors(fixture, one_thread):
    z = fixture('sfc_forward')
    net = resnet50_sfc.Net(21, backbone_width=64, backbone_weights='none')
    resnet50_sfc.load_sfc_weights(net, {'net': rule_state_dict(z, aliases=True)}, 'the rule')  # as the authors' files
    net.train()  # a training step's mode: the backbone's BatchNorms keep their running statistics, as the authors'
    seen = hooked(net, ['resnet50.layer4', 'classifier', 'side1', 'side2', 'side3', 'side4'])
    with torch.no_grad():
        out = net(torch.from_numpy(z['input']), torch.from_numpy(z['valid_mask']))
    errs = {
        'x4': close(seen['resnet50.layer4'], z['net_x4'], FEATURES_ATOL, 'x4'),
        'cam': close(seen['classifier'], z['net_cam'], FEATURES_ATOL, 'classifier logits'),
        'score': close(out['score'], z['net_score'], FEATURES_ATOL, 'score'),
        'orignal_cam': close(out['raw_cam'], z['net_orignal_cam'], MAPS_ATOL, 'raw_cam (orignal_cam)'),
        'cam1': close(out['cam'], z['net_cam1'], PCM_ATOL, 'cam (cam1)'),
        'cam2': close(out['proto_cam'], z['net_cam2'], PCM_ATOL, 'proto_cam (cam2)'),
    }
    for k in range(1, 5):
        errs[f'side{k}'] = close(seen[f'side{k}'], z[f'net_side{k}'], FEATURES_ATOL, f'side{k}')
    seeds = out['cam'].clone()
    seeds[:, 0] *= 0.3
    want = z['net_cam1'].copy()
    want[:, 0] *= 0.3
    assert np.array_equal(seeds.argmax(1).numpy(), want.argmax(1))
    print('SFC Net forward, max |diff| against the authors: ' + ', '.join(f'{k} {v:.1e}' for k, v in errs.items()))


def test_sfc_cam_network_forward_matches_the_authors(fixture, one_thread):
    z = fixture('sfc_forward')
    cam = resnet50_sfc.CAM(21, backbone_width=64, backbone_weights='none')
    cam.load_state_dict(rule_state_dict(z), strict=True)
    cam.eval()
    seen = hooked(cam, ['resnet50.layer4', 'classifier'])
    with torch.no_grad():
        norm_cam, proto, raw = cam(torch.from_numpy(z['cam_input']), torch.from_numpy(z['label']))
    errs = {
        'x4': close(seen['resnet50.layer4'], z['cam_x4'], FEATURES_ATOL, 'x4 (both views)'),
        'cam': close(seen['classifier'], z['cam_cam'], FEATURES_ATOL, 'classifier logits (both views)'),
        'orignal_cam': close(raw, z['cam_orignal_cam'], MAPS_ATOL, 'raw (orignal_cam)'),
        'norm_cam': close(norm_cam, z['cam_norm_cam'], 1e-5, 'cam (norm_cam)'),  # noise 1.2e-6
        'IS_cam': close(proto, z['cam_IS_cam'], PCM_ATOL, 'proto_cam (IS_cam)'),
    }
    seeds = norm_cam.clone()
    seeds[0] *= 0.3
    want = z['cam_norm_cam'].copy()
    want[0] *= 0.3
    assert np.array_equal(seeds.argmax(0).numpy(), want.argmax(0))
    print('SFC CAM forward, max |diff| against the authors: ' + ', '.join(f'{k} {v:.1e}' for k, v in errs.items()))


def test_sfc_forward_golden_check_is_tight_enough_to_see_a_flipped_resize(fixture, one_thread, monkeypatch):
    """The tolerance is below what one wrong detail in the forward does: the side features resized with
    align_corners=True instead of False moves the prototype CAM past it."""
    z = fixture('sfc_forward')
    real = torch.nn.functional.interpolate

    def flipped(x, size=None, mode='nearest', align_corners=None, **kw):
        if mode == 'bilinear' and align_corners is False:
            align_corners = True
        return real(x, size=size, mode=mode, align_corners=align_corners, **kw)
    net = resnet50_sfc.Net(21, backbone_width=64, backbone_weights='none')
    net.load_state_dict(rule_state_dict(z), strict=True)
    monkeypatch.setattr(resnet50_sfc.F, 'interpolate', flipped)
    with torch.no_grad():
        out = net(torch.from_numpy(z['input']), torch.from_numpy(z['valid_mask']))
    with pytest.raises(AssertionError):
        close(out['proto_cam'], z['net_cam2'], MAPS_ATOL, 'proto_cam (cam2)')


# --- IRN ---------------------------------------------------------------------------------------------------------
IRN_ATOL = 2e-5   # edge logits, train-mode displacement, the edge map: noise up to 1.9e-6
IRN_DP_ATOL = 1e-4  # EdgeDisplacement's displacement (values up to 12.3, noise 8.6e-6)


def test_irn_training_network_forward_matches_the_authors(fixture, one_thread):
    z = fixture('irn_forward')
    net = resnet50_irn.Net(64, backbone_weights='none')
    resnet50_irn.load_irn_weights(net, rule_state_dict(z, aliases=True), 'the rule')  # as the authors' files
    x = torch.from_numpy(z['input'])
    with torch.no_grad():
        edge, dp = net.train()(x)
        e1 = close(edge, z['net_edge_out'], IRN_ATOL, 'edge_out (train mode)')
        e2 = close(dp, z['net_dp_out'], IRN_ATOL, 'dp_out (train mode: no mean shift)')
        edge_eval, dp_eval = net.eval()(x)
        e3 = close(dp_eval, z['net_eval_dp_out'], IRN_ATOL, 'dp_out (eval mode: mean shift)')
        close(edge_eval, z['net_edge_out'], IRN_ATOL, 'edge_out (eval mode)')
    print(f'IRN Net forward, max |diff| against the authors: edge {e1:.1e}, dp {e2:.1e}, dp (eval) {e3:.1e}')


def test_irn_edge_displacement_forward_matches_the_authors(fixture, one_thread):
    """EdgeDisplacement pads the image pair to 512 (which changes every GroupNorm statistic), crops, and averages
    the image's and the flipped image's edge logits before the sigmoid."""
    z = fixture('irn_forward')
    net = resnet50_irn.EdgeDisplacement(crop_size=512, stride=4, backbone_width=64, backbone_weights='none')
    resnet50_irn.load_irn_weights(net, rule_state_dict(z, aliases=True), 'the rule')
    with torch.no_grad():
        edge, dp = net.eval()(torch.from_numpy(z['ed_input']))
    e1 = close(edge.reshape(z['ed_edge'].shape), z['ed_edge'], IRN_ATOL, 'edge map')
    e2 = close(dp, z['ed_dp'], IRN_DP_ATOL, 'displacement')
    print(f'IRN EdgeDisplacement forward, max |diff| against the authors: edge {e1:.1e}, dp {e2:.1e}')


def test_side_features_send_no_gradient_into_the_backbone():
    """The authors feed the side convs detached layer3/layer4 features (and layer1/2 run without autograd): L_PDW,
    which reads the hierarchical features, trains the side convs only. A forward golden check cannot see a lost
    detach; the gradient can."""
    torch.manual_seed(0)
    net = resnet50_sfc.Net(21, backbone_width=8, backbone_weights='none')
    x3, x4, logits, hie = net._features(torch.randn(1, 3, 64, 64))
    hie.square().sum().backward()
    backbone = [p.grad for p in net.resnet50.parameters() if p.grad is not None and p.grad.abs().max() > 0]
    assert not backbone, 'the hierarchical features reached the backbone'
    assert all(m.weight.grad is not None and m.weight.grad.abs().max() > 0
               for m in (net.side1, net.side2, net.side3, net.side4))
