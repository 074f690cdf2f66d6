"""The one place that knows about ranks: torch.distributed started from torchrun's environment.

    torchrun --nproc_per_node 4 run_sample.py ...                # one process per GPU (NCCL), or per CPU share (gloo)
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 run_sample.py ...

A plain `python run_sample.py` is one process (rank 0 of 1) and none of this does anything. Training steps run
the same global batch as one process would: every rank loads its slice of it (misc.trainutils.StepSampler),
batch-wide normalisers are summed over the ranks before dividing, and gradients are summed over the ranks by
one all-reduce per update (`sum_gradients`), so every rank holds the one-process gradient and takes the same
optimizer step. Inference steps give each rank every world-th image of the work left (`shard`). Rank 0 alone
writes checkpoints, logs, curves and metrics, and runs the evaluation steps.
"""
import datetime
import hashlib
import json
import os
import sys
import time

import torch
import torch.distributed as dist

from misc.errors import BadInput, Unavailable

TIMEOUT_MIN = 60  # a rank waits this long at a collective for the others (long CRF or eval steps on rank 0)


def env_world():
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) without it."""
    return (int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0)),
            int(os.environ.get('WORLD_SIZE', 1)))


def launched():
    """True under torchrun (or any launcher that sets its environment: RANK, WORLD_SIZE, MASTER_ADDR)."""
    return all(k in os.environ for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'))


def init(device):
    """Start the process group when launched by torchrun (NCCL on CUDA, gloo on CPU), also for one process, so that
    `torchrun --nproc_per_node 1` runs every collective of the several-GPU path; return this rank's device:
    'cuda:<local rank>' for CUDA, the device unchanged otherwise. A plain `python run_sample.py` starts nothing.
    Also starts the failure watch (stop_on_failure)."""
    _, local, _ = env_world()
    if not launched():
        return device
    if torch.device(device).type == 'cuda':
        if local >= torch.cuda.device_count():
            raise Unavailable(f'local rank {local} has no GPU: this machine sees {torch.cuda.device_count()}; '
                              f'lower --nproc_per_node')
        torch.cuda.set_device(local)
        device, backend = f'cuda:{local}', 'nccl'
    else:
        backend = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=TIMEOUT_MIN))
        if dist.get_world_size() > 1:  # one process has no one to tell
            _watch_failures()
    return device


# --- a rank that stops on an error stops the others ------------------------------------------------------------
# torchrun stops the other workers of its own machine when one fails, but a rank on another machine would wait at
# its next collective until TIMEOUT_MIN. So a failing rank writes its message to the rendezvous store (reached by
# every machine), and every rank watches that key from a thread: when another rank failed, it exits at once with
# the failing rank's status. The message is printed once, by the first rank that failed.
FAILED_KEY = 'sfc/failed'
WATCH_S = 2.0  # seconds between two looks at the store


def _store():
    return dist.distributed_c10d._get_default_store()


_WATCH = {}  # the watch thread and the event that stops it (shutdown stops it before the group ends)


def _watch_failures():
    import threading
    store, me, stop = _store(), dist.get_rank(), threading.Event()

    def watch():
        while not stop.wait(WATCH_S):
            try:
                if not store.check([FAILED_KEY]):
                    continue
                who, status = store.get(FAILED_KEY).decode().split(' ', 1)
            except Exception:  # the store went away: the run is ending (rank 0's agent stopped)
                return
            if int(who) != me:
                sys.stderr.flush()
                os._exit(int(status))
    thread = threading.Thread(target=watch, name='sfc-failure-watch', daemon=True)
    thread.start()
    _WATCH.update(thread=thread, stop=stop)


def _stop_watch():
    if _WATCH:
        _WATCH['stop'].set()
        _WATCH['thread'].join()
        _WATCH.clear()


def announce_failure(status):
    """Called by a rank that stops on an error: tell the other ranks (they exit with `status`). True when this rank
    is the first to fail (it prints the message; later ones stay silent)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    mine = f'{dist.get_rank()} {int(status)}'
    try:
        first = _store().compare_set(FAILED_KEY, '', mine).decode()
    except Exception:  # no store to reach: only this rank knows
        return True
    return first == mine


