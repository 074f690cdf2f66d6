"""Several processes under torchrun (gloo on CPU) give what one process gives.

Training: the first update of SFC (with the image bank), IRN and DeepLab equals the one-process update bit for
bit (each micro-batch's gradient is the same, and the two ranks' halves are added in one addition either way);
later steps take the same batches and bank draws and give the same losses and weights; a rank killed mid-run and
a resume under torchrun end where an uninterrupted run ends. Inference: the outputs are byte-identical. Errors: a batch that
does not split, a list shorter than the process count, ranks started with different arguments."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import run_sample
from misc import camio
from tests.test_e2e import base_args
from tests.test_resume import curve_without_timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_thread():
    """torchrun gives each of its processes one thread (OMP_NUM_THREADS=1); the one-process runs use one too, so
    that the comparison sees the process count and not the thread count (which alone moves the float32
    reductions of a convolution)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SCRIPTED_GT = os.path.join('tests', 'helpers', 'scripted_gt.py')


def torchrun(nproc, argv, env=None, check=True, script='run_sample.py'):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
           os.path.join(ROOT, script), *argv]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def weights(path):
    return torch.load(path, weights_only=True)['net']


def relative_update_gap(before, one, two):
    """max over tensors of |update_2 - update_1| / max |update_1|, over the tensors that changed."""
    gaps = []
    for k, w0 in before.items():
        if not w0.is_floating_point():
            continue
        d1, d2 = one[k] - w0, two[k] - w0
        if d1.abs().max() > 0:
            gaps.append(float((d2 - d1).abs().max() / d1.abs().max()))
    return max(gaps), len(gaps)


@pytest.fixture(scope='module')
def short_lists(tiny_voc, tmp_path_factory):
    """A train list of exactly one global batch (4 images) and a longer one."""
    d = tmp_path_factory.mktemp('lists')
    names = open(os.path.join(tiny_voc['meta'], 'train_aug.txt')).read().split()
    paths = {}
    for k, n in (('four', 4), ('twelve', 12)):
        paths[k] = str(d / f'{k}.txt')
        with open(paths[k], 'w') as f:
            f.write('\n'.join(names[:n]) + '\n')
    return paths


def sfc_args(tiny_voc, work, train_list, *extra):
    return base_args(tiny_voc, work, '--train_list', train_list, '--sfc_batch_size', '4', '--sfc_bank_samples', '2',
                     '--sfc_micro_batch', '3', '--sfc_select_on_gt', 'False', '--sfc_lr', '0.05',
                     '--sfc_momentum', '0.9', '--train_sfc_pass', 'True', *extra)


def test_sfc_first_update_equals_one_process(tiny_voc, tmp_path, short_lists):
    one_step = ['--sfc_num_epoches', '1']  # 4 images, batch 4: one step (with 2 bank images, 6 per step)
    works = {k: str(tmp_path / k) for k in ('start', 'one', 'two')}
    run_sample.main(sfc_args(tiny_voc, works['start'], short_lists['four'], *one_step, '--sfc_lr', '0'))
    run_sample.main(sfc_args(tiny_voc, works['one'], short_lists['four'], *one_step))
    torchrun(2, sfc_args(tiny_voc, works['two'], short_lists['four'], *one_step))
    w = {k: weights(os.path.join(v, 'ckpt', camio.SFC_FINAL)) for k, v in works.items()}
    gap, n = relative_update_gap(w['start'], w['one'], w['two'])
    print(f'SFC first update, 2 processes against 1: largest relative gap {gap:.2e} over {n} tensors')
    assert n > 50 and gap == 0, gap
    r1, r2 = (torch.load(os.path.join(works[k], 'ckpt', camio.SFC_RESUME), weights_only=True) for k in ('one', 'two'))
    assert torch.equal(r1['bank']['img'], r2['bank']['img']) and torch.equal(r1['bank_rng'], r2['bank_rng'])


