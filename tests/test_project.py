"""Project rules and the orchestrator's flags."""
import os
import re
import subprocess
import sys

import pytest
import torch

import run_sample
from net import resnet50

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_files():
    out = subprocess.run(['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not out:  # not a git checkout: walk the tree
        out = [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) if '.venv' not in d
               for f in fs if f.endswith('.py')]
    return [f for f in out if not f.startswith('tests/')]


def test_no_cuda_literals_no_forbidden_imports_no_pickle():
    for f in python_files():
        text = open(os.path.join(ROOT, f), encoding='utf-8').read()
        assert '.cu' + 'da(' not in text, f  # spelled apart so that this file passes its own check
        assert not re.search(r'^\s*(import|from)\s+(chainercv|torchvision)\b', text, re.M), f
        assert 'allow_pickle=True' not in text and 'weights_only=False' not in text, f


def test_pass_flags_are_typed_booleans_and_alias():
    p = run_sample.get_parser()
    a = p.parse_args(['--train_cam_pass', 'True', '--make_cam_pass', 'False'])
    assert a.train_cam_pass is True and a.make_cam_pass is False
    with pytest.raises(SystemExit):
        p.parse_args(['--eval_cam_pass', 'maybe'])
    assert p.parse_args(['--cam_scales', '1', '0.5']).cam_scales == [1.0, 0.5]


def test_finalize_puts_everything_under_work_dir(tmp_path):
    a = run_sample.finalize_args(run_sample.get_parser().parse_args(['--work_dir', str(tmp_path / 'w'),
                                                                     '--device', 'cpu']))
    for k in ('cam_dir', 'ckpt_dir', 'metrics_dir', 'train_list', 'eval_list', 'cls_labels', 'sfc_weights'):
        assert getattr(a, k).startswith(str(tmp_path / 'w')), k
    assert os.path.isdir(a.cam_dir)


def test_imagenet_weights_from_local_file(tmp_path):
    src = resnet50.resnet50()
    sd = dict(src.state_dict())
    sd['fc.weight'], sd['fc.bias'] = torch.zeros(1000, 2048), torch.zeros(1000)  # torchvision files carry fc
    p = str(tmp_path / 'resnet50-19c8e357.pth')
    torch.save(sd, p)
    dst = resnet50.resnet50(weights=p)
    assert torch.equal(dst.layer4[2].conv3.weight, src.layer4[2].conv3.weight)
    sd.pop('layer1.0.conv1.weight')
    torch.save(sd, p)
    with pytest.raises(ValueError, match='layer1.0.conv1.weight'):
        resnet50.resnet50(weights=p)
    with pytest.raises(ValueError, match='width 64, the network has width 8: pass --backbone_width 64'):
        resnet50.resnet50(width=8, weights=p)
    with pytest.raises(ValueError, match='width 64'):
        resnet50.resnet50(width=8, weights='imagenet')
    with pytest.raises(FileNotFoundError, match='backbone_weights'):
        resnet50.resnet50(weights=str(tmp_path / 'missing.pth'))


def test_run_log_starts_with_the_environment_and_the_settings(tmp_path):
    work = str(tmp_path / 'w')
    run_sample.main(['--work_dir', work, '--device', 'cpu', '--amp', 'bf16', '--num_workers', '1'])
    lines = open(os.path.join(work, 'run.log')).read().splitlines()
    assert lines[1].startswith('environment: Python ') and 'torch ' + torch.__version__ in lines[1]
    assert 'usable CPU cores' in lines[1] and 'pydensecrf yes' in lines[1]
    assert lines[2].startswith('settings: --amp bf16 (bf16 autocast') and 'channels-last off' in lines[2]
    assert 'loader 1' in lines[2]


@pytest.mark.parametrize('procs', ['0', '2'])
def test_the_golden_summary_line_counts_in_one_process_and_under_xdist(tmp_path, procs):
    """The line at the end of a run counts the golden comparisons that passed and those that failed, also when
    xdist's workers run the tests and only the controller writes the summary."""
    (tmp_path / 'conftest.py').write_text(
        f'import sys\nsys.path.insert(0, {ROOT!r})\n'
        'from tests.conftest import fixture, pytest_runtest_logreport, pytest_terminal_summary  # noqa: F401\n')
    (tmp_path / 'test_g.py').write_text(
        "def test_passes(fixture):\n    assert fixture('pcm') and fixture('prototype')\n\n\n"
        "def test_fails(fixture):\n    assert fixture('deeplab_crf') is None\n\n\n"
        "def test_not_golden():\n    pass\n")
    out = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-n', procs, str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert out.returncode == 1 and '1 failed, 2 passed' in out.stdout, out.stdout[-2000:]
    assert ("golden comparisons: 1 against the SFC authors' code (2 fixture files) and 0 against deeplab-pytorch "
            '(0 fixture files) ran and passed; 1 FAILED') in out.stdout, out.stdout[-2000:]
