"""The measuring tools run end to end at tiny sizes (numbers are printed, never asserted on: no timed tests)."""
import json
import os

import pytest
import torch

from tools import benchmark


@pytest.mark.slow  # about 12 s in one process on 2 cores
def test_benchmark_runs_every_stage(tmp_path):
    """Every stage of tools/benchmark.py returns time, images/s and peak memory, and the JSON report holds them: the
    plumbing tools/gpu_check.sh relies on (the network stages in one process, as it runs them; the CRF stages in
    their own; one stage per process is tested below)."""
    out = tmp_path / 'bm.json'
    res = benchmark.main(['--stages', *benchmark.STAGES, '--width', '8', '--crop', '96', '--batch', '2', '--bank', '2',
                          '--irn_batch', '2', '--irn_micro_batch', '1', '--seg_batch', '2', '--seg_crop', '65',
                          '--seg_micro_batch', '1', '--width_px', '80', '--height', '60', '--scales', '1.0', '0.5',
                          '--repeats', '1', '--threads', '1', '--crf_images', '2', '--crf_sizes', '60', '80', '--crf_workers', '1', '2',
                          '--one_process', 'True', '--json', str(out)])
    assert len(res) == len(benchmark.STAGES) + 1  # make_seg_crf with 1 and with 2 CRF processes
    stages = [r['stage'].split(' ')[0] for r in res]
    assert 'make_cam_unoptimised' in stages and stages.count('make_cam') == 1
    assert [r['crf_workers'] for r in res if 'crf_workers' in r] == [1, 2]
    for r in res:
        assert 'error' not in r, r
        assert r['seconds'] > 0 and r['images_per_s'] > 0 and r['peak_mb'] > 0 and r['amp'] == 'none'
    assert json.load(open(out)) == res


def test_benchmark_reports_a_failing_stage_as_an_error_and_a_slow_one_as_a_timeout():
    """A stage that raises is reported with its exit status and the end of its stderr (not as a timeout); a stage
    past its time limit as a timeout; the other stages still run."""
    res = benchmark.main(['--stages', 'train_irn_step', 'cam_to_ir_label', '--width', '7', '--width_px', '80',
                          '--height', '60', '--threads', '1'])
    failed, ok = res
    assert failed['error'].startswith('failed with exit status 1') and failed['exit_status'] == 1
    assert 'must be a multiple of 8' in failed['error'] and 'time limit' not in failed['error']
    assert any('must be a multiple of 8' in line for line in failed['stderr_tail'])
    assert 'error' not in ok and ok['seconds'] > 0
    slow, = benchmark.main(['--stages', 'make_seg', '--width', '8', '--timeout', '0.5'])
    assert slow['error'] == 'stopped at its time limit of 0 s' and slow['exit_status'] is None


def test_benchmark_one_process_keeps_each_stage_result_past_a_failure():
    """--one_process True (gpu_check.sh): the stages of a precision share a process; a stage that raises is
    reported as failed with its message and the next stage still runs and reports (a part cut by its time limit:
    the gpu_check test below)."""
    res = benchmark.main(['--stages', 'train_irn_step', 'make_cam', '--width', '7', '--width_px', '80', '--height',
                          '60', '--scales', '1.0', '--threads', '1', '--one_process', 'True'])
    assert [r['key'] for r in res] == ['train_irn_step', 'make_cam']
    assert res[0]['error'].startswith('failed with exit status 1: BadInput') and 'error' not in res[1]


def gpu_check(tmp_path, **env):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / 'out'), WORK=str(tmp_path / 'work'), **env)
    p = subprocess.run(['bash', os.path.join(root, 'tools', 'gpu_check.sh')], env=env, capture_output=True,
                       text=True, timeout=600)
    summary = (tmp_path / 'out' / 'summary.txt').read_text() if (tmp_path / 'out' / 'summary.txt').exists() else ''
    return p, summary


def test_gpu_check_parts_fit_its_budget():
    """tools/gpu_check.sh --limits: every part has a limit, and the limits with the script's own start add up to
    at most the budget, which is at most the 7 minutes a first GPU run is given."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(['bash', os.path.join(root, 'tools', 'gpu_check.sh'), '--limits'], capture_output=True,
                         text=True, check=True).stdout.split('\n')
    values = dict(line.split() for line in out if line.strip())
    budget, start = int(values.pop('budget')), int(values.pop('start'))
    assert set(values) == {'setup', 'device_check', 'benchmark', 'plan'}
    assert budget <= 420 and start + sum(int(v) for v in values.values()) <= budget, values


@pytest.mark.slow  # about 38 s in one process on 2 cores
def test_gpu_check_logic_on_the_cpu_reports_each_part(tmp_path):
    """The whole script at tiny sizes on the CPU (GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1): the device check runs
    and compares (every comparison within its bounds on the same device), a part that fails (a benchmark flag no
    network accepts) is reported as FAILED with its error, a part past its limit as STOPPED, the others still run,
    and the script's exit status says that something failed."""
    p, summary = gpu_check(tmp_path, GPU_CHECK_DEVICE='cpu', GPU_CHECK_TINY='1', PARTS='device_check,benchmark,plan',
                           BENCH_ARGS='--width 7', GPU_CHECK_LIMITS='setup:60 device_check:300 benchmark:200 plan:1')
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert 'device_check: done' in summary and 'benchmark: FAILED with exit status 1' in summary
    assert 'must be a multiple of 8' in summary  # the failing stage's own error
    assert 'plan: STOPPED at its time limit of 1 s' in summary
    report = json.load(open(tmp_path / 'out' / 'device_check.json'))
    assert len(report['rows']) >= 8 and all(r['verdict'] == 'PASS' for r in report['rows']), report['rows']
    bench = json.load(open(tmp_path / 'out' / 'benchmark.json'))
    assert [r['key'] for r in bench if 'error' in r] == ['train_irn_step', 'make_sem_seg']  # the IRN's two
    assert all(r['seconds'] > 0 for r in bench if 'error' not in r) and len(bench) == 6


