"""What made each output: a record per step beside its artefacts, checked before a step reuses anything.

Every step that writes reusable artefacts (checkpoints, CAMs, labels, masks, predictions) keeps
<work_dir>/provenance/<step>.json: the resolved values of the flags that can change those artefacts (STEP_FLAGS),
the identity of every input it reads (a checkpoint or list by its content hash, an artefact folder of this work
directory by the record of the step that made it, another folder by its path), its outputs, and the code's version.
The record is written when the step starts, so that an interrupted step resumes under it.

Before a step runs (run_sample.main calls check()):
- no record and no outputs: the record is written and the step runs;
- a record that matches: the step runs, reusing (resuming, skipping) what is there;
- a record that differs, or outputs without a record: the step stops before it changes anything, with one line that
  names each flag that changed (old -> new) or the input that changed, and the two ways on: another --work_dir, or
  --redo <step>, which removes the step's outputs and every output made from them (found through the records'
  inputs), then runs.
The evaluation steps always recompute what they write and keep no record. Flags that cannot change an artefact
(workers, micro-batches, progress, the plan, the device and memory layout, whose arithmetic differences are within
the tolerances of docs/precision.md) are in NOT_RECORDED, each with its reason; a test keeps every flag of
run_sample.py in exactly one of the two tables.
"""
import functools
import hashlib
import json
import os
import shutil
import subprocess

from misc import camio
from misc.errors import InputError

VERSION = 1  # of the record's layout
RECORD_DIR = 'provenance'

# the flags whose values can change each step's artefacts (resolved values, after run_sample.finalize_args)
_DATA = ['dataset', 'seed', 'amp']
STEP_FLAGS = {
    'train_sfc': _DATA + ['backbone_weights', 'backbone_width', 'sfc_batch_size', 'sfc_num_epoches', 'sfc_lr',
                          'sfc_new_layer_lr_mult', 'sfc_weight_decay', 'sfc_momentum', 'sfc_poly_power',
                          'sfc_grad_clip', 'sfc_crop_size', 'sfc_resize_long_aug', 'sfc_resize_long', 'sfc_hor_flip',
                          'sfc_half_scale', 'sfc_bank_samples', 'sfc_pdw_weight', 'sfc_wdw_weight',
                          'sfc_proto_bg_factor', 'sfc_dc_offset', 'sfc_ibr', 'sfc_pdw', 'sfc_wdw', 'sfc_dc_weights',
                          'sfc_select_on_gt', 'sfc_val_freq', 'sfc_val_min_step', 'sfc_calibrate_bn',
                          'sfc_zero_init_residual'],
    'make_cam': ['dataset', 'amp', 'backbone_width', 'sfc_proto_bg_factor', 'cam_scales', 'cam_bg_offset',
                 'cam_fg_scale', 'cam_norm_eps'],
    'cam_to_ir_label': ['dataset', 'ir_proto_weight', 'ir_bg_factor', 'ir_crf_iters', 'ir_crf_gt_prob',
                        'ir_crf_gauss_sxy', 'ir_crf_gauss_compat', 'ir_crf_bi_sxy', 'ir_crf_bi_srgb',
                        'ir_crf_bi_compat'],
    'train_irn': _DATA + ['backbone_weights', 'backbone_width', 'irn_crop_size', 'irn_batch_size', 'irn_num_epoches',
                          'irn_lr', 'irn_dp_lr_mult', 'irn_weight_decay', 'irn_momentum', 'irn_poly_power',
                          'irn_rescale', 'irn_hor_flip', 'irn_radius', 'irn_calibrate_bn', 'irn_dp_mean'],
    'make_sem_seg': ['dataset', 'amp', 'backbone_width', 'sem_seg_proto_weight', 'sem_seg_power',
                     'sem_seg_double_power', 'sem_seg_bg_value', 'beta', 'exp_times', 'sem_seg_radius',
                     'irn_crop_size_infer'],
    'train_seg': _DATA + ['backbone_width', 'seg_recipe', 'seg_init', 'seg_depth', 'seg_stride_in', 'seg_input_norm', 'seg_batch_size',
                          'seg_iter_size', 'seg_iters', 'seg_lr', 'seg_head_lr_mult', 'seg_head_bias_lr_mult',
                          'seg_momentum', 'seg_weight_decay', 'seg_poly_power', 'seg_lr_decay_every', 'seg_crop_size',
                          'seg_base_size', 'seg_scales', 'seg_scale_mode', 'seg_hor_flip', 'seg_loss',
                          'seg_msc_scales', 'seg_aspp_rates', 'seg_calibrate_bn'],
    'make_seg': ['dataset', 'amp', 'backbone_width', 'seg_depth', 'seg_stride_in', 'seg_input_norm', 'seg_msc_scales', 'seg_aspp_rates',
                 'seg_test_scales', 'seg_test_flip', 'seg_crf', 'seg_crf_iters', 'seg_crf_pos_w', 'seg_crf_pos_xy_std',
                 'seg_crf_bi_w', 'seg_crf_bi_xy_std', 'seg_crf_bi_rgb_std'],
}
# the inputs each step reads: (flag holding the path, kind) with kind 'file' (content hash; a checkpoint this work
# directory's training step wrote is known by that step's record), 'list' (content hash) or 'folder' (the record
# of the step that made it, else its path). dataset_root is the images' folder (by path).
STEP_INPUTS = {
    'train_sfc': [('dataset_root', 'root'), ('train_list', 'list'), ('cls_labels', 'list'),
                  ('sfc_val_list', 'list'), ('backbone_weights', 'file')],
    'make_cam': [('dataset_root', 'root'), ('cls_labels', 'list'), ('sfc_weights', 'file')],
    'cam_to_ir_label': [('dataset_root', 'root'), ('cam_dir', 'folder')],
    'train_irn': [('dataset_root', 'root'), ('train_list', 'list'), ('ir_label_dir', 'folder'),
                  ('irn_dp_mean_list', 'list'), ('backbone_weights', 'file')],
    'make_sem_seg': [('dataset_root', 'root'), ('cls_labels', 'list'), ('cam_dir', 'folder'), ('irn_weights', 'file')],
    'train_seg': [('dataset_root', 'root'), ('seg_train_list', 'list'), ('seg_label_dir', 'folder'),
                  ('seg_init', 'file')],
    'make_seg': [('seg_weights', 'file')],  # each prediction depends on its image and the model only
}
# which inputs only count under a setting (the GT list of the SFC checkpoint choice)
_INPUT_WHEN = {('train_sfc', 'sfc_val_list'): 'sfc_select_on_gt', ('train_irn', 'irn_dp_mean_list'): 'irn_dp_mean'}

