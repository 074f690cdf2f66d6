"""Mixed precision, channels-last and the training input pipeline."""
import json
import os

import numpy as np
import pytest
import torch

import run_sample
from misc import camio
from misc.torchutils import autocast, check_amp, fp32, ieee_convolutions, setup_precision, use_channels_last
from misc.trainutils import StepSampler, epoch_order
from net import resnet50, resnet50_sfc
from tests.test_e2e import base_args
from tests.test_robustness import random_sfc_checkpoint


def test_fp32_parts_leave_autocast():
    seen = {}

    @fp32
    def part(x, xs):
        seen['dtypes'] = (x.dtype, [t.dtype for t in xs])
        seen['autocast'] = torch.is_autocast_enabled('cpu')
        return (x @ x.T).dtype

    x = torch.randn(4, 4)
    with autocast('bf16', 'cpu'):
        assert (x @ x.T).dtype == torch.bfloat16  # autocast is on here ...
        assert part(x, [x.bfloat16()]) == torch.float32  # ... and off inside the float32 part
    assert seen == {'dtypes': (torch.float32, [torch.float32]), 'autocast': False}
    assert part(x.double(), [x]) == torch.float64  # float64 stays float64 (the fixture tests run in it)
    with autocast('none', 'cpu'):
        assert not torch.is_autocast_enabled('cpu')
    with pytest.raises(ValueError, match='--amp'):
        check_amp('fp8', 'cpu')


def test_pcm_prototype_and_losses_stay_float32_under_autocast():
    torch.manual_seed(0)
    net = resnet50_sfc.Net(21, backbone_width=8).eval()
    x = torch.randn(2, 3, 64, 64)
    mask = torch.ones(2, 21, 4, 4)
    with torch.no_grad(), autocast('bf16', 'cpu'):
        out = net(x, mask)
    assert all(out[k].dtype == torch.float32 for k in ('cam', 'proto_cam', 'raw_cam'))
    with torch.no_grad():
        ref = net(x, mask)
    assert (out['cam'] - ref['cam']).abs().max() < 0.05  # bfloat16 convolutions, float32 PCM


def test_channels_last_gives_the_same_cams(tiny_voc, tmp_path):
    works = {k: str(tmp_path / k) for k in ('nchw', 'nhwc')}
    for k, w in works.items():
        random_sfc_checkpoint(w)
        run_sample.main(base_args(tiny_voc, w, '--make_cam_pass', 'True', '--channels_last',
                                  'False' if k == 'nchw' else 'True'))
    for n in open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split():
        a, b = (camio.load_cam(camio.cam_path(os.path.join(w, 'cam'), n)) for w in works.values())
        np.testing.assert_allclose(a['cam'], b['cam'], rtol=0, atol=1e-5)
        np.testing.assert_allclose(a['proto_cam'], b['proto_cam'], rtol=0, atol=1e-4)
    assert use_channels_last('auto', 'cpu') is False and use_channels_last('True', 'cpu') is True
    assert use_channels_last('auto', 'cuda') is True and use_channels_last('False', 'cuda') is False


