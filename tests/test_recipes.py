"""The shell recipes do what their headers say: every setting is a variable the environment can set (the seed too),
flags after the recipe's own win over both, the DeepLab recipe switch switches, and the documented partial runs
select the steps they name. The recipes run here with a stand-in interpreter (PYTHON=) that records each command
it is given instead of running it; run_sample's own parser then reads the recorded commands."""
import os
import shutil
import stat
import subprocess

import numpy as np
import pytest

import run_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDER = '''#!/usr/bin/env bash
# records its arguments (one command per record, NUL-separated) and does nothing else
printf '%s\\0' "$@" >> "$RECORD"
printf '\\n\\0' >> "$RECORD"
'''


def fake_python(tmp_path):
    """The stand-in interpreter (tmp_path/python) and the file it records into; -> (python, record)."""
    fake = tmp_path / 'python'
    fake.write_text(RECORDER)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / 'record'
    record.write_bytes(b'')
    return fake, record


def run_sample_calls(record):
    """The run_sample.py commands (argument lists) in a record, in order."""
    calls, current = [], []
    for tok in record.read_bytes().split(b'\0'):
        if tok == b'\n':
            calls.append(current)
            current = []
        elif tok:
            current.append(tok.decode())
    return [c[1:] for c in calls if c and c[0].endswith('run_sample.py')]


