"""Device choice, seeding, mixed precision, the authors' poly-decay SGD, sharded inference and out-of-memory
messages."""
import contextlib
import functools
import os
import random

import numpy as np
import torch

from misc.errors import BadInput, InputError, Unavailable


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error, not a silent fallback."""
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise Unavailable('--device cuda was requested but torch sees no CUDA device; use --device cpu or auto')
    if name not in ('cpu', 'cuda'):
        raise BadInput(f'--device must be auto, cpu or cuda, got {name!r}')
    return name


def set_seed(seed, deterministic=False, device='cpu'):
    """Seed Python, NumPy and torch (CPU and CUDA). Called by each step, never at import time. deterministic: see
    setup_determinism."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        setup_determinism(device)


CUBLAS_WORKSPACE = ':4096:8'  # what cuBLAS needs to pick deterministic kernels (the CUDA docs' reproducibility notes)


def deterministic_environment():
    """--deterministic True, before anything starts cuBLAS (run_sample.finalize_args calls it first): the
    workspace setting cuBLAS reads once, at its start."""
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_WORKSPACE)


def setup_determinism(device):
    """--deterministic True on CUDA: cuDNN's deterministic convolutions without autotuning, and PyTorch's
    deterministic algorithms wherever an operation has one (scatter_add_, index_add_, index_put_ with accumulate,
    ...). The few with none (the backward of bilinear interpolation) keep their atomic-add kernels and warn once:
    CUDA training is then repeatable up to those, inference exactly (docs/precision.md, determinism). On the CPU
    every kernel is already deterministic and nothing changes."""
    if torch.device(device).type != 'cuda':
        return
    deterministic_environment()
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