@pytest.mark.skipif(torch.cuda.is_available(), reason='on a machine with a GPU the check would run for minutes')
def test_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    """With its default device, the check looks for CUDA before it measures anything: here, with no GPU, it
    stops with that message after creating $WORK and $OUT."""
    p, summary = gpu_check(tmp_path)
    assert p.returncode != 0 and 'no CUDA device: this check needs a GPU' in p.stderr
    assert (tmp_path / 'out').is_dir() and (tmp_path / 'work').is_dir()
    assert not (tmp_path / 'out' / 'benchmark.json').exists()


def test_full_plan_stand_ins_have_the_real_shape(tmp_path, monkeypatch):
    """tools/full_plan.py's stand-ins: the list sizes it is given, every id linked to a real image and GT mask, and
    image-level labels for every id (scaled down here; the real sizes are the module's SIZES)."""
    import numpy as np
    from PIL import Image

    from tools import full_plan
    monkeypatch.setitem(full_plan.SIZES, 'voc', {'train_aug': 7, 'train': 3, 'val': 4})
    monkeypatch.setitem(full_plan.SIZES, 'coco', {'train2014': 5, 'val2014': 2})
    root, meta = full_plan.stand_in('voc', str(tmp_path / 'voc'), n_base=2)
    lists = {s: open(os.path.join(meta, s + '.txt')).read().split() for s in ('train_aug', 'train', 'val')}
    assert [len(lists[s]) for s in ('train_aug', 'train', 'val')] == [7, 3, 4] and set(lists['train']) <= set(lists['train_aug'])
    with Image.open(os.path.join(root, 'JPEGImages', lists['val'][0] + '.jpg')) as im:
        assert sorted(im.size) == [375, 500]
    z = np.load(os.path.join(meta, 'cls_labels.npz'))
    assert len(z['names']) == 11 and z['labels'].shape == (11, 20) and z['labels'].sum(1).min() >= 1
    root, meta = full_plan.stand_in('coco', str(tmp_path / 'coco'), n_base=2)
    names = open(os.path.join(meta, 'train2014.txt')).read().split()
    assert len(names) == 5 and os.path.isfile(os.path.join(root, 'SegmentationClass', 'train2014', names[4] + '.png'))
    assert np.load(os.path.join(meta, 'cls_labels.npz'))['labels'].shape == (7, 80)


def test_a_timed_part_skips_the_warm_up_run_only_when_there_was_one():
    """make_seg's CRF share and make_sem_seg's walk share are parts timed inside each run: the warm-up run's part is
    dropped, and without a warm-up the one run is the measurement, not something to drop (a dropped run gave a CRF
    of 0 s)."""
    import argparse

    from tools import benchmark
    for warmup, repeats, want in ((True, 2, 2.0), (False, 1, 5.0)):
        a = argparse.Namespace(warmup=warmup, repeats=repeats, device='cpu')
        parts = []
        benchmark._timed(a, lambda: parts.append([5.0, 1.0, 3.0][len(parts)]))
        assert len(parts) == repeats + warmup
        assert benchmark._timed_part(a, parts) == want


def test_every_mutation_applies_to_the_code():
    """tools/mutate.py refuses an edit whose text is not in its file exactly once: the list must follow the code."""
    from tools import mutate
    stale = [e[0] for e in mutate.EDITS if not mutate.applies(mutate.ROOT, e)]
    assert not stale, f'edits that no longer apply: {stale}'
    assert len(mutate.EDITS) >= 40 and all(os.path.isfile(os.path.join(mutate.ROOT, t)) for e in mutate.EDITS
                                           for t in e[4])


def test_mutate_counts_only_failing_tests_as_kills(tmp_path):
    """A failure in a test body is a kill (named); a collection error, a missing package or a timeout is not."""
    from tools import mutate
    edit = ('x', 'misc/x.py', 'a', 'b', ['tests/test_x.py'], None)
    assert mutate.judge(edit, ('failed', [('tests.test_x::test_a', 'AssertionError: 1 != 2')], []))[0] == 'killed'
    verdict, why = mutate.judge(edit, ('failed', [('tests.test_y::test_b', 'assert 0')], []))
    assert verdict == 'killed' and 'not one of the tests named' in why
    assert mutate.judge(edit, ('error', [], [('tests.test_x', 'ImportError: no module')]))[0] == 'error'
    assert mutate.judge(edit, ('timeout', [], []))[0] == 'timeout'
    assert mutate.judge(edit, ('passed', [], []))[0] == 'SURVIVED'
    xml = tmp_path / 'r.xml'
    xml.write_text('<testsuites><testsuite><testcase classname="tests.test_x" name="test_a">'
                   '<failure message="AssertionError: boom">tb</failure></testcase>'
                   '<testcase classname="tests.test_x" name="test_b"><failure message="ModuleNotFoundError: no '
                   'module named pydensecrf">tb</failure></testcase>'
                   '<testcase classname="tests.test_y" name="test_c"><error message="failed on setup">tb</error>'
                   '</testcase></testsuite></testsuites>')
    failed, errors = mutate.outcome(str(xml))
    assert [f[0] for f in failed] == ['tests.test_x::test_a']
    assert [e[0] for e in errors] == ['tests.test_x::test_b', 'tests.test_y::test_c']
