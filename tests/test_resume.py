"""A killed train_sfc / train_irn / make_cam resumes and ends exactly where an uninterrupted run ends."""
import os
import shutil

import numpy as np
import pytest
import torch

import run_sample
from misc import camio
from misc.torchutils import PolyOptimizer
from tests.test_e2e import base_args


class Killed(Exception):
    pass


def run_killed_at(monkeypatch, global_step, argv):
    """run_sample.main(argv), killed just before the optimizer step `global_step`."""
    real_step = PolyOptimizer.step

    def dying_step(self, closure=None):
        if self.global_step == global_step:
            raise Killed()
        return real_step(self, closure)
    monkeypatch.setattr(PolyOptimizer, 'step', dying_step)
    with pytest.raises(Killed):
        run_sample.main(argv)
    monkeypatch.setattr(PolyOptimizer, 'step', real_step)


def curve_without_timing(path):
    """The lines of a training curve without the wall-clock entries (time/*), which differ between runs."""
    import json
    return [{k: v for k, v in json.loads(line).items() if not k.startswith('time/')} for line in open(path)]


def assert_same_weights(path_a, path_b):
    a, b = (torch.load(p, weights_only=True)['net'] for p in (path_a, path_b))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_sfc_resume_is_exact(tiny_voc, tmp_path, monkeypatch):
    """11 steps, a resume file every 4, GT selection validating after steps 1 and 9 with scripted scores that make
    step 1 the best (tests/helpers/scripted_gt.py), killed before step 7: the resumed run ends with the
    uninterrupted run's loss log, final weights and selected checkpoint (step 1's, which only the resume state
    remembers: a resume that forgot it would select step 9)."""
    from tests.helpers import scripted_gt
    scripted_gt.install({1: 0.9, 9: 0.5}, monkeypatch.setattr)
    common = ['--train_sfc_pass', 'True', '--sfc_ckpt_freq', '4', '--sfc_num_epoches', '1',
              '--sfc_select_on_gt', 'True', '--sfc_val_list', os.path.join(tiny_voc['meta'], 'val.txt'),
              '--sfc_val_freq', '8', '--sfc_val_min_step', '0']
    full = str(tmp_path / 'full')
    run_sample.main(base_args(tiny_voc, full, *common))

    part = str(tmp_path / 'part')
    run_killed_at(monkeypatch, 6, base_args(tiny_voc, part, *common))  # after the resume checkpoint of step 4
    state = torch.load(os.path.join(part, 'ckpt', camio.SFC_RESUME), weights_only=True)
    assert state['step'] == 4 and state['best']['step'] == 1
    res = run_sample.main(base_args(tiny_voc, part, *common))
    assert res['train_sfc']['best']['step'] == 1 and res['train_sfc']['weights'] == camio.SFC_BEST_GT

    # the loss log of the resumed run reads as if it had never stopped (lines after step 4 were dropped)
    logs = [curve_without_timing(camio.scalars_path(os.path.join(w, 'metrics'), 'train_sfc')) for w in (full, part)]
    assert logs[0] == logs[1] and len(logs[0]) == 11 + 2  # 11 steps and 2 validations
    for name in (camio.SFC_FINAL, camio.SFC_BEST_GT, camio.SFC_WEIGHTS):
        assert_same_weights(*(os.path.join(w, 'ckpt', name) for w in (full, part)))
    with pytest.raises(AssertionError):  # the selected weights are step 1's, not the last ones
        assert_same_weights(*(os.path.join(part, 'ckpt', n) for n in (camio.SFC_WEIGHTS, camio.SFC_FINAL)))


def test_train_irn_resume_is_exact(tiny_voc, tmp_path, monkeypatch):
    val = os.path.join(tiny_voc['meta'], 'val.txt')
    common = ['--train_irn_pass', 'True', '--train_list', val, '--irn_crop_size', '96', '--irn_batch_size', '2',
              '--irn_num_epoches', '2', '--irn_ckpt_freq', '2']
    works = {}
    for run in ('full', 'part'):  # the GT masks stand in for IR labels
        works[run] = str(tmp_path / run)
        shutil.copytree(os.path.join(tiny_voc['root'], 'SegmentationClass'), os.path.join(works[run], 'ir_label'))
    run_sample.main(base_args(tiny_voc, works['full'], *common))

    run_killed_at(monkeypatch, 3, base_args(tiny_voc, works['part'], *common))  # after the checkpoint of step 2
    assert torch.load(os.path.join(works['part'], 'ckpt', camio.IRN_RESUME), weights_only=True)['step'] == 2
    assert not os.path.exists(os.path.join(works['part'], 'ckpt', camio.IRN_WEIGHTS))
    res = run_sample.main(base_args(tiny_voc, works['part'], *common))
    assert res['train_irn']['steps'] == 6
    assert_same_weights(*(os.path.join(w, 'ckpt', camio.IRN_WEIGHTS) for w in works.values()))