def test_sfc_later_steps_same_batches_bank_and_close_losses(tiny_voc, tmp_path, short_lists):
    """6 steps over 2 epochs: the same bank contents and draws, the same losses at every step and the same final
    weights, bit for bit (one thread per process and the same micro-batch split on both sides)."""
    works = {k: str(tmp_path / k) for k in ('one', 'two')}
    args = ['--sfc_num_epoches', '2']
    run_sample.main(sfc_args(tiny_voc, works['one'], short_lists['twelve'], *args))
    torchrun(2, sfc_args(tiny_voc, works['two'], short_lists['twelve'], *args))
    r1, r2 = (torch.load(os.path.join(works[k], 'ckpt', camio.SFC_RESUME), weights_only=True) for k in ('one', 'two'))
    assert r1['step'] == r2['step'] == 6
    for k in ('img', 'mask', 'label'):
        assert torch.equal(r1['bank'][k], r2['bank'][k]), k
    assert torch.equal(r1['bank_rng'], r2['bank_rng'])
    c1, c2 = (curve_without_timing(camio.scalars_path(os.path.join(works[k], 'metrics'), 'train_sfc'))
              for k in ('one', 'two'))
    assert [c['step'] for c in c1] == [c['step'] for c in c2] == list(range(1, 7))
    print('6 steps, 2 processes against 1: largest relative loss gap ' + str(max(
        abs(b[k] - a[k]) / max(abs(a[k]), 1e-6) for a, b in zip(c1, c2) for k in ('loss/cls', 'loss/pdw', 'loss/wdw'))))
    for a, b in zip(c1, c2):
        assert a['lr'] == b['lr']
        for k in ('loss/cls', 'loss/pdw', 'loss/wdw'):
            assert b[k] == a[k], (a['step'], k)
    w1, w2 = (weights(os.path.join(works[k], 'ckpt', camio.SFC_FINAL)) for k in ('one', 'two'))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.slow  # about 14 s in one process on 2 cores
def test_sfc_killed_rank_resumes_where_an_uninterrupted_run_ends(tiny_voc, tmp_path, short_lists):
    """Two processes, 6 steps, a resume file every 2 steps, GT selection validating after steps 1 and 5 with scripted
    scores that make step 1 the best (tests/helpers/scripted_gt.py): rank 1 dies before step 4; the resumed run
    ends with the uninterrupted run's bank, weights and selected checkpoint (step 1's, which only the resume state
    remembers: a resume that forgot it would select step 5)."""
    works = {k: str(tmp_path / k) for k in ('whole', 'killed')}
    args = ['--sfc_num_epoches', '2', '--sfc_ckpt_freq', '2', '--sfc_select_on_gt', 'True', '--sfc_val_list',
            short_lists['four'], '--sfc_val_freq', '4', '--sfc_val_min_step', '0']
    gt = {'SFC_TEST_GT_SCORES': '1:0.9,5:0.5'}
    torchrun(2, sfc_args(tiny_voc, works['whole'], short_lists['twelve'], *args), env=gt, script=SCRIPTED_GT)
    out = torchrun(2, sfc_args(tiny_voc, works['killed'], short_lists['twelve'], *args),
                   env={'SFC_TEST_KILL_AT_BATCH': '1:3', **gt}, check=False,
                   script=SCRIPTED_GT)  # rank 1 dies fetching step 4's batch
    assert out.returncode != 0
    state = torch.load(os.path.join(works['killed'], 'ckpt', camio.SFC_RESUME), weights_only=True)
    assert state['step'] == 2 and state['best']['step'] == 1
    assert not os.path.exists(os.path.join(works['killed'], 'ckpt', camio.SFC_FINAL))
    torchrun(2, sfc_args(tiny_voc, works['killed'], short_lists['twelve'], *args), env=gt,
             script=SCRIPTED_GT)  # resumes at step 2
    r = {k: torch.load(os.path.join(v, 'ckpt', camio.SFC_RESUME), weights_only=True) for k, v in works.items()}
    assert r['whole']['step'] == r['killed']['step'] == 6
    assert r['whole']['best']['step'] == r['killed']['best']['step'] == 1
    assert torch.equal(r['whole']['bank']['img'], r['killed']['bank']['img'])
    assert torch.equal(r['whole']['bank_rng'], r['killed']['bank_rng'])
    for name in (camio.SFC_FINAL, camio.SFC_BEST_GT, camio.SFC_WEIGHTS):
        a, b = (weights(os.path.join(v, 'ckpt', name)) for v in works.values())
        print(f'{name}: killed and resumed against uninterrupted: largest weight difference '
              f'{max(float((a[k].double() - b[k].double()).abs().max()) for k in a):.2e}')
        assert all(torch.equal(a[k], b[k]) for k in a), name
    chosen, final = (weights(os.path.join(works['killed'], 'ckpt', n)) for n in (camio.SFC_WEIGHTS, camio.SFC_FINAL))
    assert not all(torch.equal(chosen[k], final[k]) for k in chosen)  # step 1's weights, not the last ones
    # and the state is independent of the process count: one process resumes a two-process run
    res = run_sample.main(sfc_args(tiny_voc, works['killed'], short_lists['twelve'], *args))
    assert res['train_sfc']['steps'] == 6 and res['train_sfc']['best']['step'] == 1