# --- mixed precision (--amp) and memory layout (--channels_last) ------------------------------------------------
# none: IEEE float32 everywhere (the authors' arithmetic); tf32: float32 tensors, TensorFloat-32 convolutions on
# Ampere and newer GPUs (PyTorch's own default for cuDNN convolutions there); bf16 / fp16: torch.autocast.
AMP_DTYPES = {'none': None, 'tf32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def check_amp(amp, device):
    """Refuse what cannot run: an unknown mode, bf16 on a GPU without it, tf32 off Ampere-or-newer GPUs."""
    if amp not in AMP_DTYPES:
        raise BadInput(f'--amp must be one of {tuple(AMP_DTYPES)}, got {amp!r}')
    cuda = torch.device(device).type == 'cuda'
    if amp == 'bf16' and cuda and not torch.cuda.is_bf16_supported():
        raise BadInput('--amp bf16: this GPU has no bfloat16 support; use --amp fp16 (with loss scaling) or none')
    if amp == 'tf32' and not (cuda and torch.cuda.is_available()
                              and torch.cuda.get_device_capability(torch.device(device))[0] >= 8):
        raise BadInput(f'--amp tf32: TensorFloat-32 needs an Ampere or newer CUDA GPU (device {device}); use '
                       f'--amp none (IEEE float32), bf16 or fp16')


def setup_precision(amp, device):
    """check_amp, then set cuDNN's float32 convolutions for this process: TF32 under --amp tf32, IEEE float32
    otherwise. PyTorch's default on Ampere+ GPUs is TF32 (10-bit mantissa), which --amp none must not inherit.
    Matrix products stay IEEE (PyTorch's default). On torch >= 2.9 only the fp32_precision API is used: mixing it
    with the legacy allow_tf32 flags makes torch refuse to read them."""
    check_amp(amp, device)
    if torch.device(device).type != 'cuda':
        return
    if hasattr(torch.backends.cudnn, 'conv'):  # torch >= 2.9
        torch.backends.cudnn.conv.fp32_precision = 'tf32' if amp == 'tf32' else 'ieee'
        torch.backends.cuda.matmul.fp32_precision = 'ieee'
    else:  # older torch: only the legacy flags exist
        torch.backends.cudnn.allow_tf32 = amp == 'tf32'
        torch.backends.cuda.matmul.allow_tf32 = False


@contextlib.contextmanager
def ieee_convolutions(device_type):
    """IEEE float32 cuDNN convolutions inside (the float32 parts under --amp tf32); nothing to do elsewhere."""
    conv = getattr(torch.backends.cudnn, 'conv', None)  # torch < 2.9: --amp tf32 is set by the legacy flag alone
    if device_type != 'cuda' or conv is None or conv.fp32_precision != 'tf32':
        yield
        return
    conv.fp32_precision = 'ieee'
    try:
        yield
    finally:
        conv.fp32_precision = 'tf32'


def autocast(amp, device):
    """torch.autocast for --amp bf16|fp16 on the device's type; a no-op context for none and tf32."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def fp32(fn):
    """Run `fn` in float32 with autocast off, its floating tensor arguments (also inside lists and tuples) cast
    to float32. Marks the parts that must stay float32 under --amp (normalisations with an eps, PCM, the
    prototype, the random walk, the losses and their reductions); in a float32 run it only calls `fn`."""
    def up(a):
        if isinstance(a, (list, tuple)):
            return type(a)(up(x) for x in a)
        return a.float() if torch.is_tensor(a) and a.is_floating_point() and a.dtype != torch.float64 else a

    def first_tensor(xs):
        for a in xs:
            if isinstance(a, (list, tuple)):
                a = first_tensor(a)
            if torch.is_tensor(a):
                return a
        return None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = first_tensor(list(args) + list(kwargs.values()))
        kind = t.device.type if t is not None else 'cpu'
        with ieee_convolutions(kind):
            if not torch.is_autocast_enabled(kind) and (t is None or t.dtype in (torch.float32, torch.float64)):
                return fn(*args, **kwargs)
            with torch.autocast(kind, enabled=False):
                return fn(*up(args), **{k: up(v) for k, v in kwargs.items()})
    wrapper.float32_part = True  # found by the tests, which check what every such part receives and returns
    return wrapper


def grad_scaler(amp, device):
    """Loss scaling for --amp fp16 (float16 gradients underflow without it); disabled otherwise."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=amp == 'fp16')


def use_channels_last(flag, device):
    """--channels_last auto|True|False -> bool. auto: on for CUDA (NHWC convolutions on tensor cores), off on CPU,
    where NCHW is the authors' arithmetic: channels-last makes CPU make_cam ~13 % faster but moves the CAMs
    further from the authors' than their own 1- and 2-thread runs differ (README, tools/cam_fidelity.py)."""
    if flag == 'auto':
        return torch.device(device).type == 'cuda'
    return str(flag).lower() in ('true', '1', 'yes')


def configure_cudnn(device, fixed_size, deterministic=False):
    """cuDNN autotuning (cudnn.benchmark) where every batch has the same size (training crops); off for
    inference on images of varying size and under --deterministic."""
    if torch.device(device).type == 'cuda':
        torch.backends.cudnn.benchmark = bool(fixed_size and not deterministic)


def to_memory_format(model_or_tensor, channels_last):
    return model_or_tensor.to(memory_format=torch.channels_last) if channels_last else model_or_tensor


class PolyOptimizer(torch.optim.SGD):
    """SGD with lr_i = lr0_i * (1 - g / max_step) ** power, set before every update.

    The authors' PolyOptimizerSGD (SIPE/tool/torchutils.py:14) passes weight_decay positionally into
    SGD's momentum slot, so their effective momentum is 1e-4 and their "momentum=0.9" is the poly power
    (docs/faithfulness §3.2). Both are explicit here; the defaults reproduce the authors.
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


def run_sharded(work, args, indices):
    """Run work(rank, this rank's indices, device, args). Under torchrun (misc.distributed) every rank takes
    every world-th of the indices rank 0 found unfinished; one process takes them all. Several GPUs: launch
    with torchrun --nproc_per_node N (one process per GPU)."""
    from misc import distributed
    indices = distributed.broadcast(list(indices))
    work(distributed.rank(), distributed.shard(indices), args.device, args)


def prepare_for_inference(model, device, fold_bn=True, channels_last=False):
    """eval mode, BatchNorm folded into the convs (--cam_fold_bn, computed in float64), on the device, in the
    memory layout chosen by --channels_last."""
    from net.resnet50 import fold_batchnorm
    model.eval()
    if fold_bn:
        fold_batchnorm(model.resnet50)
    configure_cudnn(device, fixed_size=False)
    return to_memory_format(model.to(device), channels_last)


def prefetch_loader(dataset, indices, num_workers, device):
    """Items of dataset[indices] one at a time, decoded/rescaled by workers ahead of the network."""
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=None, shuffle=False,
                                       num_workers=num_workers, pin_memory=torch.device(device).type == 'cuda')


# --- out of memory ------------------------------------------------------------------------------------------
class OutOfMemory(InputError, RuntimeError):
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


# --- what a run runs on ---------------------------------------------------------------------------------------------
def environment(device='cpu'):
    """Versions and hardware: torch, CUDA, cuDNN, the GPU (name, compute capability, bf16), the cores, pydensecrf."""
    from misc import distributed
    info = {'python': '.'.join(map(str, __import__('sys').version_info[:3])), 'torch': torch.__version__,
            'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            'device': str(device), 'usable_cores': distributed.usable_cores(), 'cpu_share': distributed.cpu_share()}
    if torch.device(device).type == 'cuda' and torch.cuda.is_available():
        d = torch.device(device)
        info.update(gpu=torch.cuda.get_device_name(d), capability='.'.join(map(str, torch.cuda.get_device_capability(d))),
                    bf16=torch.cuda.is_bf16_supported(), gpu_memory_gb=round(
                        torch.cuda.get_device_properties(d).total_memory / 2 ** 30, 1),
                    gpus_visible=torch.cuda.device_count())
    try:
        import pydensecrf.densecrf  # noqa: F401
        info['pydensecrf'] = True
    except ImportError:
        info['pydensecrf'] = False
    return info


def environment_line(device='cpu'):
    e = environment(device)
    gpu = (f"; GPU {e['gpu']} (capability {e['capability']}, {e['gpu_memory_gb']} GB, bf16 "
           f"{'yes' if e['bf16'] else 'no'}, {e['gpus_visible']} visible)" if 'gpu' in e else '')
    return (f"environment: Python {e['python']}, torch {e['torch']}, CUDA {e['cuda'] or '-'}, cuDNN {e['cudnn'] or '-'}, "
            f"device {e['device']}{gpu}; {e['usable_cores']} usable CPU cores ({e['cpu_share']} for this process); "
            f"pydensecrf {'yes' if e['pydensecrf'] else 'NOT importable'}")


def settings_line(args):
    """The precision and layout settings a run resolved, and its worker counts."""
    cuda = torch.device(args.device).type == 'cuda'
    conv = {'none': 'IEEE float32', 'tf32': 'TF32 convolutions (float32 tensors)', 'bf16': 'bf16 autocast',
            'fp16': 'fp16 autocast with loss scaling'}[args.amp]
    return (f'settings: --amp {args.amp} ({conv}; the marked parts in IEEE float32), channels-last '
            f'{"on" if use_channels_last(args.channels_last, args.device) else "off"}, cudnn.benchmark '
            f'{"on for the fixed-size training crops" if cuda and not args.deterministic else "off"}'
            f'{", deterministic" if args.deterministic else ""}; workers: loader {args.num_workers}'
            + (f' (--num_workers {args.num_workers_asked} capped at this process\'s share of the cores)'
               if getattr(args, 'num_workers_asked', None) else '') + ', CRF '
            + f'{args.ir_crf_workers} (IR labels) / {args.seg_crf_workers} (make_seg)')
