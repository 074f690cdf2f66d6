"""Does the pipeline give on a GPU what it gives on the CPU? The ten steps on a small generated set, stage by stage.

    python -m tools.device_check --device cuda --work_dir work/device_check     # part of tools/gpu_check.sh
    python -m tools.device_check --device cpu --parts reference chain           # the plumbing, on any machine

Parts (each a run_sample.py command in its own process, as a user runs it; --parts picks some):
  reference  the ten steps on the CPU (IEEE float32, NCHW): the values every other part is compared with.
  chain      the ten steps on --device from scratch, with --deterministic True: each stage's mIoU against the
             reference's, and the first logged loss of each training step (same weights, same batch: only the
             arithmetic differs) against the reference's.
  fixed      the inference steps on --device from the reference's checkpoints (and IR labels / pseudo masks for the
             segmentation model): each stage's output against the reference's, file by file, with the same inputs.
  torchrun   train_sfc and make_cam through `torchrun --nproc_per_node 1` (the several-GPU path: process group,
             collectives, sharded inference) against the chain's: with --deterministic True the CAMs should agree
             to the last bit, the weights up to the few CUDA kernels without a deterministic version.
Bounds (reported as PASS/FAIL, never asserted: the report is the product): CAM arrays within 1e-3 of the reference
relative to their largest value (float32 on both sides; different convolution algorithms, summation orders),
label maps (CAM labels, IR labels, pseudo masks, DeepLab outputs) agreeing on >= 99.5 % of the pixels, every mIoU
within 0.5 point (a tiny val set: one image is a large share), first losses within 1e-3 relative. Writes
<work_dir>/device_check.json after every part, so that a part cut by a time limit keeps what came before.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from misc import camio  # noqa: E402
from misc.pyutils import format_table  # noqa: E402

PARTS = ('reference', 'chain', 'fixed', 'torchrun')
ARRAY_REL = 1e-3    # CAM arrays: max |a - b| / max |b|
LABEL_AGREE = 0.995  # label maps: share of pixels with the same label
MIOU_POINTS = 0.5   # mIoU: points (of 100)
LOSS_REL = 1e-3     # the first logged loss of a training step
STANDIN = os.path.join(ROOT, 'weights', 'standin')
# the miniature: every step runs in seconds on a CPU core, every code path of the real run is taken
DATA = dict(n_train=16, n_val=8, n_aug=16, seed=0, min_size=64, max_size=96)
TINY = dict(n_train=6, n_val=4, n_aug=2, seed=0, min_size=64, max_size=80)  # --tiny: the script's own test


def flags(root, meta, work, device, deterministic=True):
    return ['--voc12_root', root, '--work_dir', work, '--device', device, '--seed', '10', '--num_workers', '2',
            '--deterministic', str(deterministic), '--amp', 'none',
            '--backbone_weights', os.path.join(STANDIN, 'resnet50_w8.pth'), '--backbone_width', '8',
            '--train_list', os.path.join(meta, 'trainval.txt'), '--infer_list', os.path.join(meta, 'trainval.txt'),
            '--eval_list', os.path.join(meta, 'val.txt'), '--cls_labels', os.path.join(meta, 'cls_labels.npz'),
            '--sfc_crop_size', '64', '--sfc_batch_size', '8', '--sfc_num_epoches', '2', '--sfc_momentum', '0.9',
            '--sfc_dc_offset', 'auto', '--sfc_select_on_gt', 'False', '--sfc_print_freq', '1',
            '--cam_scales', '1.0', '0.5', '1.5', '--cam_eval_source', 'proto_cam', 'cam',
            '--irn_crop_size', '64', '--irn_batch_size', '8', '--irn_num_epoches', '2', '--irn_radius', '5',
            '--irn_momentum', '0.9', '--irn_print_freq', '1', '--exp_times', '2', '--irn_crop_size_infer', '128',
            '--seg_init', os.path.join(STANDIN, 'resnet101_w8.pth'), '--seg_train_list', os.path.join(meta, 'train.txt'),
            '--seg_infer_list', os.path.join(meta, 'val.txt'), '--seg_crop_size', '65', '--seg_batch_size', '4',
            '--seg_iters', '6', '--seg_lr', '5e-3', '--seg_print_freq', '1', '--seg_micro_batch', '2',
            '--ir_crf_workers', '2', '--seg_crf_workers', '2']


TRAIN = ['--train_sfc_pass', 'True', '--train_irn_pass', 'True', '--train_seg_pass', 'True']
INFER = ['--make_cam_pass', 'True', '--eval_cam_pass', 'True', '--cam_to_ir_label_pass', 'True',
         '--make_sem_seg_pass', 'True', '--eval_sem_seg_pass', 'True', '--make_seg_pass', 'True',
         '--eval_seg_pass', 'True']
ALL = ['--train_sfc_pass', 'True', '--make_cam_pass', 'True', '--eval_cam_pass', 'True',
       '--cam_to_ir_label_pass', 'True', '--train_irn_pass', 'True', '--make_sem_seg_pass', 'True',
       '--eval_sem_seg_pass', 'True', '--train_seg_pass', 'True', '--make_seg_pass', 'True', '--eval_seg_pass', 'True']


def run(cmd, log):
    """A command with its output in `log`; (exit status, seconds)."""
    t0 = time.time()
    with open(log, 'w') as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.time() - t0


def tail(log, n=8):
    try:
        return open(log).read().strip().splitlines()[-n:]
    except OSError:
        return []


# --- comparisons ---------------------------------------------------------------------------------------------
def mious(work):
    out = {}
    for name, keys in (('eval_cam', ('sources',)), ('eval_sem_seg', ()), ('eval_seg', ())):
        path = os.path.join(work, 'metrics', name + '.json')
        if not os.path.isfile(path):
            continue
        m = camio.load_json(path)
        if 'sources' in m:
            for src, r in m['sources'].items():
                out[f'CAM mIoU ({src})'] = r['miou']
        else:
            out[{'eval_sem_seg': 'pseudo-mask mIoU', 'eval_seg': 'DeepLab mIoU (CRF)'}[name]] = m['miou']
            if 'miou_no_crf' in m:
                out['DeepLab mIoU (no CRF)'] = m['miou_no_crf']
    return out


def first_losses(work):
    """{step: {loss name: value at the first logged step}} from the training curves."""
    out = {}
    for step in ('train_sfc', 'train_irn', 'train_seg'):
        path = camio.scalars_path(os.path.join(work, 'metrics'), step)
        if os.path.isfile(path):
            with open(path) as f:
                first = json.loads(f.readline())
            out[step] = {k: v for k, v in first.items() if k.startswith('loss')}
    return out


def compare_cams(a_dir, b_dir):
    """(largest relative difference of the CAM arrays, share of pixels whose CAM label agrees), over every file."""
    rel, same, total = 0.0, 0, 0
    for path in sorted(glob.glob(os.path.join(b_dir, '*.npz'))):
        other = os.path.join(a_dir, os.path.basename(path))
        if not os.path.isfile(other):
            return None
        a, b = camio.load_cam(other), camio.load_cam(path)
        for k in ('cam', 'proto_cam'):
            rel = max(rel, float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-12)))
            la, lb = camio.cam_labels(a, k), camio.cam_labels(b, k)
            same += int((la == lb).sum())
            total += la.size
    return rel, same / max(total, 1)


def compare_labels(a_dir, b_dir):
    """Share of pixels with the same label over every PNG of b_dir (None when a file is missing)."""
    same = total = 0
    for path in sorted(glob.glob(os.path.join(b_dir, '*.png'))):
        other = os.path.join(a_dir, os.path.basename(path))
        if not os.path.isfile(other):
            return None
        la, lb = camio.read_label(other), camio.read_label(path)
        same += int((la == lb).sum())
        total += la.size
    return same / max(total, 1) if total else None


def state_gap(a_path, b_path):
    import torch
    a, b = (torch.load(p, map_location='cpu', weights_only=True)['net'] for p in (a_path, b_path))
    gaps = [float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point()]
    return max(gaps)


def verdict(ok):
    return 'PASS' if ok else 'FAIL'


# --- the parts -----------------------------------------------------------------------------------------------
class Check:
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(a.work_dir)
        self.root = os.path.join(self.work, 'VOC2012')
        self.meta = os.path.join(self.work, 'meta')
        self.report = {'device': a.device, 'bounds': {'array_rel': ARRAY_REL, 'label_agree': LABEL_AGREE,
                                                      'miou_points': MIOU_POINTS, 'loss_rel': LOSS_REL},
                       'parts': {}, 'rows': []}
        self.py = [sys.executable]

    def dir(self, name):
        return os.path.join(self.work, name)

    def data(self):
        if os.path.isfile(os.path.join(self.meta, 'cls_labels.npz')):
            return
        from voc12.make_cls_labels import build
        from voc12.synthetic import make_synthetic_voc
        make_synthetic_voc(self.root, **(TINY if self.a.tiny else DATA))
        build(self.root, self.meta)

    def sfc(self, work, device, steps, deterministic=True, launch=None):
        cmd = (launch or self.py) + [os.path.join(ROOT, 'run_sample.py')] + \
            flags(self.root, self.meta, work, device, deterministic) + steps
        os.makedirs(work, exist_ok=True)
        return run(cmd, os.path.join(work, 'check.log'))

    def row(self, part, what, value, bound, ok):
        self.report['rows'].append({'part': part, 'what': what, 'value': value, 'bound': bound,
                                    'verdict': verdict(ok) if ok is not None else 'missing'})

    def part_reference(self):
        return self.sfc(self.dir('reference'), 'cpu', ALL)

    def part_chain(self):
        rc, secs = self.sfc(self.dir('chain'), self.a.device, ALL)
        ref, got = mious(self.dir('reference')), mious(self.dir('chain'))
        for k, v in ref.items():
            g = got.get(k)
            self.row('chain', k, f'{100 * g:.2f} vs {100 * v:.2f}' if g is not None else '-', f'{MIOU_POINTS} point',
                     abs(g - v) * 100 <= MIOU_POINTS if g is not None else None)
        ref_l, got_l = first_losses(self.dir('reference')), first_losses(self.dir('chain'))
        for step, losses in ref_l.items():
            for k, v in losses.items():
                g = got_l.get(step, {}).get(k)
                rel = abs(g - v) / max(abs(v), 1e-12) if g is not None else None
                self.row('chain', f'{step} first {k}', f'{g:.6g} vs {v:.6g} (rel {rel:.1e})' if g is not None else '-',
                         f'{LOSS_REL:g} rel', rel <= LOSS_REL if rel is not None else None)
        return rc, secs

    def part_fixed(self):
        ref, work = self.dir('reference'), self.dir('fixed')
        os.makedirs(work, exist_ok=True)
        for sub in ('ckpt',):  # the reference's checkpoints; the seg model trains on nothing here
            shutil.copytree(os.path.join(ref, sub), os.path.join(work, sub), dirs_exist_ok=True)
        rc, secs = self.sfc(work, self.a.device, INFER)
        cams = compare_cams(os.path.join(ref, 'cam'), os.path.join(work, 'cam'))
        if cams:
            self.row('fixed', 'make_cam arrays (max rel. difference)', f'{cams[0]:.1e}', f'{ARRAY_REL:g}',
                     cams[0] <= ARRAY_REL)
            self.row('fixed', 'make_cam labels (agreement)', f'{100 * cams[1]:.3f} %', f'{100 * LABEL_AGREE:g} %',
                     cams[1] >= LABEL_AGREE)
        else:
            self.row('fixed', 'make_cam', '-', '', None)
        for sub, what in (('ir_label', 'cam_to_ir_label (CRF on the device\'s CAMs)'),
                          ('sem_seg', 'make_sem_seg pseudo masks'), ('seg_nocrf', 'make_seg (no CRF)'),
                          ('seg', 'make_seg (CRF)')):
            agree = compare_labels(os.path.join(ref, sub), os.path.join(work, sub))
            self.row('fixed', what, f'{100 * agree:.3f} %' if agree is not None else '-', f'{100 * LABEL_AGREE:g} %',
                     agree >= LABEL_AGREE if agree is not None else None)
        r_m, g_m = mious(ref), mious(work)
        for k, v in r_m.items():
            g = g_m.get(k)
            self.row('fixed', k, f'{100 * g:.2f} vs {100 * v:.2f}' if g is not None else '-', f'{MIOU_POINTS} point',
                     abs(g - v) * 100 <= MIOU_POINTS if g is not None else None)
        return rc, secs

    def part_torchrun(self):
        work = self.dir('torchrun')
        launch = self.py + ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1']
        rc, secs = self.sfc(work, self.a.device, ['--train_sfc_pass', 'True', '--make_cam_pass', 'True',
                                                  '--run_log', 'False'], launch=launch)
        chain = self.dir('chain')
        a, b = (os.path.join(w, 'ckpt', camio.SFC_WEIGHTS) for w in (chain, work))
        if os.path.isfile(a) and os.path.isfile(b):
            gap = state_gap(a, b)
            self.row('torchrun', 'train_sfc weights, 1 process under torchrun vs plain (max abs. difference)',
                     f'{gap:.1e}', 'report', True)
        cams = compare_cams(os.path.join(chain, 'cam'), os.path.join(work, 'cam'))
        if cams:
            self.row('torchrun', 'make_cam arrays vs plain (max rel. difference)', f'{cams[0]:.1e}', f'{ARRAY_REL:g}',
                     cams[0] <= ARRAY_REL)
        else:
            self.row('torchrun', 'make_cam', '-', '', None)
        return rc, secs

    def save(self):
        camio.save_json(os.path.join(self.work, 'device_check.json'), self.report)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda', choices=('cpu', 'cuda'))
    p.add_argument('--work_dir', default='work/device_check')
    p.add_argument('--parts', nargs='+', default=list(PARTS), choices=PARTS)
    p.add_argument('--tiny', action='store_true', help='a smaller set (12 images): the test of this tool')
    a = p.parse_args(argv)
    c = Check(a)
    os.makedirs(c.work, exist_ok=True)
    t0 = time.time()
    c.data()
    print(f'device_check: data ready in {time.time() - t0:.0f} s ({c.root})', flush=True)
    for part in a.parts:
        rc, secs = getattr(c, f'part_{part}')()
        log = os.path.join(c.dir(part), 'check.log')
        c.report['parts'][part] = {'exit_status': rc, 'seconds': round(secs, 1)}
        print(f'device_check: {part} {"done" if rc == 0 else f"FAILED (exit status {rc})"} in {secs:.0f} s', flush=True)
        if rc:
            c.report['parts'][part]['log_tail'] = tail(log, 15)
            print('\n'.join('    ' + line for line in tail(log, 15)), flush=True)
        c.save()
    rows = c.report['rows']
    print(format_table(['part', 'what', 'value', 'bound', 'verdict'],
                       [[r['part'], r['what'], r['value'], r['bound'], r['verdict']] for r in rows]))
    failed = [r for r in rows if r['verdict'] != 'PASS'] + \
        [p for p, r in c.report['parts'].items() if r['exit_status']]
    print(f'device_check: {len(rows) - len([r for r in rows if r["verdict"] != "PASS"])} of {len(rows)} '
          f'comparisons within their bounds; {len(failed)} failures in all')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
