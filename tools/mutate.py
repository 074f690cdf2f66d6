"""Mutation check: does the test suite notice a wrong line? Applies each planted edit below, one at a time, to a
scratch copy of the repository, runs the tests on it and reports which edits the tests kill and which survive.

    python -m tools.mutate                    # every edit, each against the whole suite (stops at its first failure)
    python -m tools.mutate --only 3 7         # some of them
    python -m tools.mutate --fast             # each edit against the test files named with it (quicker, less sure)
    python -m tools.mutate --list             # what the edits are

Not part of CI (each edit runs the suite: an hour or more for the whole list on 2 cores). An edit that survives is
a line no test looks at, or an equivalent edit (one that cannot change any result; marked as such below, with
why). An edit whose text no longer matches the source is reported as stale: update the list with the code.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

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
     'self.mask[cls] = mask[src].to(torch.uint8)', 'self.mask[cls] = mask[src - 1].to(torch.uint8)',
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
    ('run_voc.sh passes another SFC lr', 'run_voc.sh', 'SFC_LR=0.1 ', 'SFC_LR=0.2 ',
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
     'terms = [(ce * m).sum() / d for m, d in groups if d > 0]',
     'terms = [(ce * m).sum() / d for m, d in groups[1:] if d > 0]', ['tests/test_deeplab.py'], None),
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


def apply(dest, path, old, new):
    p = os.path.join(dest, path)
    text = open(p, encoding='utf-8').read()
    if text.count(old) != 1:
        return False
    with open(p, 'w', encoding='utf-8') as f:
        f.write(text.replace(old, new))
    return True


def run_edit(i, edit, fast, timeout):
    what, path, old, new, tests, equivalent = edit
    with tempfile.TemporaryDirectory(prefix='sfc_mutate_') as d:
        scratch_copy(d)
        if not apply(d, path, old, new):
            return 'stale', 0.0, f'the text is not found once in {path}'
        t0 = time.time()
        cmd = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', *(tests if fast else ['tests'])]
        try:
            out = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 'timeout', time.time() - t0, ''
        took = time.time() - t0
        failed = [line.split(' ')[1] for line in out.stdout.splitlines() if line.startswith(('FAILED', 'ERROR'))]
        if out.returncode == 0:
            return ('survived (equivalent)' if equivalent else 'SURVIVED'), took, equivalent or ''
        return 'killed', took, failed[0] if failed else out.stdout.strip().splitlines()[-1][:80]


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
    rows = []
    for i, e in chosen:
        verdict, took, detail = run_edit(i, e, a.fast, a.timeout)
        rows.append([i, e[0], verdict, format_seconds(took), detail])
        print(f'[mutate] {i:2d} {verdict:9s} {format_seconds(took):>7s}  {e[0]}  {detail}', flush=True)
    print(format_table(['#', 'edit', 'verdict', 'time', 'first failing test / why'], rows))
    survived = [r for r in rows if r[2] in ('SURVIVED', 'stale', 'timeout')]
    print(f'{len(rows)} edits: {sum(r[2] == "killed" for r in rows)} killed, '
          f'{sum(r[2].startswith("survived") for r in rows)} equivalent, {len(survived)} survived, stale or timed out')
    return rows


if __name__ == '__main__':
    main()