def local_world():
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get('LOCAL_WORLD_SIZE', 1))


def usable_cores():
    """CPU cores this process may run on (its affinity mask: what a cluster scheduler granted)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_share():
    """This process's share of the machine's usable cores: the cores split evenly over the ranks on this machine,
    so that ranks x their worker processes never exceed the cores."""
    return max(1, usable_cores() // local_world())


def active():
    """A process group is running (torchrun, any number of processes): collectives go through it."""
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if active() else 0


def world():
    return dist.get_world_size() if active() else 1


def is_main():
    return rank() == 0


def barrier():
    if active():
        dist.barrier()


def shutdown():
    """End the process group after a run that finished (NCCL warns, and can hang at exit, without it)."""
    _stop_watch()  # no thread may be inside a store call while the group and its store go away
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_cat(t):
    """The tensors of every rank (same shape) concatenated along dim 0 in rank order."""
    if not active():
        return t
    # Every buffer in one memory order (plain contiguous): empty_like(t) would copy a channels-last input's
    # layout into the outputs while t.contiguous() sends NCHW, and a collective that mixes the two fills the
    # outputs in the wrong order without an error (a known PyTorch all_gather bug with mixed memory formats). The
    # result is given back in the input's layout.
    src = t.contiguous()
    parts = [torch.empty(src.shape, dtype=src.dtype, device=src.device) for _ in range(world())]
    dist.all_gather(parts, src)
    out = torch.cat(parts)
    if out.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def all_reduce_sum(t):
    """Sum over the ranks (a new tensor; the input is unchanged)."""
    if not active():
        return t
    out = t.clone(memory_format=torch.contiguous_format)  # one memory order on every rank (see all_gather_cat)
    dist.all_reduce(out)
    return out


def sum_gradients(params):
    """Replace each gradient by its sum over the ranks: one all-reduce over a flat buffer. Only parameters that
    train and received a gradient take part (frozen and no-grad parts never enter the synchronisation)."""
    if not active():
        return
    grads = [p.grad for p in params if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast(obj):
    """Rank 0's picklable object on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items):
    """This rank's share of a list: items rank, rank + world, ... (all of them for one process)."""
    return items[rank()::world()]


def split_batch(n, flag):
    """Images per rank of a global batch of n; an error naming the flag when n does not split evenly."""
    if n % world():
        raise BadInput(f'{flag}: a global batch of {n} images does not split across {world()} processes; use a '
                       f'batch divisible by the process count (the batch flags are the global batch)')
    return n // world()


def check_list(n, path, flag):
    """An error when a list has fewer images than there are processes (some rank would have nothing)."""
    if n < world():
        raise BadInput(f'{flag} {path} has {n} images, fewer than the {world()} processes: start fewer '
                       f'(torchrun --nproc_per_node) or use a longer list')


def check_same_args(args, ignore=('device', 'num_workers', 'num_workers_asked', 'ir_crf_workers', 'seg_crf_workers')):
    """Stop when the ranks were started with different arguments (a rank each from a different command line). The
    device and the worker counts are per machine (resolved from its cores) and may differ."""
    if not active():
        return
    d = {k: v for k, v in sorted(vars(args).items()) if k not in ignore}
    digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
    gathered = [None] * world()
    dist.all_gather_object(gathered, (digest, d))
    if len({g[0] for g in gathered}) > 1:
        ref = gathered[0][1]
        diff = sorted({k for _, other in gathered[1:] for k in set(ref) | set(other) if ref.get(k) != other.get(k)})
        raise BadInput(f'the {world()} processes were started with different arguments ({", ".join(diff[:6])}): '
                       f'start every rank with the same command line')
