"""Device choice, seeding, the authors' poly-decay SGD, sharded inference and out-of-memory messages."""
import contextlib
import os
import random

import numpy as np
import torch


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error, not a silent fallback."""
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda was requested but torch sees no CUDA device; use --device cpu or auto')
    if name not in ('cpu', 'cuda'):
        raise ValueError(f'--device must be auto, cpu or cuda, got {name!r}')
    return name


def set_seed(seed, deterministic=False):
    """Seed Python, NumPy and torch (CPU and CUDA). Called by each step, never at import time."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class PolyOptimizer(torch.optim.SGD):
    """SGD with lr_i = lr0_i * (1 - g / max_step) ** power, set before every update.

    The authors' PolyOptimizerSGD (SIPE/tool/torchutils.py:14) passes weight_decay positionally into
    SGD's momentum slot, so their effective momentum is 1e-4 and their "momentum=0.9" is the poly power
    (SPEC B3.2). Both are explicit here; the defaults reproduce the authors.
    With decay_every k > 1, g is rounded down to a multiple of k: deeplab-pytorch's PolynomialLR (step_size
    LR_DECAY = 10, scheduler.step(epoch=iteration) after each update) changes the rate every k updates.
    """

    def __init__(self, params, lr, weight_decay, max_step, momentum=1e-4, power=0.9, decay_every=1):
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.global_step = 0
        self.max_step = int(max_step)
        self.power = float(power)
        self.decay_every = max(1, int(decay_every))
        self.initial_lr = [g['lr'] for g in self.param_groups]

    def lr_at(self, step):
        """The learning rates used for the update with counter `step`."""
        if step < self.max_step:
            f = (1 - (step - step % self.decay_every) / self.max_step) ** self.power
            return [lr * f for lr in self.initial_lr]
        return [g['lr'] for g in self.param_groups]

    def step(self, closure=None):
        for g, lr in zip(self.param_groups, self.lr_at(self.global_step)):
            g['lr'] = lr
        out = super().step(closure)
        self.global_step += 1
        return out

    def state_dict(self):
        d = super().state_dict()
        d['poly'] = {'global_step': self.global_step, 'max_step': self.max_step, 'power': self.power,
                     'initial_lr': list(self.initial_lr), 'decay_every': self.decay_every}
        return d

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        poly = state_dict.pop('poly')
        super().load_state_dict(state_dict)
        self.global_step = int(poly['global_step'])
        self.max_step, self.power = int(poly['max_step']), float(poly['power'])
        self.initial_lr = list(poly['initial_lr'])
        self.decay_every = int(poly.get('decay_every', 1))


def inference_devices(device):
    """One device per shard: every visible GPU for cuda, a single in-process shard for cpu."""
    if device == 'cuda' and torch.cuda.device_count() > 1:
        return [f'cuda:{i}' for i in range(torch.cuda.device_count())]
    return [device]


def run_sharded(work, args, indices):
    """Run work(shard_index, shard_indices, device, args) over every visible GPU (one process each), or
    in-process on one device. `work` must be a module-level function so that it can be spawned."""
    devices = inference_devices(args.device)
    shards = [indices[i::len(devices)] for i in range(len(devices))]
    if len(devices) == 1:
        work(0, shards[0], devices[0], args)
        return
    torch.multiprocessing.spawn(_spawn_entry, args=(work, shards, devices, args), nprocs=len(devices), join=True)


def _spawn_entry(rank, work, shards, devices, args):
    torch.cuda.set_device(devices[rank])
    work(rank, shards[rank], devices[rank], args)


def prepare_for_inference(model, device, fold_bn=True):
    """eval mode, BatchNorm folded into the convs (--cam_fold_bn), on the device."""
    from net.resnet50 import fold_batchnorm
    model.eval()
    if fold_bn:
        fold_batchnorm(model.resnet50)
    return model.to(device)


def prefetch_loader(dataset, indices, num_workers, device):
    """Items of dataset[indices] one at a time, decoded/rescaled by workers ahead of the network."""
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=None, shuffle=False,
                                       num_workers=num_workers, pin_memory=torch.device(device).type == 'cuda')


# --- out of memory ------------------------------------------------------------------------------------------
class OutOfMemory(RuntimeError):
    """An out-of-memory error re-raised with the item that caused it and the flag to lower."""


def is_out_of_memory(exc):
    """CUDA's torch.OutOfMemoryError, the CPU allocator's RuntimeError, or Python's MemoryError."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ('out of memory' in msg or "can't allocate memory" in msg)


def elsewhere(device):
    """Where else an inference step can run with the same result."""
    return 'a GPU with more memory or with --device cpu' if torch.device(device).type == 'cuda' else 'a machine with more memory'


@contextlib.contextmanager
def explain_oom(where, advice, device=None):
    """Turn an out-of-memory error inside the block into OutOfMemory('<where>: out of memory ... <advice>'),
    freeing the CUDA cache first; other errors pass through unchanged."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        del e  # drop the traceback's references to the failed block's tensors
        dev = torch.device(device) if device is not None else None
        if dev is not None and dev.type == 'cuda':
            torch.cuda.empty_cache()
        on = f' on {dev}' if dev is not None else ''
        raise OutOfMemory(f'{where}: out of memory{on} ({first}). {advice}') from None
