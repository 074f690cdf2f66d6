"""Small helpers shared by every step: typed boolean flags, timers, running means, tee logging."""
import argparse
import sys
import time


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
    """Running means of named scalars; pop() returns and resets one."""

    def __init__(self):
        self._sum, self._cnt = {}, {}

    def add(self, values):
        for k, v in values.items():
            self._sum[k] = self._sum.get(k, 0.0) + float(v)
            self._cnt[k] = self._cnt.get(k, 0) + 1

    def get(self, key):
        return self._sum[key] / max(1, self._cnt[key])

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