def test_make_cam_resume_skips_done_and_redoes_truncated(tiny_voc, tmp_path, monkeypatch):
    work = str(tmp_path / 'w')
    run_sample.main(base_args(tiny_voc, work, '--train_sfc_pass', 'True', '--sfc_select_on_gt', 'False',
                              '--sfc_num_epoches', '1'))
    real_save = camio.save_cam
    calls = []

    def dying_save(path, *a):
        if len(calls) == 3:
            raise Killed()
        calls.append(path)
        return real_save(path, *a)
    monkeypatch.setattr(camio, 'save_cam', dying_save)
    with pytest.raises(Killed):
        run_sample.main(base_args(tiny_voc, work, '--make_cam_pass', 'True'))
    monkeypatch.setattr(camio, 'save_cam', real_save)
    cam_dir = os.path.join(work, 'cam')
    assert len([f for f in os.listdir(cam_dir) if f.endswith('.npz')]) == 3
    assert not [f for f in os.listdir(cam_dir) if f.endswith('.tmp')]
    # a truncated file (as a crash of another writer would leave) is recomputed, not read
    victim = calls[0]
    data = open(victim, 'rb').read()
    open(victim, 'wb').write(data[:100])
    res = run_sample.main(base_args(tiny_voc, work, '--make_cam_pass', 'True'))
    assert res['make_cam']['computed'] == 6 - 3 + 1

    ref = str(tmp_path / 'ref')
    os.makedirs(os.path.join(ref, 'ckpt'))
    res = run_sample.main(base_args(tiny_voc, ref, '--make_cam_pass', 'True', '--sfc_weights',
                                    os.path.join(work, 'ckpt', camio.SFC_WEIGHTS)))
    for f in os.listdir(cam_dir):
        x, y = camio.load_cam(os.path.join(cam_dir, f)), camio.load_cam(os.path.join(ref, 'cam', f))
        for k in camio.CAM_KEYS:
            np.testing.assert_array_equal(x[k], y[k])


def test_fp16_resume_keeps_the_loss_scale(tiny_voc, tmp_path, monkeypatch):
    """--amp fp16 (CPU autocast and the CPU loss scaler): the scaler starts far too high (2^40), so early steps
    overflow, are skipped and halve the scale. The resume file keeps the scale, so a run killed after its step-4
    checkpoint and resumed ends with the weights and scale of an uninterrupted run (restarting the scale at 2^40
    would skip the resumed steps again)."""
    from misc import torchutils
    real = torch.amp.GradScaler

    def high_scaler(amp, device):
        return real(torch.device(device).type, init_scale=2.0 ** 40, enabled=amp == 'fp16')
    monkeypatch.setattr(torchutils, 'grad_scaler', high_scaler)
    import step.train_sfc as train_sfc
    monkeypatch.setattr(train_sfc, 'grad_scaler', high_scaler)
    common = ['--train_sfc_pass', 'True', '--sfc_ckpt_freq', '4', '--sfc_select_on_gt', 'False', '--sfc_num_epoches', '1',
              '--amp', 'fp16']
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    run_sample.main(base_args(tiny_voc, full, *common))
    from misc.trainutils import DataWait
    real_next = DataWait.next

    def dying_next(self):  # killed when asking for step 6's batch (skipped steps never reach the optimizer)
        if self.count == 6:
            raise Killed()
        return real_next(self)
    monkeypatch.setattr(DataWait, 'next', dying_next)
    with pytest.raises(Killed):
        run_sample.main(base_args(tiny_voc, part, *common))
    monkeypatch.setattr(DataWait, 'next', real_next)
    saved = torch.load(os.path.join(part, 'ckpt', camio.SFC_RESUME), weights_only=True)
    assert saved['step'] == 4 and saved['scaler']['scale'] < 2.0 ** 40  # some steps overflowed and were skipped
    run_sample.main(base_args(tiny_voc, part, *common))
    states = [torch.load(os.path.join(w, 'ckpt', camio.SFC_RESUME), weights_only=True) for w in (full, part)]
    assert states[0]['scaler'] == states[1]['scaler']
    assert_same_weights(*(os.path.join(w, 'ckpt', camio.SFC_FINAL) for w in (full, part)))
