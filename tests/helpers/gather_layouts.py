"""Test helper, run under torchrun: misc.distributed's collectives on tensors of every memory layout against the
values computed locally. Exits non-zero on a mismatch; with argv[1] == 'old', checks the gather as it was written
before (outputs shaped like a channels-last input, the input sent contiguous) and reports whether it scrambles."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from misc import distributed  # noqa: E402


def value(rank, shape):
    return torch.arange(int(torch.tensor(shape).prod()), dtype=torch.float32).reshape(shape) * 10 + rank


def old_gather(t):
    parts = [torch.empty_like(t) for _ in range(distributed.world())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def main():
    distributed.init('cpu')
    r, w = distributed.rank(), distributed.world()
    shape = (2, 3, 4, 5)
    want = torch.cat([value(k, shape) for k in range(w)])
    gather = old_gather if sys.argv[1:] == ['old'] else distributed.all_gather_cat
    bad = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        t = value(r, shape).contiguous(memory_format=fmt)
        got = gather(t)
        if not torch.equal(got, want):
            bad.append(f'all_gather_cat {fmt}')
        if gather is not old_gather and not got.is_contiguous(memory_format=fmt):
            bad.append(f'all_gather_cat layout {fmt}')
        s = distributed.all_reduce_sum(t)
        if not torch.equal(s, sum(value(k, shape) for k in range(w))):
            bad.append(f'all_reduce_sum {fmt}')
    mixed = value(r, shape).contiguous(memory_format=torch.channels_last if r % 2 else torch.contiguous_format)
    if gather is not old_gather and not torch.equal(gather(mixed), want):
        bad.append('all_gather_cat, ranks in different layouts')
    print(f'rank {r}: ' + ('; '.join(bad) + ' WRONG' if bad else 'all equal'), flush=True)
    distributed.shutdown()
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
