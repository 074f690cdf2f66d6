"""Pieces the training steps share: a data order that is a pure function of (seed, epoch), so that a
resumed run sees exactly the batches of an uninterrupted one, and one loader that serves it from any step on,
across epochs, with workers that stay up and prefetch (each sample's augmentation is a function of
(seed, epoch, index), passed to the dataset with the index)."""
import os
import signal
import time

import torch

from misc.errors import BadInput

# Fault injection for the tests of killed runs: "RANK:N" makes that rank kill itself (SIGKILL, as an out-of-memory
# killer or a lost node would) when the training loop asks for its N-th batch (0-based, counted from the start or
# the resume of the run). Unset in normal use.
KILL_ENV = 'SFC_TEST_KILL_AT_BATCH'


def schedule(n_images, batch_size, epochs, list_path, batch_flag):
    """(steps per epoch, total steps) with drop_last batches; an error naming the flags when the list is
    shorter than one batch."""
    steps_per_epoch = n_images // batch_size
    if steps_per_epoch == 0:
        raise BadInput(f'--train_list {list_path} has {n_images} images, fewer than one batch '
                       f'({batch_flag} {batch_size})')
    return steps_per_epoch, steps_per_epoch * epochs


def epoch_order(seed, epoch, n):
    """The shuffled order of epoch `epoch`."""
    g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


class StepSampler(torch.utils.data.Sampler):
    """(epoch, index) of every image of the global batches start..stop-1: batch s is images
    [w * B, (w + 1) * B) of epoch e's order, (e, w) = divmod(s, n // B) (drop_last). With world > 1 it yields
    rank `rank`'s slice of each global batch (B / world images), so the ranks together load what one process
    loads."""

    def __init__(self, n, batch_size, seed, start, stop, rank=0, world=1):
        if batch_size % world:
            raise BadInput(f'a global batch of {batch_size} does not split across {world} processes')
        self.n, self.batch, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.rank, self.world = rank, world
        self.steps_per_epoch = n // batch_size

    def __iter__(self):
        per, order, cur = self.batch // self.world, None, None
        for s in range(self.start, self.stop):
            epoch, within = divmod(s, self.steps_per_epoch)
            if epoch != cur:
                order, cur = epoch_order(self.seed, epoch, self.n), epoch
            chunk = order[within * self.batch:(within + 1) * self.batch]
            for i in chunk[self.rank * per:(self.rank + 1) * per]:
                yield epoch, i

    def __len__(self):
        return max(0, self.stop - self.start) * (self.batch // self.world)


def step_loader(dataset, start, stop, batch_size, seed, num_workers, device, rank=0, world=1, prefetch=4):
    """Batches of loader steps start..stop-1 (this rank's share), one DataLoader for the whole run: workers
    stay up across epochs and keep `prefetch` batches each ahead; pinned memory on CUDA."""
    sampler = StepSampler(len(dataset), batch_size, seed, start, stop, rank, world)
    extra = {'prefetch_factor': prefetch} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size // world, sampler=sampler,
                                       num_workers=num_workers, pin_memory=torch.device(device).type == 'cuda',
                                       **extra)


class DataWait:
    """Time the training loop spends waiting for its next batch, against the whole step."""

    def __init__(self, it):
        self.it, self.t_step, self.wait = iter(it), time.perf_counter(), 0.0
        self.count, self.kill_at = 0, None
        spec = os.environ.get(KILL_ENV)
        if spec:
            rank, n = (int(v) for v in spec.split(':'))
            if rank == int(os.environ.get('RANK', 0)):
                self.kill_at = n

    def next(self):
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1
        t = time.perf_counter()
        pack = next(self.it)
        self.wait += time.perf_counter() - t
        return pack

    def lap(self):
        """(seconds waited for data, seconds of the whole step) since the previous lap."""
        now = time.perf_counter()
        out, self.t_step, self.wait = (self.wait, now - self.t_step), now, 0.0
        return out


def load_resume_state(path, max_step, required=('net', 'optimizer', 'step', 'max_step')):
    """The saved training state, after checking it is whole and belongs to a run of the same length. A damaged
    file (a copy cut short, a full disk) says so and how to start the step over."""
    from misc.camio import load_checkpoint
    start_over = (f'delete it to start this step from its beginning (rm {path}), or restore the file; the weights '
                  f'the step has written so far are not affected')
    try:
        state = load_checkpoint(path)
    except BadInput as e:
        raise BadInput(f'the resume file {path} is damaged and cannot be read ({e}): {start_over}') from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise BadInput(f'the resume file {path} lacks {", ".join(missing)}: it is not a resume file of this step or '
                       f'it is damaged; {start_over}')
    if int(state['max_step']) != max_step:
        raise BadInput(f'{path} was written for {state["max_step"]} steps, this run has {max_step}: '
                       f'delete it (or the work dir) to start afresh')
    return state


