"""Mixed precision, channels-last and the training input pipeline (issue 10)."""
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
    for d in ('ir_label', 'sem_seg'):  # GT stands in for IR labels and pseudo masks
        import shutil
        shutil.copytree(os.path.join(tiny_voc['root'], 'SegmentationClassAug'), os.path.join(work, d))
    res = run_sample.main(base_args(
        tiny_voc, work, '--amp', amp, '--sfc_num_epoches', '1', '--sfc_select_on_gt', 'False',
        '--train_list', val, '--irn_crop_size', '96', '--irn_batch_size', '2', '--irn_num_epoches', '1',
        '--irn_crop_size_infer', '96', '--exp_times', '3', '--seg_init', 'none', '--seg_depth', '50',
        '--seg_iters', '2', '--seg_batch_size', '2', '--seg_crop_size', '64', '--seg_lr', '1e-5',
        '--seg_infer_list', val, '--train_sfc_pass', 'True', '--make_cam_pass', 'True', '--train_irn_pass', 'True',
        '--make_sem_seg_pass', 'True', '--train_seg_pass', 'True', '--make_seg_pass', 'True'))
    assert res['train_sfc']['steps'] == 3 and res['train_irn']['steps'] == 3 and res['train_seg']['steps'] == 2
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