NOT_RECORDED = {
    # what and where: not an output's content (or resolved into the paths recorded as inputs)
    'voc12_root': 'recorded as the input dataset_root', 'coco14_root': 'recorded as the input dataset_root',
    'work_dir': 'where the records are', 'train_list': 'an input (content hash)', 'infer_list': 'which images; '
    'each output file depends on its image only', 'eval_list': 'read by the evaluation steps (recomputed every run)',
    'cls_labels': 'an input (content hash)', 'sfc_val_list': 'an input of train_sfc (content hash)',
    'sfc_weights': 'an input of make_cam', 'irn_weights': 'an input of make_sem_seg',
    'irn_dp_mean_list': 'an input of train_irn', 'seg_train_list': 'an input of train_seg',
    'seg_label_dir': 'an input of train_seg', 'seg_weights': 'an input of make_seg',
    'seg_infer_list': 'which images; each prediction depends on its image only',
    'seg_infer_root': 'which images (the VOC test devkit for the export); each prediction depends on its image only',
    'seg_export_voc_test': 'which outputs are also exported (the server layout of the predictions)',
    'seg_eval_list': 'read by eval_seg (recomputed every run)',
    # arithmetic only: the same outputs within the tolerances docs/precision.md gives
    'device': 'arithmetic only', 'deterministic': 'arithmetic only', 'channels_last': 'arithmetic only',
    'cam_fold_bn': 'arithmetic only',
    # speed, memory, progress and bookkeeping
    'num_workers': 'speed', 'ir_crf_workers': 'speed', 'seg_crf_workers': 'speed', 'sfc_micro_batch': 'memory',
    'irn_micro_batch': 'memory', 'seg_micro_batch': 'memory', 'log': 'bookkeeping (--run_log)',
    'tensorboard': 'bookkeeping',
    'traceback': 'bookkeeping', 'plan': 'runs nothing', 'check_data': 'bookkeeping', 'redo': 'bookkeeping',
    'sfc_print_freq': 'progress', 'sfc_ckpt_freq': 'resume points', 'sfc_resume': 'resume',
    'irn_print_freq': 'progress', 'irn_ckpt_freq': 'resume points', 'irn_resume': 'resume',
    'seg_print_freq': 'progress', 'seg_ckpt_freq': 'resume points', 'seg_resume': 'resume',
    'cam_skip_existing': 'resume', 'ir_skip_existing': 'resume', 'sem_seg_skip_existing': 'resume',
    'seg_skip_existing': 'resume',
    # the evaluation steps' settings (they recompute everything they write on every run)
    'cam_eval_source': 'evaluation', 'cam_eval_fuse_weight': 'evaluation', 'cam_vis_count': 'evaluation',
    'cam_eval_sweep': 'evaluation', 'cam_sweep_thresholds': 'evaluation', 'cam_sweep_offsets': 'evaluation',
    'eval_masks': 'evaluation',
}