def resume_writer(path, model, optimizer, max_step, scaler=None, before=()):
    """save(step, **extra) of a training step's resume state (model, optimizer, step, max_step, the fp16 loss
    scaler's state when it is on, and the step's own extras), after calling each of `before` (the checks and curve
    flushes that must precede a checkpoint). The state is the same on every rank; rank 0 writes it."""
    from misc import camio, distributed
    main = distributed.is_main()

    def save(step, **extra):
        for f in before:
            f()
        if scaler is not None and scaler.is_enabled():
            extra['scaler'] = scaler.state_dict()
        if main:
            camio.save_checkpoint({'net': model.state_dict(), 'optimizer': optimizer.state_dict(), 'step': step,
                                   'max_step': max_step, **extra}, path)
    return save


def load_scaler(scaler, state, path):
    """The fp16 loss scaler continues from the resume state (a resumed run scales as the uninterrupted one did)."""
    if not scaler.is_enabled():
        return
    if 'scaler' not in state:
        print(f'  note: {path} holds no loss-scaler state (written without --amp fp16): the scale starts afresh')
        return
    scaler.load_state_dict(state['scaler'])


class FiniteGuard:
    """Non-finite losses found without a host sync per step: each step's finiteness stays on the device until
    check() (at the progress lines, before every resume checkpoint and at the end), which raises Diverged naming
    the first such step. The resume file is never written after a non-finite step."""

    def __init__(self, what, resume_path, advice):
        self.what, self.resume_path, self.advice = what, resume_path, advice
        self.flags = []

    def add(self, step, loss):
        self.flags.append((step, torch.isfinite(loss.detach()).all()))

    def check(self):
        if not self.flags:
            return
        ok = torch.stack([f for _, f in self.flags]).tolist()
        bad = [s for (s, _), o in zip(self.flags, ok) if not o]
        self.flags = []
        if bad:
            from misc.errors import Diverged
            raise Diverged(f'{self.what}: non-finite loss at step {bad[0]}; the last good state stays in '
                           f'{self.resume_path}. {self.advice}')


def peak_memory_gb(device, reset=False):
    """Peak GPU memory allocated on a CUDA device since the last reset (GB; None on the CPU). A host-side read of
    the allocator's counters: no device sync."""
    if torch.device(device).type != 'cuda':
        return None
    gb = torch.cuda.max_memory_allocated(device) / 2 ** 30
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return gb


def curve_log(args, name, start_step):
    """The training curve metrics/<name>_scalars.jsonl (and TensorBoard events with --tensorboard), rank 0 only."""
    from misc import camio, distributed
    from misc.pyutils import ScalarLog
    return ScalarLog(camio.scalars_path(args.metrics_dir, name), start_step,
                     camio.tensorboard_dir(args.work_dir, name) if args.tensorboard else None,
                     enabled=distributed.is_main())


def progress_line(label, step, max_step, start, t0, meter, losses, lr, images_per_step, peak_gb=None):
    """One progress line: the losses' running means (popped from meter), lr, images/s, the data wait against the
    step time, the peak GPU memory so far (on CUDA), the ETA."""
    from misc.pyutils import format_seconds
    rate = (step - start) / max(time.time() - t0, 1e-9)
    wait, took = meter.pop('wait'), meter.pop('took')
    terms = '  '.join(f'{shown} {meter.pop(key):.4f}' for key, shown in losses)
    eta = format_seconds((max_step - step) / max(rate, 1e-9))
    mem = f'  peak GPU memory {peak_gb:.2f} GB' if peak_gb is not None else ''
    return (f'{label} {step - 1:5d}/{max_step}  {terms}  lr {lr:.4g}  {rate * images_per_step:.1f} img/s  '
            f'data wait {1000 * wait:.0f} ms of {1000 * took:.0f} ms{mem}  ETA {eta}')


def training_device(args):
    """The device of a training step, after seeding every generator, checking --amp and turning on cuDNN
    autotuning for its fixed-size crops."""
    from misc.torchutils import configure_cudnn, set_seed, setup_precision
    device = torch.device(args.device)
    set_seed(args.seed, args.deterministic, device)
    setup_precision(args.amp, device)
    configure_cudnn(device, fixed_size=True, deterministic=args.deterministic)
    return device


def apply_update(optimizer, scaler, step):
    """optimizer.step() through the fp16 loss scaler (which skips an update with inf/NaN gradients); the poly
    schedule follows the update counter either way."""
    scaler.step(optimizer)
    scaler.update()
    optimizer.global_step = step + 1
