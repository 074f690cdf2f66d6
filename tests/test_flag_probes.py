"""Each step reads the flags it should, and no flag of another step's.

The whole pipeline runs once on the tiny generated set with every conditional branch that reads a flag switched on
(GT selection, the resize augmentation, the IRN displacement mean, the CRF, the visualisations, the threshold
sweep) and in-process workers (a loader or CRF worker process would read its flags out of sight). Every step gets
its own copy of the parsed flags that records each attribute read. Then, against misc/provenance.py's tables:
- every flag a step's outputs are recorded under (STEP_FLAGS) is read by that step: a step that reads
  another flag in its place (cam_to_ir_label taking --seg_crf_iters for --ir_crf_iters) leaves its own unread;
- a step reads no flag that belongs to other steps only: each flag it reads is one of its own, one of its inputs
  (STEP_INPUTS), a flag that changes no output (NOT_RECORDED), or listed below with its reason.
The evaluation steps have no record; their expected flags are listed here. make_seg runs a second time on the same
weights saved without our meta (as deeplab-pytorch saves them), the case in which it builds the network from the
flags. A read shows that a step uses a flag, not how: the golden tests check the values.
"""
import argparse
import os

import pytest
import torch

import run_sample
from misc import camio, provenance
from tests.test_e2e import base_args

# the evaluation steps: what each must read (they keep no record)
EVAL_READS = {
    'eval_cam': {'cam_eval_source', 'cam_eval_fuse_weight', 'cam_vis_count', 'cam_eval_sweep', 'cam_sweep_thresholds',
                 'cam_sweep_offsets', 'eval_list',
                 'cam_bg_offset', 'cam_fg_scale'},  # the sweep undoes make_cam's offset and scale
    'eval_sem_seg': {'eval_list'},
    'eval_seg': {'seg_eval_list'},
}
# flags recorded for a step that it reads only in a case the probe run covers separately
READ_WHEN = {
    ('train_seg', 'seg_recipe'): 'never: run_sample resolves the recipe into the seg_* flags before any step',
    # make_seg builds the network from our checkpoint's meta; a checkpoint without it (deeplab-pytorch's) is built
    # from the flags: the second probe run, 'make_seg without meta'
    **{('make_seg', f): 'checkpoint without meta' for f in ('backbone_width', 'seg_aspp_rates', 'seg_depth',
                                                             'seg_input_norm', 'seg_msc_scales', 'seg_stride_in')},
}
ANYWHERE = {'dataset', 'dataset_root'}  # which dataset, and where its images are
WRITES = {'make_cam': {'cam_dir'}, 'cam_to_ir_label': {'ir_label_dir'}}  # its own output folder, another's input


class ReadLog(argparse.Namespace):
    """Parsed flags that remember which of them were read."""

    def __getattribute__(self, name):
        if not name.startswith('_'):
            object.__getattribute__(self, '_reads').add(name)
        return object.__getattribute__(self, name)


@pytest.fixture(scope='module')
def reads(tiny_voc, tmp_path_factory):
    import importlib
    work = str(tmp_path_factory.mktemp('probe') / 'w')
    meta = tiny_voc['meta']
    seen = {}
    real = {}

    def probed(step):
        def run(args):
            log = ReadLog(**vars(args))
            object.__setattr__(log, '_reads', set())
            try:
                return real[step](log)
            finally:
                seen[step] = object.__getattribute__(log, '_reads')
        return run

    mp = pytest.MonkeyPatch()
    for s in run_sample.STEPS:
        mod = importlib.import_module(f'step.{s}')
        real[s] = mod.run
        mp.setattr(mod, 'run', probed(s))
    seg = ['--seg_depth', '50', '--seg_iters', '2', '--seg_batch_size', '2', '--seg_crop_size', '64',
           '--seg_init', 'none', '--seg_crf', 'True', '--seg_crf_workers', '1', '--seg_crf_iters', '2',
           '--seg_infer_list', os.path.join(meta, 'val.txt')]
    try:
        run_sample.main(base_args(
            tiny_voc, work, *[x for s in run_sample.STEPS for x in (f'--{s}_pass', 'True')],
            '--train_list', os.path.join(meta, 'val.txt'), '--sfc_num_epoches', '1', '--sfc_select_on_gt', 'True',
            '--sfc_val_min_step', '0', '--sfc_val_freq', '5',
            '--sfc_val_list', os.path.join(meta, 'val.txt'), '--sfc_resize_long_aug', 'True',
            '--sfc_resize_long', '60', '90', '--cam_vis_count', '1', '--cam_eval_sweep', 'True',
            '--cam_eval_source', 'cam', 'proto_cam', 'fused',
            '--irn_crop_size', '96', '--irn_batch_size', '4', '--irn_num_epoches', '1', '--irn_dp_mean', 'True',
            '--irn_crop_size_infer', '96', '--ir_crf_workers', '1', *seg))
        # make_seg on the same weights saved without our meta (as deeplab-pytorch saves them)
        ck = torch.load(os.path.join(work, 'ckpt', camio.SEG_WEIGHTS), weights_only=True)
        bare = os.path.join(os.path.dirname(work), 'bare.pth')
        torch.save(ck['net'], bare)
        both = seen
        seen = {}
        run_sample.main(base_args(tiny_voc, work + '_bare', '--make_seg_pass', 'True', '--seg_weights', bare,
                                  '--seg_stride_in', ck['meta']['stride_in'], '--seg_input_norm',
                                  ck['meta']['input_norm'], *seg))
        both['make_seg without meta'] = seen['make_seg']
        seen = both
    finally:
        mp.undo()
    return seen


def _own(step):
    return set(provenance.STEP_FLAGS.get(step, ())) | {f for f, _ in provenance.STEP_INPUTS.get(step, ())}


def _all_inputs():
    return {f for v in provenance.STEP_INPUTS.values() for f, _ in v}


def test_every_step_reads_each_flag_its_outputs_are_recorded_under(reads):
    assert set(run_sample.STEPS) <= set(reads)
    unread = {}
    for s, flags in provenance.STEP_FLAGS.items():
        for f in flags:
            when = READ_WHEN.get((s, f))
            if when == 'checkpoint without meta':
                ok = f in reads['make_seg without meta']
            else:
                ok = f in reads[s] or (when is not None and when.startswith('never'))
            if not ok:
                unread.setdefault(s, []).append(f)
    assert not unread, unread
    missing = {s: sorted(want - reads[s]) for s, want in EVAL_READS.items() if want - reads[s]}
    assert not missing, missing


def test_no_step_reads_a_flag_of_another_step(reads):
    """A flag that changes some step's outputs, or names some step's input, read by a step it does not belong to."""
    watched = set().union(*provenance.STEP_FLAGS.values()) | _all_inputs()
    foreign = {}
    for s, got in reads.items():
        step = s.split()[0]
        allowed = (_own(step) | set(provenance.NOT_RECORDED) | ANYWHERE | EVAL_READS.get(step, set())
                   | WRITES.get(step, set())
                   | (_all_inputs() if step.startswith('eval_') else set()))  # an evaluation reads what others wrote
        odd = sorted((got & watched) - allowed)
        if odd:
            foreign[s] = odd
    assert not foreign, foreign
