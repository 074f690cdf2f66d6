"""Mutation check: does the test suite notice a wrong line? Applies each planted edit below, one at a time, to a
scratch copy of the repository, runs the tests on it and reports which edits the tests kill and which survive.

    python -m tools.mutate                    # every edit, each against the whole suite (stops at its first failure)
    python -m tools.mutate --only 3 7         # some of them
    python -m tools.mutate --fast             # each edit against the test files named with it (quicker, less sure)
    python -m tools.mutate --list             # what the edits are

Not part of CI (each edit runs the suite: an hour or more for the whole list on 2 cores). Honest by construction:
- the unmutated copy runs the same tests first; if they do not pass there, no edit is judged;
- an edit whose text is not found exactly once in its file is refused before anything runs (and
  tests/test_tools.py keeps every edit applying to the code);
- an edit is killed only when a test FAILS in its body (an assertion, or an exception the code raised), read from
  pytest's JUnit report: a collection or fixture error, a missing package, a timeout or a crash of pytest itself is
  reported as such, not as a kill;
- the report names the test that killed each edit, and says when it is not one of the tests named with the edit.
An edit that survives is a line no test looks at, or an equivalent edit (one that cannot change any result; marked
as such below, with why).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from misc.pyutils import format_seconds, format_table  # noqa: E402

# (what the edit does, file, text, replacement, test files that should notice it, equivalent: why it cannot change
# a result, or None)
EDITS = [
    ('L_WDW without the DC class weights', 'net/sfc_loss.py',
     'return (weight[1:].view(1, -1, 1, 1) * diff.abs()).mean()', 'return diff.abs().mean()',
     ['tests/test_sfc_loss.py'], None),
    ("background channel of L_WDW's label mask zeroed", 'step/train_sfc.py',
     'y_bg = torch.cat([torch.ones_like(y[:, :1]), y], dim=1)', 'y_bg = torch.cat([torch.zeros_like(y[:, :1]), y], dim=1)',
     ['tests/test_sfc_loss.py'],
     'L_WDW reads channels 1.. only (the authors: mean over classes 1..20), so the background entry of its mask is '
     'never read'),
    ('image bank draws from half the classes', 'misc/image_bank.py',
     'idx = torch.randint(0, self.n, (k,), generator=generator)',
     'idx = torch.randint(0, self.n // 2, (k,), generator=generator)', ['tests/test_image_bank.py'], None),
    ("image bank stores another row's crop mask", 'misc/image_bank.py',
     'self.mask.copy_(torch.where(filled.view(-1, 1, 1), mask[src].to(torch.uint8), self.mask))',
     'self.mask.copy_(torch.where(filled.view(-1, 1, 1), mask[(src - 1).clamp_min(0)].to(torch.uint8), self.mask))',
     ['tests/test_image_bank.py'], None),
    ("make_seg's flipped logits not flipped back", 'step/make_seg.py',
     'parts = [out[0:1], out[1:2].flip(-1)] if flip else [out]', 'parts = [out[0:1], out[1:2]] if flip else [out]',
     ['tests/test_deeplab.py'], None),
    ('--ir_bg_factor default 0.5 -> 0.6', 'run_sample.py', "'--ir_bg_factor', default=0.5,",
     "'--ir_bg_factor', default=0.6,", ['tests/test_authors_constants.py'], None),
    ('--sem_seg_bg_value default 0.25 -> 0.3', 'run_sample.py', "'--sem_seg_bg_value', default=0.25,",
     "'--sem_seg_bg_value', default=0.3,", ['tests/test_authors_constants.py'], None),
    ('--beta default 10 -> 8', 'run_sample.py', "'--beta', default=10,", "'--beta', default=8,",
     ['tests/test_authors_constants.py'], None),
    ('--exp_times default 8 -> 6', 'run_sample.py', "'--exp_times', default=8,", "'--exp_times', default=6,",
     ['tests/test_authors_constants.py'], None),
    ('--irn_lr default 0.1 -> 0.05', 'run_sample.py', "'--irn_lr', default=0.1,", "'--irn_lr', default=0.05,",
     ['tests/test_authors_constants.py'], None),
    ('run_voc.sh passes another SFC lr', 'run_voc.sh', 'SFC_LR=${SFC_LR:-0.1}', 'SFC_LR=${SFC_LR:-0.2}',
     ['tests/test_authors_constants.py'], None),
    ('random walk ignores the boundary map on its input', 'step/make_sem_seg.py',
     'x = torch.cat([g[1:], g2]) * (1 - edge)', 'x = torch.cat([g[1:], g2])', ['tests/test_irn.py'], None),
    ('second walk without the repeated power', 'step/make_sem_seg.py',
     'g2 = g.pow(args.sem_seg_power) if args.sem_seg_double_power else g', 'g2 = g', ['tests/test_irn.py'], None),
    ('IR labels: background pass without the 0.5 factor', 'step/cam_to_ir_label.py', 'f[0] *= bg_factor',
     'f[0] *= 1.0', ['tests/test_irn.py'], None),
    ('confusion matrix counts void GT pixels', 'misc/metrics.py', 'keep = gt != self.ignore',
     'keep = gt == gt', ['tests/test_metrics.py', 'tests/test_known_answers.py'], None),
    ('fused CAM weight applied to the classifier CAM', 'misc/camio.py',
     "return cams['cam'] + fuse_weight * cams['proto_cam']", "return fuse_weight * cams['cam'] + cams['proto_cam']",
     ['tests/test_known_answers.py'], None),
    ('make_cam normalises by the sum instead of the max', 'step/make_cam.py',
     'acc = acc / (acc.amax(dim=(1, 2), keepdim=True) + eps)', 'acc = acc / (acc.sum(dim=(1, 2), keepdim=True) + eps)',
     ['tests/test_make_cam.py'], None),
    ('PCM columns normalised over the second index', 'net/resnet50_sfc.py',
     'aff = aff / (aff.sum(dim=1, keepdim=True) + eps)', 'aff = aff / (aff.sum(dim=2, keepdim=True) + eps)',
     ['tests/test_resnet50_sfc.py'], None),
    ('prototype seeds without the background factor', 'net/resnet50_sfc.py', 'p[:, 0] *= bg_factor', 'p[:, 0] *= 1.0',
     ['tests/test_resnet50_sfc.py'], None),
    ('IRN displacement loss without its factor 2', 'net/resnet50_irn.py',
     "dp_fg = s_fg / (2 * c['fg'].to(dt) + eps)", "dp_fg = s_fg / (c['fg'].to(dt) + eps)", ['tests/test_irn.py'], None),
    ('SFC step without the gradient clip', 'step/train_sfc.py',
     'torch.nn.utils.clip_grad_norm_(model.parameters(), args.sfc_grad_clip)', 'pass',
     ['tests/test_e2e.py'], None),
    ('poly decay without its power', 'misc/torchutils.py',
     'f = (1 - (step - step % self.decay_every) / self.max_step) ** self.power',
     'f = (1 - (step - step % self.decay_every) / self.max_step)', ['tests/test_torchutils.py'], None),
    ('micro-batches weighted by the chunk count, not the batch', 'step/train_sfc.py',
     'frac = (sl.stop - sl.start) / n', 'frac = 1 / -(-n // mb)', ['tests/test_image_bank.py'], None),
    ('gradients not summed over the ranks (SFC)', 'step/train_sfc.py', '        distributed.sum_gradients(params)\n',
     '', ['tests/test_distributed.py'], None),
    ('data order ignores the seed', 'misc/trainutils.py',
     'g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))',
     'g = torch.Generator().manual_seed(int(epoch))', ['tests/test_image_bank.py'], None),
    ('balanced CE without the background group', 'net/seg_loss.py',
     'return (terms[0] * present[0] + terms[1] * present[1]) / present.sum().clamp_min(1)',
     'return terms[1] * present[1] / present[1].clamp_min(1)', ['tests/test_deeplab.py'], None),
    # --- the seams: whole forward passes, the step wiring, recipes, provenance, the device check ---
    ("L_PDW's gradient leaks into layer3 (side3 reads x3 undetached)", 'net/resnet50_sfc.py',
     'self.side3(x3.detach())', 'self.side3(x3)', ['tests/test_forward_golden.py'], None),
    ('hierarchical features resized with align_corners=True', 'net/resnet50_sfc.py',
     "s = F.interpolate(s, size=size, mode='bilinear', align_corners=False)",
     "s = F.interpolate(s, size=size, mode='bilinear', align_corners=True)", ['tests/test_forward_golden.py'], None),
    ("PCM's image resized with align_corners=False", 'net/resnet50_sfc.py',
     "F.interpolate(x, size=x4.shape[2:], mode='bilinear', align_corners=True)",
     "F.interpolate(x, size=x4.shape[2:], mode='bilinear', align_corners=False)", ['tests/test_forward_golden.py'],
     None),
    ('classification score as the max of the CAM instead of its mean', 'net/resnet50_sfc.py',
     'score = logits.mean(dim=(2, 3), keepdim=True)', 'score = logits.amax(dim=(2, 3), keepdim=True)',
     ['tests/test_forward_golden.py'], None),
    ("CAM network fuses the flipped view without flipping it back", 'net/resnet50_sfc.py',
     'return t[0:1] + t[1:2].flip(-1)', 'return t[0:1] + t[1:2]', ['tests/test_forward_golden.py'], None),
    ('IRN edge map as the sigmoid of the sum of the two views', 'net/resnet50_irn.py',
     'edge = torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2)',
     'edge = torch.sigmoid(edge_out[0] + edge_out[1].flip(-1))', ['tests/test_forward_golden.py'], None),
    ('EdgeDisplacement without the pad to the crop size', 'net/resnet50_irn.py',
     'edge_out, dp_out = super().forward(F.pad(x, [0, pw - w, 0, ph - h]))',
     'edge_out, dp_out = super().forward(x)', ['tests/test_forward_golden.py'], None),
    ('IRN mean shift applied in training mode too', 'net/resnet50_irn.py',
     'return x if self.training else x - self.running_mean.view(1, -1, 1, 1)',
     'return x - self.running_mean.view(1, -1, 1, 1)', ['tests/test_forward_golden.py'], None),
    ('all_gather outputs in the input layout, input sent contiguous', 'misc/distributed.py',
     'parts = [torch.empty(src.shape, dtype=src.dtype, device=src.device) for _ in range(world())]',
     'parts = [torch.empty_like(t) for _ in range(world())]', ['tests/test_distributed.py'], None),
    ('an interrupted inference step drops its queued writes (as before the drain)', 'misc/workpool.py',
     '                self.drain()  # submitted, whose results were computed, so that nothing done is lost; then '
     're-raise\n        finally:\n            self.pool.shutdown(wait=True)\n',
     '                pass\n        finally:\n            self.pool.shutdown(wait=True, cancel_futures=True)\n',
     ['tests/test_robustness.py'], None),
    ('make_cam record without --cam_scales', 'misc/provenance.py',
     "'make_cam': ['dataset', 'amp', 'backbone_width', 'sfc_proto_bg_factor', 'cam_scales', 'cam_bg_offset',",
     "'make_cam': ['dataset', 'amp', 'backbone_width', 'sfc_proto_bg_factor', 'cam_bg_offset',",
     ['tests/test_provenance.py'], None),
    ('--redo leaves what was made from the step', 'misc/provenance.py', '                todo.append(other)',
     '                pass', ['tests/test_provenance.py'], None),
    ('run_voc.sh ignores SEED from the environment', 'run_voc.sh', 'SEED=${SEED:-10}', 'SEED=10',
     ['tests/test_recipes.py'], None),
    ("run_demo.sh drops the flags after -- in DeepLab's call", 'run_demo.sh',
     '--make_seg_pass True --eval_seg_pass True "${EXTRA[@]}"', '--make_seg_pass True --eval_seg_pass True',
     ['tests/test_recipes.py'], None),
    ('loader workers not capped at the share of the cores', 'run_sample.py',
     '        args.num_workers_asked, args.num_workers = args.num_workers, share',
     '        args.num_workers_asked = None', ['tests/test_recipes.py'], None),
    ('gpu_check.sh reports a failed part as done', 'tools/gpu_check.sh', '  if [ $rc -eq 0 ]; then',
     '  if true; then', ['tests/test_tools.py'], None),
    # --- training steps, loaders and the flags each step reads ---
    ("L_WDW given the half-scale prototype CAM instead of the half-scale PCM CAM", 'step/train_sfc.py',
     "sfc_loss.cross_scale_loss(out1['cam'], out2['cam'], y_bg, w_ch)",
     "sfc_loss.cross_scale_loss(out1['cam'], out2['proto_cam'], y_bg, w_ch)", ['tests/test_golden_steps.py'], None),
    ("the step's L_WDW without the DC class weights", 'step/train_sfc.py', 'y_bg, w_ch) * frac',
     'y_bg, torch.ones_like(w_ch)) * frac', ['tests/test_golden_steps.py'], None),
    ('half-scale SFC input resized with align_corners=False', 'step/train_sfc.py',
     "x2 = F.interpolate(x, scale_factor=args.sfc_half_scale, mode='bilinear', align_corners=True)",
     "x2 = F.interpolate(x, scale_factor=args.sfc_half_scale, mode='bilinear', align_corners=False)",
     ['tests/test_golden_steps.py'], None),
    ('DeepLab loss not divided by iter_size', 'step/train_seg.py', 'loss = loss / iter_size', 'loss = loss',
     ['tests/test_golden_steps.py'], None),
    ('ASPP biases take weight decay', 'step/train_seg.py',
     "{'params': head_b, 'lr': lr * args.seg_head_bias_lr_mult, 'weight_decay': 0.0}",
     "{'params': head_b, 'lr': lr * args.seg_head_bias_lr_mult, 'weight_decay': wd}", ['tests/test_golden_steps.py'],
     None),
    ('ASPP weights without weight decay', 'step/train_seg.py',
     "{'params': head_w, 'lr': lr * args.seg_head_lr_mult, 'weight_decay': wd}",
     "{'params': head_w, 'lr': lr * args.seg_head_lr_mult, 'weight_decay': 0.0}", ['tests/test_golden_steps.py'],
     None),
    ("make_cam's pyramid resized bilinear instead of bicubic", 'voc12/dataloader.py',
     's_img = img if s == 1.0 else imutils.pil_rescale(img, s, 3)',
     's_img = img if s == 1.0 else imutils.pil_rescale(img, s, 1)', ['tests/test_golden_loaders.py'], None),
    ('the flipped view flipped along the height', 'voc12/dataloader.py',
     'out.append(np.ascontiguousarray(np.stack([x, x[:, :, ::-1]])))',
     'out.append(np.ascontiguousarray(np.stack([x, x[:, ::-1, :]])))', ['tests/test_golden_loaders.py'], None),
    ("IRN's reduced label resized bicubic instead of nearest", 'voc12/dataloader.py',
     'reduced = imutils.pil_rescale(label.astype(np.uint8), 0.25, 0)',
     'reduced = imutils.pil_rescale(label.astype(np.uint8), 0.25, 3)', ['tests/test_golden_loaders.py'], None),
    ("IRN's rescale resizes the label bicubic", 'voc12/dataloader.py',
     'img, label = imutils.pil_resize(img, size, 3), imutils.pil_resize(label, size, 0)',
     'img, label = imutils.pil_resize(img, size, 3), imutils.pil_resize(label, size, 3)',
     ['tests/test_golden_loaders.py'], None),
    ('cam_to_ir_label reads --seg_crf_iters for its CRF', 'step/cam_to_ir_label.py',
     'return dict(t=args.ir_crf_iters', 'return dict(t=args.seg_crf_iters', ['tests/test_flag_probes.py'], None),
    ('eval_cam fuses with --ir_proto_weight', 'step/eval_cam.py',
     'sources=sources, fuse_weight=args.cam_eval_fuse_weight', 'sources=sources, fuse_weight=args.ir_proto_weight',
     ['tests/test_flag_probes.py'], None),
    ('a resumed train_sfc forgets the best-on-GT record', 'step/train_sfc.py',
     "start, best = int(state['step']), dict(state['best'])",
     "start, best = int(state['step']), {'score': -1.0, 'step': None}", ['tests/test_resume.py'], None),
    ("make_cam's plan counts its warm-up image", 'misc/plan.py', 'return (end - done[0]) / k, k',
     'return (end - done[0]) / (k + 1), k', ['tests/test_scripts.py'], None),
    ("IRN micro-batches normalised by their own label counts", 'step/train_irn.py',
     '*(t[sl] for t in labels), counts=counts)', '*(t[sl] for t in labels), counts=None)',
     ['tests/test_golden_steps.py'], None),
    ('IRN displacement layers at the edge lr', 'step/train_irn.py',
     "{'params': dp_p, 'lr': args.irn_lr * args.irn_dp_lr_mult,", "{'params': dp_p, 'lr': args.irn_lr,",
     ['tests/test_golden_steps.py'], None),
    ("IRN affinity labels: negatives include the ignored pixels", 'step/train_irn.py',
     '    return pos & (a == 0), pos & (a > 0), ~eq & valid', '    return pos & (a == 0), pos & (a > 0), ~eq',
     ['tests/test_golden_steps.py'], None),
    ("SFC's random resize-long bilinear instead of bicubic", 'misc/imutils.py', '    return pil_rescale(img, s, 3)',
     '    return pil_rescale(img, s, 1)', ['tests/test_golden_loaders.py'], None),
    ("the crop box's height and width spaces swapped", 'misc/imutils.py', '    w_space, h_space = w - crop, h - crop',
     '    h_space, w_space = w - crop, h - crop', ['tests/test_golden_loaders.py'], None),
    ("DeepLab's training label resized bicubic", 'voc12/dataloader.py',
     '        label = imutils.pil_resize(label, (h, w), 0)', '        label = imutils.pil_resize(label, (h, w), 3)',
     ['tests/test_golden_loaders.py'], None),
    ("DeepLab's flip leaves the label unflipped", 'voc12/dataloader.py',
     '            x, label = x[:, ::-1], label[:, ::-1]', '            x = x[:, ::-1]', ['tests/test_golden_loaders.py'],
     None),
    ('DeepLab loss from the full-scale MSC output only', 'step/train_seg.py',
     'for o, lab, d in zip(outs, labels, dens))', 'for o, lab, d in zip(outs[:1], labels[:1], dens[:1]))',
     ['tests/test_golden_steps.py'], None),
    ("the default DeepLab recipe picks scales from a list instead of uniformly", 'run_sample.py',
     "'seg_scales': [0.5, 2.0], 'seg_scale_mode': 'uniform', 'seg_loss': 'balanced'},",
     "'seg_scales': [0.5, 2.0], 'seg_scale_mode': 'choice', 'seg_loss': 'balanced'},",
     ['tests/test_authors_constants.py'], None),
    ("run_demo.sh leaves DeepLab's crops at the recipe's rescaling", 'run_demo.sh',
     '--seg_lr "$SEG_LR" --seg_scales $SEG_SCALES', '--seg_lr "$SEG_LR"', ['tests/test_recipes.py'], None),
    ("stage_study reads the --quick block's settings as the demo's", 'tools/stage_study.py',
     "        raise ValueError(f'run_demo.sh has no overridable {name}')\n    return m[-1]",
     "        raise ValueError(f'run_demo.sh has no overridable {name}')\n    return m[0]", ['tests/test_standin.py'], None),
    ('stage_study reuses a folder that holds a finished run without asking the pipeline', 'tools/stage_study.py',
     "    env = dict(os.environ, SEED=str(seed), DATA_SEED=str(data_seed), **env_extra)",
     "    if os.path.isfile(os.path.join(work, 'metrics', 'eval_seg.json')):\n        return 0.0\n"
     "    env = dict(os.environ, SEED=str(seed), DATA_SEED=str(data_seed), **env_extra)", ['tests/test_recipes.py'], None),
    ("stage_study's failure drops the pipeline's line naming the changed flag", 'tools/stage_study.py',
     "stopped (exit {r.returncode}): {lines[-1] if lines else \"\"} '", "stopped (exit {r.returncode}) '",
     ['tests/test_recipes.py'], None),
    ("run_demo.sh --full trains DeepLab on train's 200 images", 'run_demo.sh',
     'INFER_LIST=$META/train_aug_val.txt SEG_TRAIN_LIST=$META/train_aug.txt',
     'INFER_LIST=$META/train_aug_val.txt SEG_TRAIN_LIST=$META/train.txt', ['tests/test_recipes.py'], None),
    ("stage_study's --full GT oracle copies the GT of train only", 'tools/stage_study.py',
     "gt_copy('train_aug.txt' if full else 'train.txt',", "gt_copy('train.txt',", ['tests/test_recipes.py'], None),
    ('stage_study reuses a finished oracle made from an older run', 'tools/stage_study.py',
     '        if changed or not os.path.isfile(source):', '        if False:', ['tests/test_recipes.py'], None),
    ("stage_study's --full oracles read the demo's settings, not --full's", 'tools/stage_study.py',
     '    if full:\n        for block in', '    if False:\n        for block in',
     ['tests/test_standin.py', 'tests/test_recipes.py'], None),
    ("run_demo.sh --full gives DeepLab the demo's 300 updates", 'run_demo.sh', '  SEG_ITERS=${SEG_ITERS:-900}',
     '  SEG_ITERS=${SEG_ITERS:-300}', ['tests/test_recipes.py', 'tests/test_standin.py'], None),
    ("walk_oracle walks with args.json's flags, not make_sem_seg's record", 'tools/walk_oracle.py',
     "**{**camio.load_json(path), **record['flags']}", "**{**record['flags'], **camio.load_json(path)}",
     ['tests/test_walk_oracle.py'], None),
    ("walk_oracle marks the pixel above a vertical change, not the one below", 'tools/walk_oracle.py',
     '    b[1:, :] |= g[1:, :] != g[:-1, :]', '    b[:-1, :] |= g[1:, :] != g[:-1, :]',
     ['tests/test_walk_oracle.py'], None),
    ('walk_oracle ignores --bg_values', 'tools/walk_oracle.py', "({} if p is None else {'sem_seg_bg_value': p})",
     '{}', ['tests/test_walk_oracle.py'], None),
    ('walk_oracle walks CAMs remade after the pseudo masks', 'tools/walk_oracle.py', '            if now != then:',
     '            if False:', ['tests/test_walk_oracle.py'], None),
    ('walk_oracle counts an edge of exactly 0.5 as found', 'tools/walk_oracle.py', '    above = e > threshold',
     '    above = e >= threshold', ['tests/test_walk_oracle.py'], None),
]


def scratch_copy(dest):
    """The tracked files of the repository (and untracked ones git does not ignore) copied to dest."""
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split('\n')
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, f))


def applies(root, edit):
    """The edit's text is found exactly once in its file (else the edit no longer describes the code)."""
    _, path, old, _, _, _ = edit
    p = os.path.join(root, path)
    return os.path.isfile(p) and open(p, encoding='utf-8').read().count(old) == 1


