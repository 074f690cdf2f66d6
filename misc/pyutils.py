"""Small helpers shared by every step: typed boolean flags, timers, running means, tee logging."""
import argparse
import json
import os
import sys

from misc.errors import Unavailable


def str2bool(v):
    """argparse type for booleans: 'True'/'False' (and yes/no/1/0), never Python's truthy str."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ('true', 't', 'yes', 'y', '1'):
        return True
    if s in ('false', 'f', 'no', 'n', '0'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean (True/False), got {v!r}')


class AverageMeter:
    """Running means of named scalars; pop() returns and resets one. Values may be device tensors: they are summed
    where they are and read (one host sync) only when a mean is asked for."""

    def __init__(self):
        self._sum, self._cnt = {}, {}

    def add(self, values):
        for k, v in values.items():
            v = v.detach() if hasattr(v, 'detach') else float(v)
            self._sum[k] = self._sum.get(k, 0.0) + v
            self._cnt[k] = self._cnt.get(k, 0) + 1

    def get(self, key):
        return float(self._sum[key]) / max(1, self._cnt[key])

    def pop(self, key):
        v = self.get(key)
        self._sum[key], self._cnt[key] = 0.0, 0
        return v


def format_seconds(s):
    s = float(s)
    if s < 60:
        return f'{s:.1f}s'
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Tee:
    """Context manager copying stdout into a log file (append mode), restored on exit."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self._file = open(self.path, 'a', encoding='utf-8')
        self._stdout = sys.stdout
        sys.stdout = self
        return self

    def write(self, s):
        self._stdout.write(s)
        self._file.write(s)

    def flush(self):
        self._stdout.flush()
        self._file.flush()

    def isatty(self):
        return False

    def __exit__(self, *exc):
        sys.stdout = self._stdout
        self._file.close()
        return False


def format_table(header, rows, floatfmt='{:.4f}'):
    """Plain-text table: header is a list of column names, rows lists of values."""
    cells = [[str(h) for h in header]]
    for r in rows:
        cells.append([floatfmt.format(v) if isinstance(v, float) else str(v) for v in r])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for j, row in enumerate(cells):
        lines.append('  '.join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(row)))
        if j == 0:
            lines.append('  '.join('-' * w for w in widths))
    return '\n'.join(lines)


class ScalarLog:
    """Training curves: one JSON line {"step", name: value...} per add() in `path` and, with tb_dir, the same
    scalars as TensorBoard events (needs the optional `tensorboard` package). Values may be device tensors: lines
    are kept until flush() (at the training loop's progress lines and before every resume checkpoint), which reads
    them all with one host sync. Opening at start_step > 0 (a resumed run) first drops the lines of steps after
    it, so a resumed run's log reads as if the run had never stopped."""

    def __init__(self, path, start_step=0, tb_dir=None, enabled=True):
        self.path, self.enabled = path, enabled
        if not enabled:  # ranks other than 0 under torchrun: rank 0 writes the curve
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        kept = []
        if start_step > 0 and os.path.isfile(path):
            with open(path, encoding='utf-8') as f:
                for line in f:
                    try:
                        if json.loads(line)['step'] <= start_step:
                            kept.append(line if line.endswith('\n') else line + '\n')
                    except (ValueError, KeyError, TypeError):
                        break  # a line cut by a kill: everything after it is dropped too
        from misc.camio import atomic_write

        def write(tmp):
            with open(tmp, 'w', encoding='utf-8') as f:
                f.writelines(kept)
        atomic_write(path, write)
        self._file = open(path, 'a', encoding='utf-8')
        self._pending = []
        self._tb = None
        if tb_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise Unavailable(f'--tensorboard True needs the tensorboard package ({e}); run '
                                  f'`pip install tensorboard` in this environment or pass --tensorboard False') from None
            self._tb = SummaryWriter(tb_dir, purge_step=start_step + 1 if start_step > 0 else None)

    def add(self, step, **values):
        if not self.enabled:
            return
        self._pending.append((int(step), {k: v.detach() if hasattr(v, 'detach') else float(v)
                                          for k, v in values.items()}))

    def flush(self):
        """Write the lines kept since the last flush (device values read together: one sync)."""
        if not self.enabled or not self._pending:
            return
        import torch
        tensors = [v for _, vals in self._pending for v in vals.values() if torch.is_tensor(v)]
        dev = tensors[0].device if tensors else None
        read = iter(torch.stack([t.double().reshape(()).to(dev) for t in tensors]).tolist() if tensors else [])
        for step, vals in self._pending:
            vals = {k: next(read) if torch.is_tensor(v) else v for k, v in vals.items()}
            self._file.write(json.dumps({'step': step, **vals}) + '\n')
            if self._tb is not None:
                for k, v in vals.items():
                    self._tb.add_scalar(k, v, step)
        self._file.flush()
        self._pending = []

    def close(self):
        if not self.enabled:
            return
        self.flush()
        self._file.close()
        if self._tb is not None:
            self._tb.close()