def recorded(tmp_path, script, *args, **env):
    """The run_sample.py commands (argument lists) a recipe issues under env, with trailing args."""
    fake, record = fake_python(tmp_path)
    work = tmp_path / 'work'
    (work / 'meta').mkdir(parents=True, exist_ok=True)
    for f in ('cls_labels.npz', 'train_aug.txt', 'train.txt', 'val.txt', 'train2014.txt', 'val2014.txt',
              'train_aug_val.txt'):
        (work / 'meta' / f).write_text('')
    base = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX')}
    base.update(PYTHON=str(fake), RECORD=str(record), WORK_DIR=str(work), VIS_IMAGES='0', DEVICE='cpu',
                VOC12_ROOT=str(tmp_path / 'voc'), COCO14_ROOT=str(tmp_path / 'coco'))
    base.update(env)
    out = subprocess.run(['bash', os.path.join(ROOT, script), *args], env=base, capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return run_sample_calls(record)


def parse(call):
    return run_sample.get_parser().parse_args(call)


def steps(args):
    return [s for s in run_sample.STEPS if getattr(args, f'{s}_pass')]


def test_run_voc_sh_defaults_environment_and_trailing_flags_in_that_order(tmp_path):
    main, = recorded(tmp_path, 'run_voc.sh')
    a = parse(main)
    assert a.seed == 10 and a.sfc_lr == 0.1 and a.exp_times == 8 and len(steps(a)) == 10
    main, = recorded(tmp_path, 'run_voc.sh', SEED='11', SFC_LR='0.05', CAM_SCALES='1.0 0.5')
    a = parse(main)
    assert a.seed == 11 and a.sfc_lr == 0.05 and a.cam_scales == [1.0, 0.5]
    main, = recorded(tmp_path, 'run_voc.sh', '--sfc_lr', '0.07', '--seed', '12', SEED='11', SFC_LR='0.05')
    a = parse(main)
    assert a.sfc_lr == 0.07 and a.seed == 12


def test_run_voc_sh_seg_recipe_switch_switches(tmp_path):
    """SEG_RECIPE=deeplab_coco gets deeplab-pytorch's batch, iterations, loss and scales (the recipe owns them), and a
    value the user sets still wins over the recipe."""
    def resolved(call):
        a = run_sample.finalize_args(parse(call + ['--plan', 'True']))
        return a.seg_batch_size, a.seg_iter_size, a.seg_iters, a.seg_loss, a.seg_scale_mode, a.seg_init
    main, = recorded(tmp_path, 'run_voc.sh')
    assert resolved(main) == (10, 1, 30000, 'balanced', 'uniform', 'imagenet')
    main, = recorded(tmp_path, 'run_voc.sh', SEG_RECIPE='deeplab_coco', SEG_INIT='/w/deeplab.pth')
    assert resolved(main) == (5, 2, 20000, 'ce', 'choice', '/w/deeplab.pth')
    main, = recorded(tmp_path, 'run_voc.sh', SEG_RECIPE='deeplab_coco', SEG_ITERS='500')
    assert resolved(main)[2] == 500


def test_run_voc_sh_documented_partial_runs(tmp_path):
    main, = recorded(tmp_path, 'run_voc.sh', '--train_sfc_pass', 'False', '--train_irn_pass', 'False',
                     '--train_seg_pass', 'False', '--sfc_weights', '/w/res50_sfc.pth')
    a = parse(main)
    assert steps(a) == ['make_cam', 'eval_cam', 'cam_to_ir_label', 'make_sem_seg', 'eval_sem_seg', 'make_seg',
                        'eval_seg'] and a.sfc_weights == '/w/res50_sfc.pth'
    main, = recorded(tmp_path, 'run_voc.sh', '--train_irn_pass', 'False', '--make_sem_seg_pass', 'False',
                     '--eval_sem_seg_pass', 'False', '--train_seg_pass', 'False', '--make_seg_pass', 'False',
                     '--eval_seg_pass', 'False')
    assert steps(parse(main)) == ['train_sfc', 'make_cam', 'eval_cam', 'cam_to_ir_label']
    test_root = tmp_path / 'VOC2012_test'
    main, export = recorded(tmp_path, 'run_voc.sh', VOC12_TEST_ROOT=str(test_root))
    e = parse(export)
    assert steps(e) == ['make_seg'] and e.seg_export_voc_test and e.seg_infer_root == str(test_root)


def test_run_coco_sh_environment_and_trailing_flags(tmp_path):
    main, = recorded(tmp_path, 'run_coco.sh')
    a = parse(main)
    assert a.dataset == 'coco14' and a.seed == 15 and a.seg_iters == 100000
    main, = recorded(tmp_path, 'run_coco.sh', '--seg_iters', '7', SEED='16', SEG_ITERS='50000')
    a = parse(main)
    assert a.seed == 16 and a.seg_iters == 7


def test_run_demo_sh_environment_and_flags_after_the_separator(tmp_path):
    calls = recorded(tmp_path, 'run_demo.sh', str(tmp_path / 'demo'))
    assert len(calls) == 3 and all(parse(c).seed == 10 for c in calls)
    assert parse(calls[2]).seg_iters == 300
    calls = recorded(tmp_path, 'run_demo.sh', str(tmp_path / 'demo'), '--', '--sfc_lr', '0.05', '--seg_iters', '9',
                     SEED='11', SEG_ITERS='600')
    assert all(parse(c).seed == 11 and parse(c).sfc_lr == 0.05 for c in calls)
    assert parse(calls[2]).seg_iters == 9
    calls = recorded(tmp_path, 'run_demo.sh', str(tmp_path / 'demo'), SEG_ITERS='600')
    assert parse(calls[2]).seg_iters == 600
    # DeepLab's crops: not rescaled in the demo, the recipe's [0.5, 2.0] in --quick; two words from the environment
    assert parse(calls[2]).seg_scales == [1.0, 1.0]
    calls = recorded(tmp_path, 'run_demo.sh', str(tmp_path / 'demo'), SEG_SCALES='0.75 1.5')
    assert parse(calls[2]).seg_scales == [0.75, 1.5]
    calls = recorded(tmp_path, 'run_demo.sh', '--quick', str(tmp_path / 'demo_quick'))
    assert parse(calls[2]).seg_scales == [0.5, 2.0] and parse(calls[2]).seg_iters == 200


def test_run_demo_sh_full_makes_pseudo_masks_for_train_aug_and_trains_deeplab_there(tmp_path):
    """The demo makes pseudo masks for train and val and trains DeepLab on train; --full, as the paper, makes them for
    train_aug and val and trains DeepLab on train_aug, with 900 updates instead of 300. IRN trains on train and val in
    both."""
    meta = str(tmp_path / 'work' / 'meta')
    for full, infer, seg_train in ((False, 'trainval.txt', 'train.txt'), (True, 'train_aug_val.txt', 'train_aug.txt')):
        sfc, cams, seg = recorded(tmp_path, 'run_demo.sh', *(['--full'] if full else []))
        c, d = parse(cams), parse(seg)
        assert c.infer_list == os.path.join(meta, infer) and c.train_list == os.path.join(meta, 'trainval.txt')
        assert d.seg_train_list == os.path.join(meta, seg_train) and d.seg_iters == (900 if full else 300)
        assert parse(sfc).train_list == os.path.join(meta, 'train_aug.txt')
    *_, seg = recorded(tmp_path, 'run_demo.sh', '--full', SEG_ITERS='450')  # the environment wins over --full's 900
    assert parse(seg).seg_iters == 450
    out = subprocess.run(['bash', os.path.join(ROOT, 'run_demo.sh'), '--quick', '--full'], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and '--quick and --full' in out.stderr


def test_stage_study_full_gt_oracle_trains_on_the_gt_of_train_aug(tmp_path, monkeypatch):
    """With --full the seg_gt oracle copies the GT of every train_aug image (VOC train's from SegmentationClass, the
    others' from SegmentationClassAug) and hands run_demo.sh --full that copy."""
    from misc import camio
    from tools import stage_study
    fake, record = fake_python(tmp_path)
    monkeypatch.setenv('PYTHON', str(fake))
    monkeypatch.setenv('RECORD', str(record))
    run = tmp_path / 'b_s10'
    (run / 'meta').mkdir(parents=True)
    (run / 'meta' / 'train.txt').write_text('t1\n')
    (run / 'meta' / 'train_aug.txt').write_text('a1\nt1\n')
    (run / 'meta' / 'train_aug_val.txt').write_text('a1\nt1\nv1\n')
    (run / 'meta' / 'cls_labels.npz').write_text('')
    voc = run / 'VOC2012'
    masks = {'t1': 3, 'a1': 7}
    for n, v in masks.items():
        folder = voc / ('SegmentationClass' if n.startswith('t') else 'SegmentationClassAug')
        folder.mkdir(parents=True, exist_ok=True)
        camio.write_label(str(folder / f'{n}.png'), np.full((4, 5), v, np.uint8))
    stage_study.run_oracle(str(run), 'seg_gt', 'b', 10, {}, full=True)
    gt = tmp_path / 'b_s10_seg_gt' / 'gt_masks'
    assert {n: int(camio.read_label(camio.label_path(str(gt), n)).max()) for n in masks} == masks
    a, = [parse(c) for c in run_sample_calls(record)]  # PARTS=seg: DeepLab's call alone
    assert a.train_seg_pass
    assert a.seg_label_dir == str(gt) and a.seg_train_list.endswith('train_aug.txt')
    stage_study.run_oracle(str(run), 'seg_x2', 'b', 10, {}, full=True)  # twice the updates of --full, not the demo's
    *_, x2 = [parse(c) for c in run_sample_calls(record)]
    assert x2.seg_label_dir == str(run / 'sem_seg') and x2.seg_iters == 1800
    monkeypatch.setenv('SEG_ITERS', '450')  # the run got its updates from the environment: the oracle doubles those
    shutil.rmtree(tmp_path / 'b_s10_seg_x2')
    stage_study.run_oracle(str(run), 'seg_x2', 'b', 10, {}, full=True)
    assert parse(run_sample_calls(record)[-1]).seg_iters == 900


def test_stage_study_coco_runs_and_gt_oracle(tmp_path):
    """tools.stage_study's coco set: run_coco.sh at the demo's DeepLab settings, and its seg_gt oracle runs only
    DeepLab, on the copied GT of train2014 (flags after run_coco.sh's own win)."""
    from tools import stage_study
    flags = stage_study.coco_flags({}) + ['--seed', '10']
    run, = recorded(tmp_path, 'run_coco.sh', *flags)
    a = parse(run)
    assert (a.seg_iters, a.seg_lr, a.seg_scales, a.seg_crop_size, a.sfc_num_epoches) == (300, 5e-3, [1.0, 1.0], 129, 6)
    assert a.train_sfc_pass and a.seg_label_dir.endswith('ir_label')
    oracle, = recorded(tmp_path, 'run_coco.sh', *flags, '--seg_label_dir', str(tmp_path / 'gt'), *stage_study.COCO_SKIP)
    o = parse(oracle)
    assert steps(o) == ['train_seg', 'make_seg', 'eval_seg'] and o.seg_label_dir == str(tmp_path / 'gt')
    assert (o.seg_iters, o.seg_scales, o.seed) == (300, [1.0, 1.0], 10)


def test_stage_study_reuses_a_finished_oracle_only_while_its_run_is_the_same(tmp_path, monkeypatch):
    """A finished oracle goes to the pipeline again while the run it copied from keeps its step records; once the
    run was made anew (another record digest), the oracle stops and names the step instead of reusing old copies."""
    from misc import camio, provenance
    from misc.errors import InputError
    from tools import stage_study
    fake, record = fake_python(tmp_path)
    monkeypatch.setenv('PYTHON', str(fake))
    monkeypatch.setenv('RECORD', str(record))
    run = tmp_path / 'a_s10'
    (run / 'meta').mkdir(parents=True)
    for f in ('train.txt', 'cls_labels.npz'):
        (run / 'meta' / f).write_text('')
    camio.save_json(provenance.record_path(str(run), 'train_sfc'), {'digest': 'd1'})
    stage_study.run_oracle(str(run), 'seg_crf', 'a', 10, {})
    oracle = tmp_path / 'a_s10_seg_crf'
    (oracle / 'metrics').mkdir()
    (oracle / 'metrics' / 'eval_seg.json').write_text('{"miou": 0.5}')
    stage_study.run_oracle(str(run), 'seg_crf', 'a', 10, {})
    assert len(run_sample_calls(record)) == 2  # finished, same run: handed to the pipeline again
    camio.save_json(provenance.record_path(str(run), 'train_sfc'), {'digest': 'd2'})
    with pytest.raises(InputError, match='train_sfc'):
        stage_study.run_oracle(str(run), 'seg_crf', 'a', 10, {})
    assert len(run_sample_calls(record)) == 2 and (oracle / 'metrics' / 'eval_seg.json').is_file()


def test_stage_study_hands_a_finished_run_to_the_pipeline_and_names_why_it_stopped(tmp_path, monkeypatch):
    """A folder that already holds a finished run is not reused on sight: the recipe runs again, so that the
    pipeline's records decide (reuse where the settings match, stop naming the flag where one changed), and that
    stop reaches the user with the pipeline's own line."""
    from misc.errors import InputError
    from tools import stage_study
    fake, record = fake_python(tmp_path)
    monkeypatch.setenv('PYTHON', str(fake))
    monkeypatch.setenv('RECORD', str(record))
    monkeypatch.setenv('VIS_IMAGES', '0')
    work = tmp_path / 'a_s10'
    (work / 'metrics').mkdir(parents=True)
    (work / 'metrics' / 'eval_seg.json').write_text('{}')
    stage_study.run_one(str(work), 'a', 0, 10, False, {'SEG_ITERS': '7'})
    calls = [parse(c) for c in run_sample_calls(record)]
    assert calls and all(c.seed == 10 for c in calls) and calls[-1].seg_iters == 7
    assert (tmp_path / 'a_s10.log').read_text().startswith('\n===== ')
    stop = ('train_seg: the outputs in x were made with other settings: --seg_iters 300 -> 7; to keep them, give '
            'this run another --work_dir')
    fake.write_text(f'#!/usr/bin/env bash\necho "{stop}" >&2\nexit 1\n')
    with pytest.raises(InputError) as e:
        stage_study.run_one(str(work), 'a', 0, 10, False, {'SEG_ITERS': '7'})
    assert stop in str(e.value) and str(tmp_path / 'a_s10.log') in str(e.value)
    assert (tmp_path / 'a_s10.log').read_text().count('===== ') == 2  # the first attempt's log is kept


@pytest.mark.parametrize('asked', [64])
def test_loader_workers_are_capped_at_the_process_share_of_the_cores(asked):
    from misc import distributed
    a = run_sample.finalize_args(parse(['--num_workers', str(asked), '--device', 'cpu', '--plan', 'True']))
    assert a.num_workers == distributed.cpu_share() and a.num_workers_asked == asked
    a = run_sample.finalize_args(parse(['--num_workers', '1', '--device', 'cpu', '--plan', 'True']))
    assert a.num_workers == 1 and not getattr(a, 'num_workers_asked', None)


# --- the documented pipeline commands run ------------------------------------------------------------------------
def doc_block(path, heading):
    """The first bash block after `heading` in a docs page."""
    import re
    text = open(os.path.join(ROOT, path), encoding='utf-8').read()
    return re.search(r'```bash\n(.*?)```', text[text.index(heading):], re.S).group(1)


def test_the_authors_checkpoint_route_runs_as_documented(tiny_voc, tmp_path):
    """docs/data.md's commands (README shows the same) on generated data, with checkpoints saved in the authors' own
    formats (966 SFC keys in {'net': ...}; 1 056 raw IRN keys): lists, CAMs and their score, pseudo masks and their
    score, in a work directory of their own. Only sizes are added (a width-8 network, small scales)."""
    import shlex
    import sys

    import torch

    from net import resnet50_irn, resnet50_sfc
    from tests.test_irn import authors_irn_state_dict
    from tests.test_resnet50_sfc import authors_state_dict
    block = doc_block('docs/data.md', "## The authors' checkpoints")
    assert block == doc_block('README.md', "The authors' checkpoints")
    torch.manual_seed(0)
    best, irn = str(tmp_path / 'best.pth'), str(tmp_path / 'irn.pth')
    torch.save({'net': authors_state_dict(resnet50_sfc.Net(21, backbone_width=8))}, best)
    torch.save(authors_irn_state_dict(resnet50_irn.Net(8)), irn)
    work = str(tmp_path / 'work' / 'authors')
    sizes = ['--backbone_width', '8', '--cam_scales', '1.0', '0.5', '--irn_crop_size_infer', '96', '--device', 'cpu',
             '--num_workers', '0']
    for cmd in block.replace('\\\n', ' ').strip().splitlines():
        cmd = cmd.replace('$VOC12_ROOT', tiny_voc['root']).replace('work/authors', work)
        cmd = cmd.replace('best.pth', best).replace('irn.pth', irn)
        argv = shlex.split(cmd)
        assert argv[0] == 'python'
        argv = [sys.executable] + argv[1:] + (sizes if 'run_sample.py' in argv[1] else [])
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (cmd, out.stderr[-2000:])
    import json
    for f in ('eval_cam.json', 'eval_sem_seg.json'):
        m = json.load(open(os.path.join(work, 'metrics', f)))
        assert m['n_images'] == len(open(os.path.join(work, 'meta', 'train.txt')).read().split())
