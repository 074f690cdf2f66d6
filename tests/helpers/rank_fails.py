"""Test helper, run under torchrun: every rank starts the process group as run_sample does; the rank named by
argv[1] raises a bad-input error (argv[2]: 'now', or 'late' after one collective; a negative rank: every rank
fails), the others wait at a barrier that the failing rank never reaches, or with 'busy' work for 120 s first (a
long step of rank 0's, in no collective) and then wait."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from misc import distributed  # noqa: E402
from misc.errors import BadInput, cli  # noqa: E402


def main(argv):
    failing, when = int(argv[0]), argv[1]
    distributed.init('cpu')
    if when in ('late', 'busy'):
        distributed.barrier()
    if distributed.rank() == failing or failing < 0:
        raise BadInput(f'rank {distributed.rank()} read a bad list (planted)')
    t0 = time.time()
    if when == 'busy':
        time.sleep(120)
    distributed.barrier()  # the failing rank never comes
    print(f'rank {distributed.rank()} passed the barrier after {time.time() - t0:.1f} s', flush=True)


if __name__ == '__main__':
    cli(main, sys.argv[1:])