@pytest.mark.slow  # about 10 s in one process on 2 cores
def test_irn_and_deeplab_first_update_equal_one_process(tiny_voc, tmp_path, short_lists):
    irn = ['--train_irn_pass', 'True', '--train_list', short_lists['four'], '--irn_crop_size', '96',
           '--irn_batch_size', '4', '--irn_num_epoches', '1', '--irn_micro_batch', '2', '--irn_momentum', '0.9',
           '--irn_dp_mean', 'False']
    seg = ['--train_seg_pass', 'True', '--seg_train_list', short_lists['four'], '--seg_init', 'none',
           '--seg_depth', '50', '--seg_iters', '1', '--seg_batch_size', '4', '--seg_crop_size', '64',
           '--seg_micro_batch', '2', '--seg_lr', '1e-4']
    for step_args, lr_flag, out in ((irn, '--irn_lr', camio.IRN_WEIGHTS), (seg, '--seg_lr', camio.SEG_WEIGHTS)):
        works = {k: str(tmp_path / f'{out}_{k}') for k in ('start', 'one', 'two')}
        for w in works.values():  # GT masks stand in for IR labels and pseudo masks
            for d in ('ir_label', 'sem_seg'):
                shutil.copytree(os.path.join(tiny_voc['root'], 'SegmentationClassAug'), os.path.join(w, d))
        run_sample.main(base_args(tiny_voc, works['start'], *step_args, lr_flag, '0'))
        run_sample.main(base_args(tiny_voc, works['one'], *step_args))
        torchrun(2, base_args(tiny_voc, works['two'], *step_args))
        w = {k: weights(os.path.join(v, 'ckpt', out)) for k, v in works.items()}
        gap, n = relative_update_gap(w['start'], w['one'], w['two'])
        print(f'{out} first update, 2 processes against 1: largest relative gap {gap:.2e} over {n} tensors')
        assert n > 5 and gap == 0, (out, gap)


def test_inference_steps_byte_identical(tiny_voc, tmp_path):
    from tests.test_robustness import random_sfc_checkpoint
    val = os.path.join(tiny_voc['meta'], 'val.txt')
    works = {k: str(tmp_path / k) for k in ('one', 'two')}
    torch.manual_seed(0)
    from net import deeplab, resnet50_irn
    irn = resnet50_irn.Net(8, 'none')
    seg = deeplab.build(21, 50, 8, '1x1')
    for w in works.values():
        random_sfc_checkpoint(w)
        camio.save_checkpoint({'net': irn.state_dict()}, os.path.join(w, 'ckpt', camio.IRN_WEIGHTS))
        camio.save_checkpoint({'net': seg.state_dict(), 'meta': deeplab.checkpoint_meta(seg, 'caffe')},
                              os.path.join(w, 'ckpt', camio.SEG_WEIGHTS))
    steps = ['--infer_list', val, '--make_cam_pass', 'True', '--cam_to_ir_label_pass', 'True',
             '--make_sem_seg_pass', 'True', '--make_seg_pass', 'True', '--eval_cam_pass', 'True',
             '--seg_infer_list', val, '--irn_crop_size_infer', '96', '--exp_times', '3']
    run_sample.main(base_args(tiny_voc, works['one'], *steps))
    torchrun(2, base_args(tiny_voc, works['two'], *steps))
    names = open(val).read().split()
    for d, ext in (('cam', '.npz'), ('ir_label', '.png'), ('sem_seg', '.png'), ('seg', '.png'), ('seg_nocrf', '.png')):
        for n in names:
            a, b = (open(os.path.join(works[k], d, n + ext), 'rb').read() for k in ('one', 'two'))
            assert a == b, (d, n)
    m = [json.load(open(os.path.join(works[k], 'metrics', 'eval_cam.json'))) for k in ('one', 'two')]
    assert m[0]['miou'] == m[1]['miou']  # evaluated once, on rank 0, after every rank wrote its CAMs