def apply(dest, path, old, new):
    p = os.path.join(dest, path)
    text = open(p, encoding='utf-8').read()
    with open(p, 'w', encoding='utf-8') as f:
        f.write(text.replace(old, new))


ENVIRONMENT_ERRORS = ('ImportError', 'ModuleNotFoundError', 'PermissionError')


def outcome(xml_path):
    """(failed tests [(test id, why)], errors [(test id, why)]) from pytest's JUnit report: a <failure> is a test
    that failed in its body; an <error> failed in collection or set-up. A failure caused by a missing package is
    moved to the errors."""
    failed, errors = [], []
    if not os.path.isfile(xml_path):
        return failed, errors
    for case in ET.parse(xml_path).getroot().iter('testcase'):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag, out in (('failure', failed), ('error', errors)):
            for el in case.findall(tag):
                msg = (el.get('message') or '').strip().splitlines()[0][:160] if el.get('message') else ''
                kind = msg.split(':', 1)[0].strip()
                if tag == 'failure' and kind in ENVIRONMENT_ERRORS:
                    errors.append((name, msg))
                else:
                    out.append((name, msg))
    return failed, errors


def run_tests(d, tests, timeout):
    """pytest on the copy d: (outcome, seconds) with outcome 'passed', 'failed' (failed, errors), 'error' or
    'timeout'."""
    xml = os.path.join(d, '.mutate_report.xml')
    if os.path.exists(xml):
        os.remove(xml)
    cmd = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', f'--junitxml={xml}', *tests]
    t0 = time.time()
    try:
        out = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ('timeout', [], []), time.time() - t0
    failed, errors = outcome(xml)
    if out.returncode == 0:
        return ('passed', [], []), time.time() - t0
    if failed:
        return ('failed', failed, errors), time.time() - t0
    tail = (out.stdout + out.stderr).strip().splitlines()[-1:] or ['pytest exited with status %d' % out.returncode]
    return ('error', failed, errors or [('pytest', tail[0][:160])]), time.time() - t0


