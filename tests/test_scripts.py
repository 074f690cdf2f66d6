"""The shell recipes run as written (on tiny generated data, shrunk by overriding flags)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SEG_SMALL = ['--seg_depth', '50', '--seg_iters', '2', '--seg_batch_size', '2', '--seg_crop_size', '64',
             '--seg_lr', '2.5e-5']


@pytest.mark.slow  # about 17 s in one process on 2 cores
def test_run_voc_sh_runs_every_step(tiny_voc, tmp_path):
    work = str(tmp_path / 'voc')
    os.makedirs(work)
    # as a new user types it: no environment activated, the recipe finds (or makes) the project's .venv
    env = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX', 'PYTHON', 'PYTHONPATH')}
    env['PATH'] = os.pathsep.join(p for p in os.environ['PATH'].split(os.pathsep)
                                  if not os.path.isfile(os.path.join(p, 'activate')))
    env.update(VOC12_ROOT=tiny_voc['root'], WORK_DIR=work, DEVICE='cpu', NUM_WORKERS='0', BACKBONE_WEIGHTS='none',
               SEG_INIT='none')
    small = ['--backbone_width', '8', '--sfc_crop_size', '64', '--sfc_batch_size', '4', '--sfc_num_epoches', '1',
             '--sfc_dc_offset', 'auto', '--sfc_select_on_gt', 'False', '--sfc_bank_samples', '2',
             '--cam_scales', '1.0', '--irn_crop_size', '96', '--irn_batch_size', '4', '--irn_num_epoches', '1',
             '--irn_crop_size_infer', '96', '--exp_times', '3', *SEG_SMALL]
    out = subprocess.run(['bash', os.path.join(ROOT, 'run_voc.sh'), *small], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.isfile(os.path.join(work, 'meta', 'train_aug.txt'))
    for f in ('eval_cam.json', 'eval_sem_seg.json', 'eval_seg.json'):
        assert 0 <= json.load(open(os.path.join(work, 'metrics', f)))['miou'] <= 1
    assert 'pseudo-mask mIoU' in out.stdout and 'segmentation model mIoU (CRF)' in out.stdout
    assert json.load(open(os.path.join(work, 'metrics', 'eval_seg.json')))['eval_list'].endswith('val.txt')
    vis = os.path.join(work, 'vis', 'train')
    assert 'contact_sheet.png' in os.listdir(vis) and os.listdir(os.path.join(vis, 'sem_seg'))
    # the header's partial run (inference and evaluation from the checkpoints there) with the VOC test export: the
    # same settings, so every finished output is reused, the evaluations rerun and the test images are exported
    test_root = tmp_path / 'VOC2012_test'
    (test_root / 'ImageSets' / 'Segmentation').mkdir(parents=True)
    import shutil
    shutil.copytree(os.path.join(tiny_voc['root'], 'JPEGImages'), test_root / 'JPEGImages')
    val = open(os.path.join(work, 'meta', 'val.txt')).read().split()
    (test_root / 'ImageSets' / 'Segmentation' / 'test.txt').write_text('\n'.join(val[:2]) + '\n')
    env.update(VOC12_TEST_ROOT=str(test_root), VIS_IMAGES='0')
    out = subprocess.run(['bash', os.path.join(ROOT, 'run_voc.sh'), '--train_sfc_pass', 'False', '--train_irn_pass',
                          'False', '--train_seg_pass', 'False', *small], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert '=== train_sfc ===' not in out.stdout and '0 to do' in out.stdout and 'pseudo-mask mIoU' in out.stdout
    assert os.path.isfile(os.path.join(work, 'voc_test_export', 'results.tar.gz'))


def test_plan_reports_every_step_and_writes_nothing(tiny_voc, tmp_path):
    """--plan True: one row per selected step with its work and a positive estimate, measured by the micro-benchmarks;
    the work directory is not even created. The same through run_voc.sh (whose lists then go to a temporary
    folder)."""
    import run_sample
    from tests.test_e2e import base_args
    work = str(tmp_path / 'never')
    steps = ['train_sfc', 'make_cam', 'eval_cam', 'cam_to_ir_label', 'train_irn', 'make_sem_seg', 'eval_sem_seg',
             'train_seg', 'make_seg', 'eval_seg']
    res = run_sample.main(base_args(tiny_voc, work, '--plan', 'True', '--run_log', 'True', '--irn_crop_size', '96',
                                    '--irn_batch_size', '2', '--seg_depth', '50', '--seg_iters', '3',
                                    '--seg_batch_size', '2', '--seg_crop_size', '64', '--irn_crop_size_infer', '96',
                                    '--seg_infer_list', os.path.join(tiny_voc['meta'], 'val.txt'),
                                    *[x for s in steps for x in (f'--{s}_pass', 'True')]))
    rows = res['plan']
    assert [r[0] for r in rows] == steps and all(r[3] > 0 for r in rows)
    assert rows[0][1].startswith('22 images, 11 steps/epoch x 2 = 22 steps of 2+2')  # 22 train_aug ids, batch 2
    assert rows[1][1].startswith('6 of 6 images to do')
    assert not os.path.exists(work)
    env = dict(os.environ, VOC12_ROOT=tiny_voc['root'], WORK_DIR=str(tmp_path / 'voc'), DEVICE='cpu',
               BACKBONE_WEIGHTS='none', SEG_INIT='none', PYTHON=sys.executable)
    small = ['--backbone_width', '8', '--sfc_crop_size', '64', '--sfc_batch_size', '4', '--sfc_num_epoches', '1',
             '--irn_crop_size', '96', '--irn_batch_size', '4', '--irn_crop_size_infer', '96', *SEG_SMALL]
    out = subprocess.run(['bash', os.path.join(ROOT, 'run_voc.sh'), *small, '--plan', 'True'], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'plan: 10 steps' in out.stdout and 'total' in out.stdout
    assert not os.path.exists(str(tmp_path / 'voc'))


def test_plan_averages_over_the_image_sizes_and_counts_the_loader_on_the_cpu(monkeypatch):
    """The planner's arithmetic against a hand computation, with a stage whose cost is a known function of the image
    area: linear scaling by the mean area over the median's, the quadratic fit through the median and the largest
    size (exact for a + b A^2 costs), and on the CPU the loader's time added to the network's (it shares the cores),
    on CUDA the slower of the two."""
    import argparse

    import numpy as np

    from misc import plan
    sizes = np.array([[10, 10], [20, 10], [20, 20], [10, 30], [40, 20]])  # areas 100 200 400 300 800
    p = plan.Planner.__new__(plan.Planner)
    p._cache = {('size', 'L', None): ((20, 10), np.zeros((20, 10, 3)), sizes, np.zeros((40, 20, 3)), None)}
    cost = lambda A: 1e-3 * A + 2e-6 * A ** 2  # noqa: E731
    monkeypatch.setattr(p, 'bench', lambda stage, width_px, height, **k: {'seconds': cost(width_px * height)})
    areas = sizes.prod(1)
    exact = 1e-3 * 360 + 2e-6 * (100 ** 2 + 200 ** 2 + 400 ** 2 + 300 ** 2 + 800 ** 2) / 5  # by hand: 0.72
    assert abs(exact - np.mean([cost(a) for a in areas])) < 1e-12
    mean, r = p.per_image('s', 'L', quadratic=True)
    assert abs(mean - exact) < 1e-9 and r['seconds'] == cost(200)
    mean, _ = p.per_image('s', 'L', quadratic=False)
    assert abs(mean - cost(200) * 360 / 200) < 1e-12
    # training steps: a network of 1 + 0.125 n s for n images (measured on 4 on the CPU, on the batch on CUDA),
    # samples of 0.01 s, batch 8, 2 loader workers: the loader's 0.08 s added on the CPU, 0.04 s beside CUDA
    monkeypatch.setattr(plan, '_sample_time', lambda ds: 0.01)
    monkeypatch.setattr(p, 'bench', lambda stage, **k: {'seconds': 0.5 * k['n'] / 4 + 1.0})  # >= 1 s: no re-run
    p.args, p.world = argparse.Namespace(num_workers=2), 1
    for cuda in (False, True):
        p.cuda = cuda
        got = p.train_step('st', 8, lambda m: {'n': m}, None)
        measured = 8 if cuda else 4
        network = (0.5 * measured / 4 + 1.0) * 8 / measured
        assert np.allclose(got, (network + 0.08, network, 0.08) if not cuda else (network, network, 0.04)), got


def test_plan_times_make_cams_own_loop_on_the_cpu(monkeypatch):
    """On the CPU make_cam is planned by timing the step's own loop (step.make_cam.cam_loop) on images picked at the
    quantiles of the sampled areas, after a warm-up image of the median area: with a stand-in loop whose every image
    costs a known function of its area on a fake clock, plus a writer drain at the end, the estimate is the mean
    over the picked images with the drain, computed here by hand."""
    import argparse

    import numpy as np

    from misc import plan
    from step import make_cam
    names = ['n0', 'n1', 'n2', 'n3', 'n4']
    sizes = np.array([[10, 10], [20, 10], [20, 20], [10, 30], [40, 20]])  # areas 100 200 400 300 800
    area = dict(zip(names, sizes.prod(1)))
    p = plan.Planner.__new__(plan.Planner)
    p.args = argparse.Namespace(infer_list='L', device='cpu', backbone_width=4, sfc_proto_bg_factor=0.8,
                                cam_fold_bn=True, channels_last='auto', dataset='voc12')
    p._cache = {('size', 'L', None): ((20, 10), None, sizes, None, names)}
    clock = [0.0]
    monkeypatch.setattr(plan.time, 'perf_counter', lambda: clock[0])
    seen = []

    def loop(model, ds, indices, device, args, folder, progress=True, on_item=None):
        for i in indices:
            seen.append(ds.names[i])
            clock[0] += 1e-3 * area[ds.names[i]]
            on_item()
        clock[0] += 0.05  # the writer's last file

    monkeypatch.setattr(make_cam, 'cam_loop', loop)
    ds = argparse.Namespace(names=['x'] + names[::-1])  # the list's order is not the sampled order
    per, k = p._cam_loop_time(ds, k=2)
    # by area: n0 100, n1 200, n3 300, n2 400, n4 800; quantiles (i + 0.5) * 5 / 2 -> positions 1 and 3 -> n1, n2;
    # warm-up: the median n3
    assert seen == ['n3', 'n1', 'n2'] and k == 2
    assert abs(per - (0.2 + 0.4 + 0.05) / 2) < 1e-12