def test_batchnorm_folded_in_float64_keeps_the_cams():
    torch.manual_seed(0)
    net = resnet50_sfc.CAM(21, backbone_width=16).eval()
    for m in net.modules():  # statistics far from (0, 1), as in trained networks
        if isinstance(m, resnet50.FixedBatchNorm):
            m.running_var.uniform_(0.01, 4)
            m.running_mean.uniform_(-1, 1)
            m.weight.data.uniform_(0.2, 2)
    x = torch.randn(2, 3, 97, 129)
    label = torch.zeros(21)
    label[[0, 5, 9]] = 1
    with torch.no_grad():
        ref = net(x, label)
        folded = net.__class__(21, backbone_width=16).eval()
        folded.load_state_dict(net.state_dict())
        resnet50.fold_batchnorm(folded.resnet50)
        out = folded(x, label)
    diff = max(float((a - b).abs().max()) for a, b in zip(out[:2], ref[:2]))
    assert diff < 1e-5


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_every_network_step_runs_with_amp(tiny_voc, tmp_path, amp):
    work = str(tmp_path / amp)
    val = os.path.join(tiny_voc['meta'], 'val.txt')
    import shutil  # GT stands in for the IR labels IRN trains on; make_sem_seg makes the masks DeepLab trains on
    shutil.copytree(os.path.join(tiny_voc['root'], 'SegmentationClassAug'), os.path.join(work, 'ir_label'))
    res = run_sample.main(base_args(
        tiny_voc, work, '--amp', amp, '--sfc_num_epoches', '1', '--sfc_select_on_gt', 'False',
        '--train_list', val, '--irn_crop_size', '96', '--irn_batch_size', '2', '--irn_num_epoches', '1',
        '--irn_crop_size_infer', '96', '--exp_times', '3', '--seg_init', 'none', '--seg_depth', '50',
        '--seg_iters', '2', '--seg_batch_size', '2', '--seg_crop_size', '64', '--seg_lr', '1e-5',
        '--seg_infer_list', val, '--train_sfc_pass', 'True', '--make_cam_pass', 'True', '--train_irn_pass', 'True',
        '--make_sem_seg_pass', 'True', '--train_seg_pass', 'True', '--make_seg_pass', 'True'))
    assert res['train_sfc']['steps'] == 3 and res['train_irn']['steps'] == 3 and res['train_seg']['steps'] == 2
    assert res['make_sem_seg']['computed'] == len(open(val).read().split())
    for n in open(val).read().split():
        c = camio.load_cam(camio.cam_path(os.path.join(work, 'cam'), n))
        assert c['cam'].dtype == np.float32 and np.isfinite(c['cam']).all() and np.isfinite(c['proto_cam']).all()
    curve = [json.loads(line) for line in open(camio.scalars_path(os.path.join(work, 'metrics'), 'train_sfc'))]
    assert all(np.isfinite(c['loss/cls']) and c['time/step'] > 0 and 0 <= c['time/data_wait'] <= c['time/step']
               for c in curve)