def judge(edit, result):
    """The verdict of one edit from its test run."""
    what, path, old, new, tests, equivalent = edit
    kind, failed, errors = result
    if kind == 'passed':
        return ('survived (equivalent)' if equivalent else 'SURVIVED'), equivalent or ''
    if kind == 'timeout':
        return 'timeout', 'no verdict: the tests ran past --timeout'
    if kind == 'error':
        return 'error', f'no verdict: {errors[0][0]}: {errors[0][1]}'
    killer, why = failed[0]
    named = any(killer.replace('.', '/').startswith(t[:-3]) for t in tests)
    return 'killed', f'{killer}' + ('' if named else ' (not one of the tests named with the edit)')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', type=int, nargs='+', help='edit numbers (see --list)')
    p.add_argument('--fast', action='store_true', help='run only the test files named with each edit')
    p.add_argument('--timeout', type=int, default=1800, help='seconds per edit')
    p.add_argument('--list', action='store_true')
    a = p.parse_args(argv)
    chosen = [(i, e) for i, e in enumerate(EDITS, 1) if not a.only or i in a.only]
    if a.list:
        print(format_table(['#', 'edit', 'file', 'equivalent'], [[i, e[0], e[1], 'yes' if e[5] else ''] for i, e in chosen]))
        return []
    stale = [(i, e) for i, e in chosen if not applies(ROOT, e)]
    if stale:
        for i, e in stale:
            print(f'[mutate] edit {i} ({e[0]}) does not apply: its text is not found exactly once in {e[1]}')
        raise SystemExit('refused: update the edits above to the code first')
    rows = []
    with tempfile.TemporaryDirectory(prefix='sfc_mutate_') as d:
        scratch_copy(d)
        baseline = sorted({t for _, e in chosen for t in e[4]}) if a.fast else ['tests']
        (kind, failed, errors), took = run_tests(d, baseline, a.timeout * 2)
        print(f'[mutate] unmutated copy: {kind} in {format_seconds(took)} ({" ".join(baseline)})', flush=True)
        if kind != 'passed':
            why = (failed or errors or [('', kind)])[0]
            raise SystemExit(f'refused: the tests do not pass on the unmutated copy ({why[0]} {why[1]})')
        for i, e in chosen:
            what, path, old, new, tests, equivalent = e
            src = os.path.join(d, path)
            original = open(src, encoding='utf-8').read()
            apply(d, path, old, new)
            try:
                result, took = run_tests(d, tests if a.fast else ['tests'], a.timeout)
            finally:
                with open(src, 'w', encoding='utf-8') as f:
                    f.write(original)
            verdict, detail = judge(e, result)
            rows.append([i, what, verdict, format_seconds(took), detail])
            print(f'[mutate] {i:2d} {verdict:9s} {format_seconds(took):>7s}  {what}  {detail}', flush=True)
    print(format_table(['#', 'edit', 'verdict', 'time', 'killed by / why'], rows))
    bad = [r for r in rows if r[2] not in ('killed', 'survived (equivalent)')]
    print(f'{len(rows)} edits: {sum(r[2] == "killed" for r in rows)} killed, '
          f'{sum(r[2].startswith("survived") for r in rows)} equivalent, {len(bad)} survived or without a verdict')
    return rows


if __name__ == '__main__':
    main()
