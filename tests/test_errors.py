"""Input errors stop a command with one line and exit status 2; --traceback / SFC_TRACEBACK=1 show the traceback;
defects keep theirs; a damaged resume file says so and how to start over."""
import os
import subprocess
import sys

import pytest

import run_sample
from misc import errors
from tests.test_e2e import base_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'run_sample.py'), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=ROOT)


def test_input_error_is_one_line_with_status_2(tmp_path):
    missing = str(tmp_path / 'no_such_root')
    args = ['--voc12_root', missing, '--work_dir', str(tmp_path / 'w'), '--device', 'cpu', '--make_cam_pass', 'True',
            '--run_log', 'False']
    out = _run(args + ['--check_data', 'False'])
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and missing in lines[0] and '--voc12_root' in lines[0]
    assert 'Traceback' not in out.stderr
    # with the data check: one line per problem on stdout, then the one-line error
    out = _run(args)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        'error: data check failed with 1 problems (listed above); fix them, or pass --check_data False to let the '
        'steps fail on the first one']
    assert 'PROBLEM' in out.stdout and missing in out.stdout
    # the traceback on request, by flag or environment
    for extra, env in ((['--traceback', 'True'], None), ([], {errors.TRACEBACK_ENV: '1'})):
        out = _run(args + ['--check_data', 'False'] + extra, env)
        assert out.returncode == 2 and 'Traceback (most recent call last)' in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith('error: ')


def test_defects_keep_their_traceback():
    def broken(argv):
        raise TypeError('a defect of ours')
    with pytest.raises(TypeError, match='a defect'):
        errors.cli(broken, [])

    def bad(argv):
        raise errors.BadInput('first line\n  second line')
    with pytest.raises(SystemExit) as e:
        errors.cli(bad, [])
    assert e.value.code == errors.EXIT_INPUT
    assert errors.one_line(errors.BadInput('a\n  b\n')) == 'error: a | b'


def test_input_errors_are_still_the_builtin_kinds():
    assert issubclass(errors.BadInput, ValueError) and issubclass(errors.MissingInput, FileNotFoundError)
    assert issubclass(errors.Diverged, FloatingPointError) and issubclass(errors.MissingLabel, KeyError)
    from misc.torchutils import OutOfMemory
    assert issubclass(OutOfMemory, errors.InputError)
    assert str(errors.MissingLabel('3 ids have no label')) == '3 ids have no label'


@pytest.mark.parametrize('damage', ['truncated', 'not_a_resume_file'])
def test_damaged_resume_file_says_how_to_start_over(tiny_voc, tmp_path, damage):
    import torch

    from misc import provenance
    work = str(tmp_path / 'w')
    argv = base_args(tiny_voc, work, '--train_sfc_pass', 'True', '--sfc_select_on_gt', 'False')
    provenance.check(run_sample.finalize_args(run_sample.get_parser().parse_args(argv)), 'train_sfc')  # its record
    resume = os.path.join(work, 'ckpt', 'sfc_resume.pth')
    if damage == 'truncated':
        torch.save({'net': {'w': torch.zeros(1000)}, 'step': 3}, resume)
        with open(resume, 'r+b') as f:
            f.truncate(os.path.getsize(resume) // 2)
        match = r'resume file .*sfc_resume\.pth is damaged .*rm .*sfc_resume\.pth'
    else:
        torch.save({'net': {}}, resume)
        match = r'resume file .*sfc_resume\.pth lacks optimizer, step, max_step.*rm '
    with pytest.raises(errors.BadInput, match=match):
        run_sample.main(argv)


def test_errors_from_loader_workers_keep_one_line():
    """An input error raised inside a DataLoader worker reaches the main process with the worker's traceback in its
    text; the one-line form keeps only the message."""
    import torch

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise errors.BadInput('image x.jpg cannot be decoded; replace it')
    with pytest.raises(errors.BadInput) as e:
        list(torch.utils.data.DataLoader(Broken(), batch_size=None, num_workers=1))
    assert 'Original Traceback' in str(e.value)
    assert errors.one_line(e.value) == 'error: image x.jpg cannot be decoded; replace it'
