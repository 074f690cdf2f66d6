"""Failure modes through the command line: out of memory, renamed checkpoint keys, a non-finite
loss, CAM files that disagree with the labels. Each error must name the item and what to do."""
import os
import shutil

import numpy as np
import pytest
import torch

import run_sample
from misc import camio
from misc.torchutils import OutOfMemory, explain_oom, is_out_of_memory
from net import resnet50_irn, resnet50_sfc, sfc_loss
from step import make_sem_seg
from tests.test_e2e import base_args


def real_cpu_oom():
    """The CPU allocator's own error: 1 PiB cannot be allocated."""
    torch.empty(2 ** 50, dtype=torch.uint8)


def random_sfc_checkpoint(work, n_cls=21):
    torch.manual_seed(0)
    net = resnet50_sfc.Net(n_cls, backbone_width=8, backbone_weights='none')
    path = os.path.join(work, 'ckpt', camio.SFC_WEIGHTS)
    camio.save_checkpoint({'net': net.state_dict()}, path)
    return path


def val_names(tiny_voc):
    return open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()


def test_out_of_memory_is_recognised_and_explained():
    with pytest.raises(RuntimeError) as e:
        real_cpu_oom()
    assert is_out_of_memory(e.value)
    assert is_out_of_memory(torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB'))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError('size mismatch'))
    with pytest.raises(OutOfMemory, match=r'^make_cam, image x: out of memory on cpu \(.*can.t allocate.*\)\. lower y$'):
        with explain_oom('make_cam, image x', 'lower y', 'cpu'):
            real_cpu_oom()
    with pytest.raises(ValueError, match='unrelated'):  # other errors pass through untouched
        with explain_oom('where', 'advice'):
            raise ValueError('unrelated')


def test_make_cam_out_of_memory_names_image_and_flag_and_keeps_done(tiny_voc, tmp_path, monkeypatch):
    work = str(tmp_path / 'w')
    random_sfc_checkpoint(work)
    real_forward = resnet50_sfc.CAM.forward
    seen = []

    def forward(self, x, label):
        if len(seen) == 2 * 2:  # one forward per scale (image and flip batched): the third image fails
            real_cpu_oom()
        seen.append(1)
        return real_forward(self, x, label)
    monkeypatch.setattr(resnet50_sfc.CAM, 'forward', forward)
    with pytest.raises(OutOfMemory) as e:
        run_sample.main(base_args(tiny_voc, work, '--make_cam_pass', 'True'))
    msg = str(e.value)
    done = sorted(f[:-4] for f in os.listdir(os.path.join(work, 'cam')) if f.endswith('.npz'))
    names = val_names(tiny_voc)
    assert done == sorted(names[:2])
    assert f'image {names[2]} (' in msg and '--cam_scales' in msg and 'more memory' in msg
    assert 'out of memory on cpu' in msg and 'continues after them' in msg
    monkeypatch.setattr(resnet50_sfc.CAM, 'forward', real_forward)
    res = run_sample.main(base_args(tiny_voc, work, '--make_cam_pass', 'True'))
    assert res['make_cam']['computed'] == len(names) - 2

    irn = resnet50_irn.EdgeDisplacement(backbone_width=8, backbone_weights='none')
    camio.save_checkpoint({'net': irn.state_dict()}, os.path.join(work, 'ckpt', camio.IRN_WEIGHTS))
    monkeypatch.setattr(make_sem_seg, 'transition_matrix_sparse', lambda *a: real_cpu_oom())
    with pytest.raises(OutOfMemory, match=rf'make_sem_seg, image {names[0]} \(.*--sem_seg_radius'):
        run_sample.main(base_args(tiny_voc, work, '--make_sem_seg_pass', 'True', '--irn_crop_size_infer', '96'))


def test_training_out_of_memory_points_at_micro_batch(tiny_voc, tmp_path, monkeypatch):
    def oom(*a, **k):
        real_cpu_oom()
    monkeypatch.setattr(sfc_loss, 'classification_loss', oom)
    with pytest.raises(OutOfMemory, match=r'train_sfc, step 0 .*--sfc_micro_batch \(now 10;'):
        run_sample.main(base_args(tiny_voc, str(tmp_path / 'w'), '--train_sfc_pass', 'True',
                                  '--sfc_select_on_gt', 'False'))
    monkeypatch.setattr(resnet50_irn, 'irn_training_loss', oom)
    work = str(tmp_path / 'irn')
    shutil.copytree(os.path.join(tiny_voc['root'], 'SegmentationClass'), os.path.join(work, 'ir_label'))
    with pytest.raises(OutOfMemory, match=r'train_irn, step 0 .*--irn_micro_batch \(now 8;'):
        run_sample.main(base_args(tiny_voc, work, '--train_irn_pass', 'True', '--train_list',
                                  os.path.join(tiny_voc['meta'], 'val.txt'), '--irn_crop_size', '96',
                                  '--irn_batch_size', '2'))


def test_checkpoint_with_a_renamed_key_names_both_keys(tiny_voc, tmp_path):
    work = str(tmp_path / 'w')
    path = random_sfc_checkpoint(work)
    sd = torch.load(path, weights_only=True)['net']
    sd['classifier.weights'] = sd.pop('classifier.weight')
    camio.save_checkpoint({'net': sd}, path)
    with pytest.raises(ValueError, match=r'(?s)res50_sfc.pth does not match.*missing tensors \(1\): classifier\.weight\n'
                                         r'.*unexpected tensors \(1\): classifier\.weights'):
        run_sample.main(base_args(tiny_voc, work, '--make_cam_pass', 'True'))

    irn = resnet50_irn.EdgeDisplacement(backbone_width=8, backbone_weights='none').state_dict()
    key = 'fc_edge6.weight'
    irn[key + '_renamed'] = irn.pop(key)
    irn_path = os.path.join(work, 'ckpt', camio.IRN_WEIGHTS)
    camio.save_checkpoint({'net': irn}, irn_path)
    with pytest.raises(ValueError, match=rf'(?s)res50_irn.pth.*missing.*{key}.*unexpected.*{key}_renamed'):
        run_sample.main(base_args(tiny_voc, work, '--make_sem_seg_pass', 'True'))


def test_non_finite_loss_stops_and_keeps_last_good_state(tiny_voc, tmp_path, monkeypatch):
    real = sfc_loss.classification_loss
    calls = []

    def loss(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        return out * float('nan') if len(calls) > 3 else out  # one call per step with 2 + 2 images
    monkeypatch.setattr(sfc_loss, 'classification_loss', loss)
    work = str(tmp_path / 'w')
    with pytest.raises(FloatingPointError, match=r'train_sfc: non-finite loss at step 3\b.*sfc_resume\.pth.*--sfc_lr'):
        run_sample.main(base_args(tiny_voc, work, '--train_sfc_pass', 'True', '--sfc_select_on_gt', 'False',
                                  '--sfc_ckpt_freq', '2'))
    state = torch.load(os.path.join(work, 'ckpt', camio.SFC_RESUME), weights_only=True)
    assert state['step'] == 2 and all(torch.isfinite(v).all() for v in state['net'].values() if v.is_floating_point())
    assert not os.path.exists(os.path.join(work, 'ckpt', camio.SFC_WEIGHTS))


def test_cam_keys_disagreeing_with_labels(tiny_voc, tmp_path):
    work = str(tmp_path / 'w')
    random_sfc_checkpoint(work)
    run_sample.main(base_args(tiny_voc, work, '--make_cam_pass', 'True'))
    z = np.load(os.path.join(tiny_voc['meta'], 'cls_labels.npz'))
    names, labels = z['names'], z['labels'].copy()
    victim = val_names(tiny_voc)[1]
    i = list(names).index(victim)
    labels[i] = 1 - labels[i]
    bad = str(tmp_path / 'cls_labels.npz')
    np.savez(bad, names=names, labels=labels)
    with pytest.raises(ValueError, match=rf'CAM file of {victim}: keys .* disagree with the image labels'):
        run_sample.main(base_args(tiny_voc, work, '--eval_cam_pass', 'True', '--cls_labels', bad))


def test_tensorboard_flag(tiny_voc, tmp_path):
    import importlib.util
    work = str(tmp_path / 'w')
    args = base_args(tiny_voc, work, '--train_sfc_pass', 'True', '--sfc_select_on_gt', 'False',
                     '--sfc_num_epoches', '1', '--tensorboard', 'True')
    if importlib.util.find_spec('tensorboard') is None:
        with pytest.raises(RuntimeError, match='pip install tensorboard'):
            run_sample.main(args)
    else:
        run_sample.main(args)
        tb = os.path.join(work, 'tb', 'train_sfc')
        assert any(f.startswith('events.out.tfevents') for f in os.listdir(tb))


def test_list_shorter_than_one_batch(tiny_voc, tmp_path):
    with pytest.raises(ValueError, match=r'train_aug\.txt has 22 images, fewer than one batch \(--sfc_batch_size 100\)'):
        run_sample.main(base_args(tiny_voc, str(tmp_path / 'w'), '--train_sfc_pass', 'True', '--sfc_batch_size', '100'))


def test_a_block_that_stops_on_an_error_still_finishes_the_submitted_writes(tmp_path):
    """misc.workpool.Background: jobs submitted before the block raises (the writes of work already computed) are
    completed before the error leaves the block (the pool is not shut down with its queue cancelled), and the error
    is the block's own, not a job's."""
    import threading

    from misc.workpool import Background
    release = threading.Event()

    def slow_write(path):
        release.wait(10)  # still queued or running when the block raises
        with open(path, 'w') as f:
            f.write('done')
    paths = [tmp_path / f'{i}.txt' for i in range(3)]
    with pytest.raises(KeyError, match='the block'):
        with Background(1, 'thread', ahead=3) as pool:  # make_cam's writer, room for the three jobs
            for p in paths:
                pool.submit(slow_write, str(p))
            # the first job waits for the release, the other two are still queued when the block raises
            threading.Timer(0.5, release.set).start()
            raise KeyError('the block')
    assert all(p.read_text() == 'done' for p in paths)
