"""Does each stage rise, on data nobody tuned on? The demo recipe (run_demo.sh) run on several generated sets and
seeds, and the paper's stage table (misc.stages) as mean and spread over the seeds, per set.

    python -m tools.stage_study                               # the reported sets, seeds 10 and 11 (about 2 hours)
    python -m tools.stage_study --sets tune --seeds 10        # the tuning set only (settings are chosen on it)
    python -m tools.stage_study --sets a:a:0 b:b:0 --quick    # the quick miniature
    python -m tools.stage_study --sets b --full --work_dir work/stage_study_full   # run_demo.sh --full

A set is NAME:VARIANT:DATA_SEED (voc12.synthetic's variant and seed); the names below are the defaults:
    tune   a, data seed 1   the set the demo's settings were chosen on; never reported
    a      a, data seed 0   the demo's own set, held out from the tuning
    b      b, data seed 0   another long tail, other head/tail pairs and appearances
    c      c, data seed 0   textured, shaded, larger objects on backgrounds in their colours, partial occlusion
    d      d, data seed 0   many small overlapping blobs, pairs told apart by a hue shift, a horizon behind them
    coco   run_coco.sh at the demo's scale on a generated COCO-format set (20 classes, 1 000 train2014 and 200 val2014
           images of 160-240 px): CAMs and CRF labels scored on train2014, DeepLab on val2014
Each run lives in <work_dir>/<set>_s<seed>/, its log beside it. A re-run hands every run (and oracle) to the pipeline
again: it reuses the steps made with the same settings and stops, naming the flag that changed, where a setting
differs (another --work_dir, or deleting the folder, redoes it); an oracle also stops once its run was made anew.
Extra environment for run_demo.sh (a setting to try on the tuning set, e.g. EXP_TIMES=5) goes after --, as NAME=VALUE.
Writes <work_dir>/stage_study.json and prints one table per set and one of every run.

--oracles also measures, from each finished run, what a stage can reach at this size when its input is perfect or
different, with the recipe's budget (each in <run>_<oracle>/, reusing the run's CAMs; the coco set has seg_gt only):
    irn_gt      IRN trained on IR labels equal to the GT (its void band as 255), walking the run's CAMs
    seg_gt      DeepLab trained on the GT masks of its training images (train; train_aug with --full)
    seg_crf     DeepLab trained on the CRF labels (ir_label/, 255 ignored) instead of the IRN masks
    seg_x2      DeepLab on the IRN masks with twice the updates (is the budget the limit?)
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from misc import stages  # noqa: E402
from misc.pyutils import format_seconds, format_table  # noqa: E402

SETS = {'tune': ('a', 1), 'a': ('a', 0), 'b': ('b', 0), 'c': ('c', 0), 'd': ('d', 0), 'coco': ('coco', 0)}
# run_coco.sh at the demo's scale: the demo's miniature settings (run_demo.sh), the stand-in weights, no pictures
COCO_DEMO = ['--backbone_width', '8', '--sfc_crop_size', '192', '--sfc_num_epoches', 'SFC_EPOCHS', '--sfc_momentum',
             'SFC_MOMENTUM', '--seg_crop_size', '129', '--seg_iters', 'SEG_ITERS', '--seg_lr', 'SEG_LR',
             '--seg_scales', 'SEG_SCALES', '--cam_vis_count', '0', '--run_log', 'True']
KEYS = ('cam', 'crf_labels', 'irn_masks', 'deeplab_crf', 'deeplab_nocrf')


def parse_set(spec):
    parts = spec.split(':')
    if len(parts) == 1 and spec in SETS:
        return spec, *SETS[spec]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f'a set is NAME:VARIANT:DATA_SEED or one of {sorted(SETS)}, got {spec!r}')
    return parts[0], parts[1], int(parts[2])


def run_one(work, variant, data_seed, seed, quick, env_extra, full=False):
    """One run of the recipe (seconds taken). Never skipped here on what the folder holds: the pipeline's records
    decide what is reused, so a run made with other settings stops instead of being reported as this one."""
    env = dict(os.environ, SEED=str(seed), DATA_SEED=str(data_seed), **env_extra)
    t0 = time.time()
    cmd = ['bash', os.path.join(ROOT, 'run_demo.sh'), work, '--variant', variant] + (['--quick'] if quick else []) + \
        (['--full'] if full else [])
    if variant == 'coco':  # run_coco.sh trains on all of train2014 already: --full changes nothing there
        root = os.path.join(work, 'coco2014')
        if not os.path.isdir(os.path.join(root, 'annotations')):
            subprocess.run([sys.executable, '-m', 'coco14.synthetic', '--out_root', root, '--n_train', '1000',
                            '--n_val', '200', '--seed', str(data_seed), '--n_classes', '20', '--min_size', '160',
                            '--max_size', '240'], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        env.update(coco_env(root, work))
        cmd = ['bash', os.path.join(ROOT, 'run_coco.sh'), *coco_flags(env_extra), '--seed', str(seed)]
    run_logged(cmd, env, work + '.log')
    return time.time() - t0


def run_logged(cmd, env, log_path):
    """cmd from ROOT, its output appended to log_path (an earlier attempt's log stays above it). A failure raises
    with the log's last line: where the folder holds a run made with other settings, the pipeline's line naming the
    flag that changed."""
    with open(log_path, 'a') as log:
        log.write(f'\n===== {time.strftime("%Y-%m-%d %H:%M:%S")}: {" ".join(cmd)}\n')
        log.flush()
        r = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if r.returncode:
        from misc.errors import InputError
        lines = [ln.strip() for ln in open(log_path, errors='replace').read().splitlines() if ln.strip()]
        raise InputError(f'{os.path.basename(cmd[1])} stopped (exit {r.returncode}): {lines[-1] if lines else ""} '
                         f'(whole log: {log_path})')


def coco_env(root, work):
    """run_coco.sh's environment at the demo's scale: the generated root, the stand-in weights, no pictures."""
    return dict(COCO14_ROOT=root, WORK_DIR=work, DEVICE='cpu', NUM_WORKERS='2', VIS_IMAGES='0',
                BACKBONE_WEIGHTS=os.path.join(ROOT, 'weights', 'standin', 'resnet50_w8.pth'),
                SEG_INIT=os.path.join(ROOT, 'weights', 'standin', 'resnet101_w8.pth'))


def coco_flags(env_extra):
    """COCO_DEMO with each NAME replaced by its value (from the extra environment, else the demo's), in words."""
    return [v for f in COCO_DEMO for v in (env_extra.get(f, demo_setting(f)).split() if f.isupper() else [f])]


ORACLES = ('irn_gt', 'seg_gt', 'seg_crf', 'seg_x2')
COCO_SKIP = ['--train_sfc_pass', 'False', '--make_cam_pass', 'False', '--eval_cam_pass', 'False',
             '--cam_to_ir_label_pass', 'False', '--eval_sem_seg_pass', 'False']  # run_coco.sh's steps before DeepLab


def run_oracle(run, oracle, variant, seed, env_extra, full=False):
    """One oracle from a finished run (see the module's docstring); -> its stage values. An unfinished oracle folder
    starts over; a finished one goes to the pipeline again, which reuses it only where the settings match."""
    import shutil

    from misc import camio
    work = f'{run}_{oracle}'
    done = os.path.join(work, 'metrics', 'eval_seg.json' if oracle.startswith('seg') else 'eval_sem_seg.json')
    fresh = not os.path.isfile(done)
    source, made_from = os.path.join(work, 'oracle_source.json'), run_records(run)
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        shutil.copytree(os.path.join(run, 'meta'), os.path.join(work, 'meta'))
        camio.save_json(source, made_from)
    else:  # what it copied (lists, CAMs) must still be the run's: the run's step records say
        old = camio.load_json(source) if os.path.isfile(source) else {}
        changed = sorted(k for k in set(old) | set(made_from) if old.get(k) != made_from.get(k))
        if changed or not os.path.isfile(source):
            from misc.errors import InputError
            raise InputError(f'{work} was made from another run in {run} (changed: '
                             f'{", ".join(changed) or "no record of its run"}); delete {work} to redo it')

    def gt_copy(list_name, dest, *gt_dirs):  # each image's mask from the first of gt_dirs that has it
        for n in open(os.path.join(run, 'meta', list_name)).read().split():
            src = next((p for p in (os.path.join(d, n + '.png') for d in gt_dirs) if os.path.isfile(p)),
                       os.path.join(gt_dirs[-1], n + '.png'))
            camio.write_label(camio.label_path(dest, n), camio.read_label(src))
    if variant == 'coco':  # run_coco.sh's DeepLab on the GT PNGs of train2014 (the other oracles need IRN)
        if oracle != 'seg_gt':
            raise ValueError(f'the coco set has only the seg_gt oracle (run_coco.sh trains DeepLab on the CRF '
                             f'labels without IRN), not {oracle}')
        root = os.path.join(run, 'coco2014')
        if fresh:
            gt_copy('train2014.txt', os.path.join(work, 'gt_masks'),
                    os.path.join(root, 'SegmentationClass', 'train2014'))
        cmd = ['bash', os.path.join(ROOT, 'run_coco.sh'), *coco_flags(env_extra), '--seed', str(seed),
               '--seg_label_dir', os.path.join(work, 'gt_masks'), *COCO_SKIP]
        run_logged(cmd, dict(os.environ, **coco_env(root, work)), work + '.log')
        return stages.stage_values(work)
    data = os.path.join(run, 'VOC2012')
    env = dict(os.environ, SEED=str(seed), DATA=data, **env_extra)
    if oracle == 'irn_gt':
        if fresh:
            shutil.copytree(os.path.join(run, 'cam'), os.path.join(work, 'cam'))
            gt_copy('trainval.txt', os.path.join(work, 'ir_label'), os.path.join(data, 'SegmentationClass'))
        env['PARTS'] = 'irn'
    else:
        env['PARTS'] = 'seg'
        if oracle == 'seg_gt':
            if fresh:  # the images run_demo.sh trains DeepLab on: train, or train_aug with --full
                gt_copy('train_aug.txt' if full else 'train.txt', os.path.join(work, 'gt_masks'),
                        os.path.join(data, 'SegmentationClass'), os.path.join(data, 'SegmentationClassAug'))
            env['SEG_LABEL_DIR'] = os.path.join(work, 'gt_masks')
        elif oracle == 'seg_crf':
            env['SEG_LABEL_DIR'] = os.path.join(run, 'ir_label')
        else:
            env['SEG_LABEL_DIR'] = os.path.join(run, 'sem_seg')
            iters = int(env.get('SEG_ITERS') or demo_setting('SEG_ITERS', full))  # what run_demo.sh gave the run
            env['SEG_ITERS'] = str(2 * iters)
    run_logged(['bash', os.path.join(ROOT, 'run_demo.sh'), work] + (['--full'] if full else []), env, work + '.log')
    return stages.stage_values(work)


def run_records(run):
    """{step: digest} of the step records in a run's work dir (misc.provenance): what an oracle copies depends on."""
    from misc import provenance
    recs = {step: provenance.load(run, step) for step in provenance.RECORDED_STEPS}
    return {step: r.get('digest') for step, r in recs.items() if r}


def demo_setting(name, full=False):
    """A setting's default in the demo (not --quick; with full, --full) as run_demo.sh writes it (NAME=${NAME:-value}):
    the --full block's value where it sets one, else the last such line, since the --quick block sets its own values
    first."""
    import re
    text = open(os.path.join(ROOT, 'run_demo.sh'), encoding='utf-8').read()
    pattern = rf'{name}=\$\{{{name}:-([^}}]+)\}}'
    if full:
        for block in re.findall(r'^if \[ "\$FULL" = True \]; then[^\n]*\n(.*?)^fi$', text, re.S | re.M):
            m = re.findall(pattern, block)
            if m:
                return m[-1]
    m = re.findall(pattern, text)
    if not m:
        raise ValueError(f'run_demo.sh has no overridable {name}')
    return m[-1]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sets', nargs='+', type=parse_set, default=[parse_set(s) for s in ('a', 'b', 'c')])
    p.add_argument('--seeds', nargs='+', type=int, default=[10, 11])
    p.add_argument('--work_dir', default='work/stage_study')
    p.add_argument('--quick', action='store_true', help="run_demo.sh --quick (the small miniature)")
    p.add_argument('--full', action='store_true', help="run_demo.sh --full (pseudo masks and DeepLab on train_aug)")
    p.add_argument('--oracles', nargs='*', default=None, choices=ORACLES,
                   help='also the oracles of each run (all of them when named without values)')
    a = p.parse_args(argv)
    env_extra = dict(e.split('=', 1) for e in extra)
    os.makedirs(a.work_dir, exist_ok=True)
    results = {}
    for name, variant, data_seed in a.sets:
        for seed in a.seeds:
            work = os.path.abspath(os.path.join(a.work_dir, f'{name}_s{seed}'))
            took = run_one(work, variant, data_seed, seed, a.quick, env_extra, a.full)
            results.setdefault(name, {})[seed] = stages.stage_values(work)
            print(f'[stage_study] {name} seed {seed}: {format_seconds(took)}  ' +
                  '  '.join(f'{k} {results[name][seed][k]:.4f}' for k in KEYS if k in results[name][seed]),
                  flush=True)
            for oracle in (ORACLES if a.oracles == [] else a.oracles or ()):
                v = run_oracle(work, oracle, variant, seed, env_extra, a.full)
                key = 'irn_masks' if oracle == 'irn_gt' else 'deeplab_crf'
                results[name][seed][f'oracle_{oracle}'] = v.get(key)
                if key == 'deeplab_crf':
                    results[name][seed][f'oracle_{oracle}_nocrf'] = v.get('deeplab_nocrf')
                print(f'[stage_study] {name} seed {seed} oracle {oracle}: {key} {v.get(key, float("nan")):.4f}',
                      flush=True)
    summary = {}
    for name, runs in results.items():
        summary[name] = {}
        keys = list(KEYS) + sorted({k for r in runs.values() for k in r if k.startswith('oracle_')})
        for k in keys:
            v = [r[k] for r in runs.values() if r.get(k) is not None]
            if v:
                summary[name][k] = {'mean': float(np.mean(v)), 'min': float(min(v)), 'max': float(max(v)),
                                    'runs': v}
        rows = []
        cam = summary[name].get('cam', {}).get('mean')
        for k in keys:
            if k in summary[name]:
                s = summary[name][k]
                rows.append([k, f'{s["mean"]:.4f}', f'{s["min"]:.4f} - {s["max"]:.4f}',
                             f'{100 * (s["mean"] - cam):+.1f}' if cam is not None and k != 'cam' else ''])
        print(f'\nset {name} ({len(runs)} seeds: {", ".join(map(str, runs))}): mean, range over the seeds')
        print(format_table(['stage', 'mIoU', 'range', 'points over the CAM'], rows))
    with open(os.path.join(a.work_dir, 'stage_study.json'), 'w') as f:
        json.dump({'sets': {n: {'variant': v, 'data_seed': d} for n, v, d in a.sets}, 'seeds': a.seeds,
                   'quick': a.quick, 'full': a.full, 'env': env_extra, 'runs': {n: {str(s): r for s, r in runs.items()}
                                                                for n, runs in results.items()},
                   'summary': summary}, f, indent=1)
    return summary


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