# each step's artefacts (relative to work_dir): what --redo removes
OUTPUTS = {
    'train_sfc': [f'ckpt/{camio.SFC_WEIGHTS}', f'ckpt/{camio.SFC_FINAL}', f'ckpt/{camio.SFC_BEST_GT}',
                  f'ckpt/{camio.SFC_RESUME}', 'metrics/train_sfc_scalars.jsonl', 'tb/train_sfc'],
    'make_cam': ['cam'],
    'cam_to_ir_label': ['ir_label'],
    'train_irn': [f'ckpt/{camio.IRN_WEIGHTS}', f'ckpt/{camio.IRN_RESUME}', 'metrics/train_irn_scalars.jsonl',
                  'tb/train_irn'],
    'make_sem_seg': ['sem_seg', 'sem_seg_palette'],
    'train_seg': [f'ckpt/{camio.SEG_WEIGHTS}', f'ckpt/{camio.SEG_RESUME}', 'metrics/train_seg_scalars.jsonl',
                  'tb/train_seg'],
    'make_seg': ['seg', 'seg_nocrf', 'seg_palette', camio.VOC_TEST_EXPORT],
}
RECORDED_STEPS = tuple(STEP_FLAGS)


class StaleOutput(InputError):
    """Outputs in the work directory were made by other settings or inputs (or their record is missing)."""


def record_path(work_dir, step):
    return os.path.join(work_dir, RECORD_DIR, f'{step}.json')


def load(work_dir, step):
    p = record_path(work_dir, step)
    if not os.path.isfile(p):
        return None
    try:
        return camio.load_json(p)
    except (OSError, ValueError):
        return {'damaged': True}


