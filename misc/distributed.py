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

import torch
import torch.distributed as dist

from misc.errors import BadInput, Unavailable

TIMEOUT_MIN = 60  # a rank waits this long at a collective for the others (long CRF or eval steps on rank 0)


def env_world():
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) without it."""
    return (int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0)),
            int(os.environ.get('WORLD_SIZE', 1)))


def init(device):
    """Start the process group when launched by torchrun with more than one process (NCCL on CUDA, gloo on CPU)
    and return this rank's device: 'cuda:<local rank>' for CUDA, the device unchanged otherwise."""
    rank, local, world = env_world()
    if world <= 1:
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
    return device


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
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_cat(t):
    """The tensors of every rank (same shape) concatenated along dim 0 in rank order."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(world())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_reduce_sum(t):
    """Sum over the ranks (a new tensor; the input is unchanged)."""
    if not active():
        return t
    out = t.clone()
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


def check_same_args(args, ignore=('device', 'num_workers', 'ir_crf_workers', 'seg_crf_workers')):
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