def test_step_sampler_is_the_epoch_order_and_splits_ranks():
    n, B, seed = 10, 4, 3
    one = list(StepSampler(n, B, seed, 1, 5))
    expect = []
    for s in range(1, 5):
        e, w = divmod(s, n // B)
        expect += [(e, i) for i in epoch_order(seed, e, n)[w * B:(w + 1) * B]]
    assert one == expect and len(StepSampler(n, B, seed, 1, 5)) == 16
    ranks = [list(StepSampler(n, B, seed, 1, 5, r, 2)) for r in range(2)]
    assert [x for s in range(4) for r in range(2) for x in ranks[r][2 * s:2 * s + 2]] == one
    with pytest.raises(ValueError, match='does not split across 3'):
        StepSampler(n, B, seed, 0, 1, 0, 3)


def test_cam_fidelity_tool_measures_each_variant(tmp_path):
    """tools/cam_fidelity.py runs make_cam's own cams_of per variant: the default differs from the authors'
    arithmetic only in the prototype's form (classifier CAM identical), float32 variants sit near the reference and
    the float64 value, bf16 autocast visibly further; the reference has no distance to itself."""
    from tools import cam_fidelity
    weights = random_sfc_checkpoint(str(tmp_path))
    names = [v[0] for v in cam_fidelity.VARIANTS]
    ref, default, one_thread, cl = names[0], names[1], names[2], names[5]
    assert 'default' in default and 'channels-last, BN unfolded' in cl
    pick = [0, 1, 2, 5, names.index('NCHW, --amp bf16'), len(names) - 1]
    res = cam_fidelity.main(['--sfc_weights', weights, '--width', '8', '--images', '1', '--height', '60',
                             '--width_px', '80', '--scales', '1.0', '0.5', '--variants', *map(str, pick),
                             '--json', str(tmp_path / 'f.json')])
    by = {r['variant']: r for r in res}
    assert 'reference' not in by[ref] and by[ref]['float64']['cam'] > 0  # float32 is not float64
    assert by[default]['reference']['cam'] == 0 and by[default]['reference']['proto'] < 1e-5
    for n in (one_thread, cl):
        assert by[n]['reference']['cam'] < 1e-4 and by[n]['float64']['cam'] < 1e-4
    bf16 = by['NCHW, --amp bf16']['float64']['cam']
    assert bf16 > 10 * max(by[n]['float64']['cam'] for n in (ref, default, one_thread, cl))
    err = {n: by[n]['layer4_relative_error'] for n in by}
    assert err[names[-1]] == 0 and 0 < err[ref] < 1e-5 and err['NCHW, --amp bf16'] > 100 * err[ref]
    assert json.load(open(tmp_path / 'f.json'))['variants'][0]['variant'] == ref


def test_amp_none_is_ieee_float32_on_cuda_and_tf32_is_asked_for():
    """PyTorch's default for cuDNN float32 convolutions on Ampere+ is TF32: --amp none must set IEEE, --amp tf32
    is refused where it cannot run, and the float32 parts switch TF32 off while they run (flags set, no GPU)."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    try:
        conv.fp32_precision = 'tf32'  # PyTorch's default
        setup_precision('none', 'cuda')
        assert conv.fp32_precision == 'ieee' and matmul.fp32_precision == 'ieee'
        conv.fp32_precision = 'tf32'
        setup_precision('none', 'cpu')  # nothing to set for CPU runs
        assert conv.fp32_precision == 'tf32'
        with ieee_convolutions('cuda'):
            assert conv.fp32_precision == 'ieee'
        assert conv.fp32_precision == 'tf32'
        with ieee_convolutions('cpu'):
            assert conv.fp32_precision == 'tf32'
        for device in ('cpu', 'cuda'):
            if device == 'cuda' and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
                continue
            with pytest.raises(ValueError, match='Ampere'):
                check_amp('tf32', device)
        with autocast('tf32', 'cpu'):
            assert not torch.is_autocast_enabled('cpu')
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def _float32_parts():
    """Every function and method marked by misc.torchutils.fp32 in the project's modules: (owner, name, marked)."""
    import importlib
    import inspect
    parts = []
    for mod_name in ('net.resnet50_sfc', 'net.sfc_loss', 'net.resnet50_irn', 'net.seg_loss', 'step.make_sem_seg'):
        mod = importlib.import_module(mod_name)
        owners = [mod] + [c for _, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == mod_name]
        for owner in owners:
            for name, f in list(vars(owner).items()):
                if getattr(f, 'float32_part', False):
                    parts.append((owner, name, f))
    return parts


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_float32_parts_receive_and_return_float32_under_autocast(amp, monkeypatch):
    """Under --amp bf16/fp16 the trunk runs in low precision while every part marked float32 (CAM normalisation,
    heads, PCM, prototype, hierarchical feature, SFC/IRN/segmentation losses, random walk) receives float32
    tensors, runs with autocast off and returns float32: each marked function is replaced by a recording copy of
    itself and the real forward passes and losses are run."""
    import argparse

    from misc.indexing import PathIndex
    from net import deeplab, resnet50_irn, seg_loss, sfc_loss
    from step import make_sem_seg
    from step.train_irn import affinity_labels_torch
    calls = {}

    def recording(name, inner):
        def rec(*args, **kwargs):
            tensors = [t for t in list(args) + list(kwargs.values()) for t in (t if isinstance(t, (list, tuple))
                                                                                 else [t]) if torch.is_tensor(t)]
            out = inner(*args, **kwargs)
            outs = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else [out]
            calls.setdefault(name, []).append((
                {t.dtype for t in tensors if t.is_floating_point()}, torch.is_autocast_enabled('cpu'),
                {t.dtype for t in outs if torch.is_tensor(t) and t.is_floating_point()}))
            return out
        return rec

    parts = _float32_parts()
    assert {f'{getattr(o, "__name__", o)}.{n}' for o, n, _ in parts} == FLOAT32_PARTS
    for owner, name, marked in parts:
        monkeypatch.setattr(owner, name, fp32(recording(f'{getattr(owner, "__name__", owner)}.{name}',
                                                        marked.__wrapped__)))
    trunk = []
    torch.manual_seed(0)
    net = resnet50_sfc.Net(21, backbone_width=8)
    net.resnet50.layer4.register_forward_hook(lambda m, i, o: trunk.append(o.dtype))
    x = torch.randn(2, 3, 64, 64)
    mask = torch.ones(2, 21, 4, 4)
    label = torch.zeros(2, 20)
    label[:, 3] = 1
    w = sfc_loss.channel_weights(torch.ones(20).numpy())
    cam_net = resnet50_sfc.CAM(21, backbone_width=8)
    irn = resnet50_irn.Net(8)
    p = PathIndex(5, (16, 16))
    red = torch.randint(0, 3, (2, 16, 16), dtype=torch.uint8)
    inds = [torch.from_numpy(i) for i in p.path_indices]
    seg = deeplab.build(21, 50, 8, '1x1')
    with autocast(amp, 'cpu'):
        o1, o2 = net(x, mask), net(torch.nn.functional.interpolate(x, scale_factor=0.5), mask[:, :, :2, :2])
        y = label[:, :, None, None]
        sfc_loss.classification_loss(o1['score'], o2['score'], y)
        sfc_loss.gsc_loss(o1['cam'], o1['proto_cam'], w)
        sfc_loss.cross_scale_loss(o1['cam'], o2['cam'], torch.cat([torch.ones_like(y[:, :1]), y], 1), w)
        cam, proto, _ = cam_net(torch.randn(2, 3, 64, 64), torch.ones(21))
        edge_out, dp_out = irn(torch.randn(2, 3, 64, 64))
        labels = affinity_labels_torch(red, torch.from_numpy(p.src_indices), torch.from_numpy(p.dst_indices), 21)
        resnet50_irn.irn_training_loss(edge_out, dp_out, inds, p.search_dst, p.radius_floor, *labels)
        logit = seg(torch.randn(2, 3, 48, 48))[0]
        lab = torch.randint(0, 21, (2,) + tuple(logit.shape[2:]))
        seg_loss.output_loss(logit, lab, seg_loss.denominators(lab, 'balanced'), 'balanced')
        cams = {'keys': np.array([0, 4]), 'cam': np.random.rand(2, 30, 30).astype(np.float32)}
        cams['proto_cam'] = cams['cam'].copy()
        a = argparse.Namespace(sem_seg_proto_weight=0.3, sem_seg_power=1.3, sem_seg_double_power=True,
                               sem_seg_bg_value=0.25, sem_seg_radius=5, beta=10, exp_times=2)
        make_sem_seg.pseudo_label(cams, torch.rand(1, 8, 8).to(AMP_LOW[amp]), (30, 30), a)
    low = AMP_LOW[amp]
    assert trunk and all(d == low for d in trunk), trunk  # the trunk did run in low precision
    assert {f'{getattr(o, "__name__", o)}.{n}' for o, n, _ in parts} == set(calls), 'a marked part was not run'
    for name, seen in calls.items():
        for ins, autocast_on, outs in seen:
            assert ins <= {torch.float32, torch.float64} and not autocast_on, (name, ins, autocast_on)
            assert outs <= {torch.float32, torch.float64} and torch.float32 in outs | ins, (name, outs)


AMP_LOW = {'bf16': torch.bfloat16, 'fp16': torch.float16}
# what must stay IEEE float32 under --amp (README, precision): a part that loses its mark fails the test above
FLOAT32_PARTS = {'Net._heads', 'Net.pcm', 'net.resnet50_irn.irn_training_loss', 'net.resnet50_sfc.hierarchical_feature',
                 'net.resnet50_sfc.normalize_cam', 'net.resnet50_sfc.pcm_propagate', 'net.resnet50_sfc.prototype_cam',
                 'net.seg_loss.output_loss', 'net.sfc_loss.classification_loss', 'net.sfc_loss.cross_scale_loss',
                 'net.sfc_loss.gsc_loss', 'step.make_sem_seg.pseudo_label'}