@functools.lru_cache(maxsize=1)
def code_version():
    """The checkout's commit (and '+changes' when the tree differs from it), or 'unknown' outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return 'unknown'
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ('+changes' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


_HASHES = {}  # (path, size, mtime) -> hash: every step is checked twice per run (before the first step, and before
#             its own), and a checkpoint of hundreds of MB is read once


def file_hash(path):
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = _sha256(path)
    return _HASHES[key]


def _sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            h.update(chunk)
    return h.hexdigest()[:16]


def _made_here(work_dir, path):
    """(step, record digest) of the record in work_dir whose outputs hold `path`, or None."""
    rel = os.path.relpath(os.path.abspath(path), work_dir)
    for step in RECORDED_STEPS:
        if rel in OUTPUTS[step]:
            rec = load(work_dir, step)
            return (step, rec.get('digest') if rec else None)
    return None


def identity(work_dir, kind, path):
    """What a later run compares: see STEP_INPUTS."""
    if path in (None, '', 'none'):
        return 'none'
    if kind == 'file' and not os.path.isfile(path):
        return f'{path} (not a local file)'  # 'imagenet' and other named weights: the name is the identity
    made = _made_here(work_dir, path)
    if made and made[1]:
        return f'{made[0]} record {made[1]}'
    if kind in ('file', 'list'):
        return f'sha256 {file_hash(path)}' if os.path.isfile(path) else f'{path} (missing)'
    return f'path {os.path.abspath(path)}'


def _value(v):
    return list(v) if isinstance(v, tuple) else v


def wanted(args, step):
    flags = {k: _value(getattr(args, k)) for k in STEP_FLAGS[step]}
    inputs = {}
    for flag, kind in STEP_INPUTS[step]:
        cond = _INPUT_WHEN.get((step, flag))
        if cond and not getattr(args, cond):
            continue
        inputs[flag] = identity(args.work_dir, kind, getattr(args, flag, None))
    digest = hashlib.sha256(json.dumps([flags, inputs], sort_keys=True).encode()).hexdigest()[:16]
    return {'step': step, 'version': VERSION, 'flags': flags, 'inputs': inputs, 'digest': digest,
            'outputs': OUTPUTS[step], 'code': code_version()}


def _exists(work_dir, rel):
    p = os.path.join(work_dir, rel)
    if os.path.isdir(p):
        return any(not f.startswith('.') for f in os.listdir(p))
    return os.path.isfile(p)


def differences(old, new):
    out = []
    for k in new['flags']:
        if k in old.get('flags', {}) and old['flags'][k] != new['flags'][k]:
            out.append(f'--{k} {_show(old["flags"][k])} -> {_show(new["flags"][k])}')
        elif k not in old.get('flags', {}):
            out.append(f'--{k} (not recorded before) -> {_show(new["flags"][k])}')
    for k in sorted(set(old.get('inputs', {})) | set(new['inputs'])):
        a, b = old.get('inputs', {}).get(k), new['inputs'].get(k)
        if a != b:
            out.append(f'input --{k} changed ({a} -> {b})')
    return out


def _show(v):
    return ' '.join(map(str, v)) if isinstance(v, list) else str(v)


def _ways_on(step):
    return (f'to keep them, give this run another --work_dir; to replace them (and everything made from them), add '
            f'--redo {step}')


def check(args, step, write=True):
    """Before `step` runs: write its record, or stop (StaleOutput) when what is there was made otherwise.
    write=False: only look (the check of every selected step before the first one runs)."""
    if step not in RECORDED_STEPS:
        return
    work = args.work_dir
    new = wanted(args, step)
    old = load(work, step)
    outputs = [rel for rel in OUTPUTS[step] if _exists(work, rel)]
    if old is None and outputs:
        raise StaleOutput(f'{step}: {", ".join(outputs)} in {work} have no record of what made them (written before '
                          f'records were kept, or by hand): {_ways_on(step)}')
    if old is not None and old.get('damaged') and outputs:
        raise StaleOutput(f'{step}: the record {record_path(work, step)} cannot be read: {_ways_on(step)}')
    if old is not None and not outputs:  # a record without outputs (a step that stopped on its input): replace it
        old = None
    if old is not None and old.get('digest') != new['digest']:
        diff = differences(old, new) or ['the record differs']
        made = f' (code {old.get("code")})' if old.get('code') != new['code'] else ''
        raise StaleOutput(f'{step}: the outputs in {work} were made with other settings{made}: {"; ".join(diff)}; '
                          f'{_ways_on(step)}')
    if old is None and write:
        os.makedirs(os.path.join(work, RECORD_DIR), exist_ok=True)
        camio.save_json(record_path(work, step), new)


def redo(args, steps):
    """--redo: remove the named steps' outputs and records, and every recorded output made from them (a record whose
    inputs name a removed step), before anything runs. Returns the steps whose outputs were removed."""
    work = args.work_dir
    bad = [s for s in steps if s not in RECORDED_STEPS]
    if bad:
        from misc.errors import BadInput
        raise BadInput(f'--redo {",".join(bad)}: only steps that keep outputs can be redone '
                       f'({", ".join(RECORDED_STEPS)}); the evaluation steps recompute every run')
    removed, todo = [], list(steps)
    while todo:
        s = todo.pop(0)
        if s in removed:
            continue
        removed.append(s)
        for rel in OUTPUTS[s]:
            p = os.path.join(work, rel)
            if os.path.isdir(p):
                shutil.rmtree(p)
                os.makedirs(p, exist_ok=True)
            elif os.path.isfile(p):
                os.remove(p)
        if os.path.isfile(record_path(work, s)):
            os.remove(record_path(work, s))
        for other in RECORDED_STEPS:  # what was made from s's outputs
            rec = load(work, other)
            if rec and not rec.get('damaged') and any(str(v).startswith(f'{s} record ')
                                                     for v in rec.get('inputs', {}).values()):
                todo.append(other)
    return removed