@pytest.mark.slow  # about 11 s in one process on 2 cores
def test_errors_name_the_problem(tiny_voc, tmp_path, short_lists):
    out = torchrun(2, sfc_args(tiny_voc, str(tmp_path / 'a'), short_lists['four'], '--sfc_batch_size', '3',
                               '--sfc_bank_samples', '2', '--sfc_num_epoches', '1'), check=False)
    assert out.returncode != 0 and 'does not split across 2 processes' in out.stderr
    one = str(tmp_path / 'one.txt')
    with open(one, 'w') as f:
        f.write(open(short_lists['four']).read().split()[0] + '\n')
    out = torchrun(2, base_args(tiny_voc, str(tmp_path / 'b'), '--infer_list', one, '--make_cam_pass', 'True'),
                   check=False)
    assert out.returncode != 0 and 'fewer than the 2 processes' in out.stderr
    wrapper = str(tmp_path / 'differ.py')  # each rank adds its own --seed: the ranks disagree
    with open(wrapper, 'w') as f:
        f.write(f'import os, runpy, sys\nsys.path.insert(0, {ROOT!r})\nos.chdir({ROOT!r})\n'
                f'sys.argv = [{os.path.join(ROOT, "run_sample.py")!r}] + sys.argv[1:] + ["--seed", os.environ["RANK"]]\n'
                f'runpy.run_path(sys.argv[0], run_name="__main__")\n')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', wrapper,
           *base_args(tiny_voc, str(tmp_path / 'c'))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode != 0 and 'different arguments (seed)' in out.stderr


# --- collectives in any memory layout, and a failing rank ------------------------------------------------------
def test_all_gather_sends_and_receives_one_memory_order(monkeypatch):
    """NCCL fills gather outputs in the wrong order, silently, when the buffers mix channels-last and contiguous
    layouts (the loader's CUDA batches are channels-last). Every buffer all_gather_cat hands the collective must
    be in one memory order; checked here with a stand-in collective that records what it is given."""
    import torch.distributed as dist

    from misc import distributed
    seen = []

    def fake_all_gather(outputs, t):
        seen.append([o.stride() for o in outputs] + [t.stride()])
        for o in outputs:
            o.copy_(t)
    monkeypatch.setattr(distributed, 'active', lambda: True)
    monkeypatch.setattr(distributed, 'world', lambda: 2)
    monkeypatch.setattr(dist, 'all_gather', fake_all_gather)
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        got = distributed.all_gather_cat(t)
        assert len(set(seen[-1])) == 1, seen[-1]  # outputs and input: the same strides
        assert torch.equal(got, torch.cat([x, x]))
        assert got.is_contiguous(memory_format=torch.channels_last) == t.is_contiguous(
            memory_format=torch.channels_last) or t.is_contiguous()


def test_collectives_give_the_right_values_in_every_layout():
    """Two gloo processes: gathers and sums of NCHW and channels-last tensors (and ranks in different layouts) equal
    what is computed locally, and the gathered tensor keeps its input's layout."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'tests', 'helpers', 'gather_layouts.py')]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.count('all equal') == 2, out.stdout + out.stderr[-3000:]


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def two_machines(failing, when):
    """Two torchrun agents of one process each, as on two machines (static rendezvous on this host)."""
    import time
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node_rank', str(n),
                               '--nproc_per_node', '1', '--master_addr', '127.0.0.1', '--master_port', port,
                               os.path.join(ROOT, 'tests', 'helpers', 'rank_fails.py'), str(failing), when],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in (0, 1)]
    t0 = time.time()
    outs = [p.communicate(timeout=240)[0] for p in procs]
    return outs, [p.returncode for p in procs], time.time() - t0


def test_a_failing_rank_stops_the_others_on_every_machine_with_its_message_once():
    """Rank 1 (on the second 'machine') stops on bad input while rank 0 is busy for 120 s in no collective: rank 0
    stops within seconds (not at its next collective, nor after the 60-minute collective timeout), both machines
    end with the failing rank's exit status, and the one-line message appears once."""
    outs, codes, secs = two_machines(1, 'busy')
    both = outs[0] + outs[1]
    print(f'a failing rank stopped the other machine in {secs:.1f} s')
    assert secs < 60, both[-3000:]
    assert both.count('error: rank 1 read a bad list (planted)') == 1, both[-3000:]
    assert 'passed the barrier' not in both and all(c != 0 for c in codes)
    assert 'exitcode  : 2' in outs[0], outs[0][-2000:]  # rank 0 ended with the failing rank's status


def test_every_rank_failing_prints_the_message_once():
    outs, codes, secs = two_machines(-1, 'late')
    both = outs[0] + outs[1]
    assert both.count('read a bad list (planted)') == 1 and secs < 60 and all(c != 0 for c in codes), both[-3000:]
