"""--plan True: what a run would cost, before it runs. For every step the flags select: the work (images, steps,
epochs), the time of one item measured here by a short micro-benchmark of that stage at the run's own sizes,
network width, device, precision and layout (misc/microbench.py's stages, run in this process under the run's own
precision settings, each after a warm-up, with cuDNN autotuning reset between them), and the estimated
wall time for the processes (torchrun ranks) and workers of the run. Writes nothing: it only prints its report.

On a CPU the training stages are measured on a few images and scaled to the batch (the cost per image is close to
constant there); on a GPU on the whole batch. Inference stages are measured on a real image of the median size and
scaled to the mean over the list's sizes (make_cam, whose PCM is quadratic in the pixels, through a second
measurement at the largest size; on the CPU make_cam's own loop, loader workers and writer included, is timed on a
few images of the list). Data loading is timed on a few real samples of the run's lists: on a GPU it
counts where it is slower than the network (its workers run beside it), on the CPU it is added (its workers share
the cores with the network). Fixed costs (starting a step, building its network) are counted as a few seconds per
step. On a shared machine, the step times themselves vary by 10-30 % from run to run.
"""
import argparse
import contextlib
import os
import time

import numpy as np

from misc import distributed
from misc.pyutils import format_seconds, format_table

STEP_OVERHEAD_S = 2.0  # building a step's network and lists, writing its summary: measured 1-3 s on the demo
EVAL_OVERHEAD_S = 0.5  # an evaluation step builds no network: measured 0.4-1.1 s in all on the demo
CAM_LOOP_IMAGES = 8  # make_cam on the CPU: images of the list its own loop is timed on (one more as warm-up)


@contextlib.contextmanager
def _stage_state(device):
    """A micro-benchmark starts as its step starts (cuDNN autotuning off until a training stage turns it on) and
    leaves the process as it found it."""
    import torch
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def image_size(ds, k=30):
    """Median (h, w) of up to k images of a dataset, from their file headers, and the id of the image closest to
    it (the CRF's cost depends on the image's colours: the micro-benchmark runs on that real image); also the
    sampled sizes (k, 2), the id of the largest and the sampled ids."""
    from PIL import Image
    names = ds.names[::max(1, len(ds.names) // k)][:k]
    sizes = []
    for n in names:
        with Image.open(ds.image_path(n)) as im:
            sizes.append(im.size[::-1])
    sizes = np.array(sizes)
    med = np.median(sizes, axis=0)
    closest = names[int(np.argmin(np.abs(sizes - med).sum(1)))]
    return tuple(int(v) for v in med), closest, sizes, names[int(np.argmax(sizes.prod(1)))], names


def _sample_time(ds, k=4):
    """Seconds to produce one sample of a dataset (decoding, augmentation), over k samples."""
    idx = np.linspace(0, len(ds) - 1, min(k, len(ds))).astype(int)
    t0 = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return (time.perf_counter() - t0) / len(idx)


class Planner:
    def __init__(self, args):
        from misc.dataset import get_dataset
        self.args = args
        self.ds_mod = get_dataset(args)
        self.world = distributed.world()
        self.cuda = 'cuda' in str(args.device)
        self._cache = {}

    # --- measuring ---------------------------------------------------------------------------------------------
    def bench(self, stage, **over):
        """Seconds per unit of a misc/microbench.py stage, run here with the run's settings: after one warm-up run
        (allocations, lazy initialisation, cuDNN autotuning), the mean of the timed runs (3 where one run takes
        under a second). cuDNN autotuning starts off for every stage (a training stage turns it on, as its step
        does) and is put back afterwards."""
        key = (stage, repr(sorted((k, id(v) if isinstance(v, np.ndarray) else v) for k, v in over.items())))
        if key in self._cache:
            return self._cache[key]
        from misc import microbench
        a, n_cat = self.args, self.ds_mod.N_CAT
        ns = argparse.Namespace(
            device=str(a.device), amp=a.amp, channels_last=a.channels_last, fold_bn=a.cam_fold_bn, width=a.backbone_width,
            classes=n_cat, crop=a.sfc_crop_size, batch=a.sfc_batch_size, bank=a.sfc_bank_samples if a.sfc_ibr else 0,
            sfc_micro_batch=a.sfc_micro_batch, irn_batch=a.irn_batch_size, irn_micro_batch=a.irn_micro_batch,
            seg_batch=a.seg_batch_size, seg_crop=a.seg_crop_size, seg_micro_batch=a.seg_micro_batch,
            seg_depth=a.seg_depth, scales=a.cam_scales, repeats=1, warmup=True,
            run_args=a, width_px=0, height=0, crf_images=1, crf_sizes=[1, 1], crf_workers=1)
        vars(ns).update(over)
        with _stage_state(a.device):
            r = microbench.STAGES[stage](ns)
            if r['seconds'] < 1.0:  # cheap: the mean of 3 timed runs
                ns.repeats = 3
                r = microbench.STAGES[stage](ns)
        self._cache[key] = r
        return r

    def names(self, list_path):
        return self.ds_mod.ImageDataset(list_path, self.args.dataset_root).names

    def todo(self, names, folder, ext='.png'):
        """Images whose output file does not exist yet (the step skips the others)."""
        return [n for n in names if not os.path.isfile(os.path.join(folder, n + ext))]

    def size_of(self, list_path, root=None):
        """(median (h, w), the pixels of the listed image closest to it)."""
        return self._sizes(list_path, root)[:2]

    def _sizes(self, list_path, root=None):
        key = ('size', list_path, root)
        if key not in self._cache:
            ds = self.ds_mod.ImageDataset(list_path, root or self.args.dataset_root)
            size, name, sizes, largest, names = image_size(ds)
            self._cache[key] = size, ds.read(name), sizes, ds.read(largest), names
        return self._cache[key]

    def per_image(self, stage, list_path, root=None, quadratic=False, **over):
        """Mean seconds per image of an inference stage over the list's image sizes, and the stage's result at the
        median size. The median's time is scaled by the mean area over the median's; for a stage whose cost grows
        faster than the pixels (quadratic=True: make_cam, whose PCM affinity is quadratic in them), the stage is
        also measured at the largest sampled size, t(A) = a A + b A^2 (b >= 0) is fitted through the two points,
        and averaged over the sampled areas."""
        (h, w), image, sizes, largest, _ = self._sizes(list_path, root)
        r = self.bench(stage, width_px=w, height=h, image=image, **over)
        areas = sizes.prod(1).astype(np.float64)
        a_med, a_max = float(h * w), float(largest.shape[0] * largest.shape[1])
        if not quadratic or a_max <= a_med * 1.05:
            return r['seconds'] * float(areas.mean()) / a_med, r
        t_max = self.bench(stage, width_px=largest.shape[1], height=largest.shape[0], image=largest,
                           **over)['seconds']
        b = max(0.0, (t_max / a_max - r['seconds'] / a_med) / (a_max - a_med))
        a = r['seconds'] / a_med - b * a_med
        if a < 0:  # steeper than quadratic between the two points: interpolate linearly through them instead
            return float(np.mean(np.interp(areas, [a_med, a_max], [r['seconds'], t_max]))), r
        return float(a * areas.mean() + b * (areas ** 2).mean()), r

    def train_step(self, stage, batch, per_rank_batch_flags, dataset):
        """Seconds per training step: the network on the batch (measured on a few images on the CPU and scaled),
        against the loader's time for this rank's share of the batch over its workers."""
        measured = batch if self.cuda else min(batch, 4)
        r = self.bench(stage, **per_rank_batch_flags(measured))
        if measured < batch and r['seconds'] < 1.0:  # cheap: the whole batch, whose per-image cost is lower
            measured = batch
            r = self.bench(stage, **per_rank_batch_flags(measured))
        compute = r['seconds'] * batch / measured / self.world
        if self.cuda:  # the loader's workers run on the CPU beside the device
            data = _sample_time(dataset) * batch / self.world / max(1, self.args.num_workers)
            return max(compute, data), compute, data
        # on the CPU they take their time from the cores the network runs on
        data = _sample_time(dataset) * batch / self.world
        return compute + data, compute, data

    # --- the steps --------------------------------------------------------------------------------------------
    def train_sfc(self):
        a = self.args
        ds = self.ds_mod.ClassificationDataset(a.train_list, a.dataset_root, a.cls_labels, crop_size=a.sfc_crop_size,
                                               seed=a.seed)
        spe = len(ds) // a.sfc_batch_size
        steps = spe * a.sfc_num_epoches
        k = a.sfc_bank_samples if a.sfc_ibr else 0
        step, compute, data = self.train_step('train_step', a.sfc_batch_size + k,
                                              lambda m: {'batch': max(1, m - min(k, m // 4)), 'bank': min(k, m // 4)},
                                              ds)
        total, note = steps * step, ''
        if a.sfc_select_on_gt:
            val = self.names(a.sfc_val_list)
            n_val = len([g for g in range(1, steps + 1) if (g - 1) % a.sfc_val_freq == 0 and g > a.sfc_val_min_step])
            (h, w), _ = self.size_of(a.sfc_val_list)
            one = self.bench('make_cam', width_px=w, height=h, scales=[1.0])['seconds'] / 2  # one image, no flip
            total += n_val * len(val) * one
            note = f' + {n_val} GT validations of {len(val)} images'
        return (f'{len(ds)} images, {spe} steps/epoch x {a.sfc_num_epoches} = {steps} steps of '
                f'{a.sfc_batch_size}+{k}{note}', f'{step:.3g} s/step (network {compute:.3g}, data {data:.3g})', total)

    def _inference(self, stage, list_path, out_dir, ext, label, dataset=None, quadratic=False, **over):
        """dataset: the step's loader dataset, whose time per sample counts on the CPU (its workers share the
        cores with the network)."""
        names = self.names(list_path)
        todo = self.todo(names, out_dir, ext)
        (h, w), _ = self.size_of(list_path)
        per, _ = self.per_image(stage, list_path, quadratic=quadratic, **over)
        note = ''
        if dataset is not None and not self.cuda:
            data = _sample_time(dataset)
            per, note = per + data, f' (data {data:.3g})'
        return (f'{len(todo)} of {len(names)} images to do ({h}x{w} median){label}',
                f'{per:.3g} s/image{note}', len(todo) * per / self.world)

    def make_cam(self):
        a = self.args
        ds = self.ds_mod.ClassificationDatasetMSF(a.infer_list, a.dataset_root, a.cls_labels, scales=a.cam_scales)
        label = f', scales {tuple(a.cam_scales)} x flip'
        if self.cuda:
            return self._inference('make_cam', a.infer_list, a.cam_dir, '.npz', label, dataset=ds, quadratic=True)
        names = self.names(a.infer_list)
        todo = self.todo(names, a.cam_dir, '.npz')
        (h, w), _ = self.size_of(a.infer_list)
        per, k = self._cam_loop_time(ds)
        return (f'{len(todo)} of {len(names)} images to do ({h}x{w} median){label}',
                f"{per:.3g} s/image (the step's loop on {k} images)", len(todo) * per / self.world)

    def _cam_loop_time(self, ds, k=CAM_LOOP_IMAGES):
        """Seconds per image of make_cam's own loop (step.make_cam.cam_loop: loader workers, network, the writer
        thread, into a temporary folder) on a network of the run's architecture at random initialisation (the cost
        does not depend on the weights), over k images of the list picked at the quantiles of the sampled areas,
        after one warm-up image. On the CPU the loader workers and the writer share the cores with the network, which
        a micro-benchmark of the network alone underestimated by 28-44 % on the demo."""
        import tempfile
        import torch
        from step.make_cam import cam_loop, load_cam_model
        a = self.args
        _, _, sizes, _, sampled = self._sizes(a.infer_list)
        by_area = [sampled[i] for i in np.argsort(sizes.prod(1), kind='stable')]
        k = min(k, len(by_area))
        picked = [by_area[int((i + 0.5) * len(by_area) / k)] for i in range(k)]
        index = {n: i for i, n in enumerate(ds.names)}
        indices = [index[by_area[len(by_area) // 2]]] + [index[n] for n in picked]  # the median's first: warm-up
        device = torch.device(a.device)
        torch.manual_seed(0)
        model = load_cam_model(a, device, weights=False)
        done = []
        with tempfile.TemporaryDirectory() as folder, _stage_state(a.device):
            cam_loop(model, ds, indices, device, a, folder, progress=False,
                     on_item=lambda: done.append(time.perf_counter()))
            end = time.perf_counter()  # the writer has drained
        return (end - done[0]) / k, k

    def cam_to_ir_label(self):
        a = self.args
        work, per, total = self._inference('cam_to_ir_label', a.infer_list, a.ir_label_dir, '.png', '')
        procs = max(1, min(a.ir_crf_workers, distributed.cpu_share()))
        return work, f'{per} in {procs} processes', total / procs

    def make_sem_seg(self):
        a = self.args
        return self._inference('make_sem_seg', a.infer_list, a.sem_seg_dir, '.png', f', T^{2 ** a.exp_times}')

    def train_irn(self):
        a = self.args
        ds = self.ds_mod.AffinityDataset(a.train_list, a.dataset_root, a.ir_label_dir, a.irn_crop_size,
                                         rescale=tuple(a.irn_rescale), seed=a.seed) \
            if os.path.isdir(a.ir_label_dir) and os.listdir(a.ir_label_dir) else None
        n = len(self.names(a.train_list))
        spe = n // a.irn_batch_size
        steps = spe * a.irn_num_epoches
        if ds is None:  # the IR labels do not exist yet: time the images alone
            ds = self.ds_mod.ClassificationDataset(a.train_list, a.dataset_root, a.cls_labels,
                                                   crop_size=a.irn_crop_size, seed=a.seed)
        step, compute, data = self.train_step('train_irn_step', a.irn_batch_size,
                                              lambda m: {'irn_batch': m, 'crop': a.irn_crop_size}, ds)
        return (f'{n} images, {spe} steps/epoch x {a.irn_num_epoches} = {steps} steps of {a.irn_batch_size}',
                f'{step:.3g} s/step (network {compute:.3g}, data {data:.3g})', steps * step)

    def train_seg(self):
        a = self.args
        n = len(self.names(a.seg_train_list))
        images = a.seg_iters * a.seg_iter_size * a.seg_batch_size
        measured = a.seg_batch_size if self.cuda else min(a.seg_batch_size, 2)
        r = self.bench('train_seg_step', seg_batch=measured, seg_micro_batch=min(a.seg_micro_batch or measured, measured))
        if measured < a.seg_batch_size and r['seconds'] < 1.0:
            measured = a.seg_batch_size
            r = self.bench('train_seg_step', seg_batch=measured,
                           seg_micro_batch=min(a.seg_micro_batch or measured, measured))
        per_image = r['seconds'] / measured
        update = per_image * a.seg_iter_size * a.seg_batch_size / self.world
        return (f'{a.seg_iters} updates of {a.seg_iter_size} x {a.seg_batch_size} crops of {a.seg_crop_size} '
                f'({images / max(1, n):.1f} epochs of {n} images)', f'{update:.3g} s/update', a.seg_iters * update)

    def make_seg(self):
        a = self.args
        names = self.ds_mod.ImageDataset(a.seg_infer_list, a.seg_infer_root).names
        todo = self.todo(names, a.seg_dir)
        (h, w), _ = self.size_of(a.seg_infer_list, a.seg_infer_root)
        mean, r = self.per_image('make_seg', a.seg_infer_list, a.seg_infer_root)
        scale = mean / r['seconds']  # the mean over the list's sizes against the median's
        crf_s = r.get('crf_s') or 0.0
        crf = crf_s * scale if a.seg_crf else 0.0
        net = (r['seconds'] - crf_s) * scale
        workers = a.seg_crf_workers if a.seg_crf else 1
        per = max(net, crf / workers) if workers > 1 else net + crf
        crf_note = (f'CRF NOT timed: pydensecrf is not installed' if a.seg_crf and r.get('crf_s') is None else
                    f'CRF {crf:.3g} in {workers} process{"es" * (workers > 1)}')
        return (f'{len(todo)} of {len(names)} images to do ({h}x{w} median)',
                f'{per:.3g} s/image (network {net:.3g}, {crf_note})', len(todo) * per / self.world)

    def _eval(self, list_path, arrays):
        """Reading and scoring: measured on synthetic arrays of the median size (files of that size decode at the
        same rate), over the loader workers."""
        names = self.names(list_path)
        (h, w), _ = self.size_of(list_path)
        rng = np.random.default_rng(0)
        maps = rng.random((arrays, h, w)).astype(np.float32)
        gt = rng.integers(0, 3, (h, w)).astype(np.uint8)
        from misc.metrics import confusion_of
        t0 = time.perf_counter()
        for _ in range(3):
            confusion_of(gt, np.argmax(maps, 0).astype(np.uint8), self.ds_mod.N_CAT + 1)
        per = (time.perf_counter() - t0) / 3
        return f'{len(names)} images', f'{per:.3g} s/image', len(names) * per / max(1, self.args.num_workers)

    def eval_cam(self):
        return self._eval(self.args.eval_list, 3 * len(self.args.cam_eval_source))

    def eval_sem_seg(self):
        return self._eval(self.args.eval_list, 2)

    def eval_seg(self):
        return self._eval(self.args.seg_eval_list, 2)


def run(args, steps):
    """Print the plan of `steps`; returns [(step, work, per item, estimated seconds)]."""
    from misc.torchutils import setup_precision
    setup_precision(args.amp, args.device)  # the run's precision: --amp none times IEEE float32, not TF32
    p = Planner(args)
    rows, total = [], 0.0
    t0 = time.perf_counter()
    for s in steps:
        try:
            work, per, secs = getattr(p, s)()
        except ImportError as e:  # a compiled package missing here (pydensecrf): the step cannot run on this machine
            work, per, secs = f'cannot be planned here: {e.name or str(e)} is not installed', '-', 0.0
        except (OSError, ValueError, KeyError) as e:
            work, per, secs = f'cannot be planned yet: {str(e).splitlines()[0][:150]}', '-', 0.0
        secs += EVAL_OVERHEAD_S if s.startswith('eval_') else STEP_OVERHEAD_S
        total += secs
        rows.append((s, work, per, secs))
    if distributed.is_main():
        print(f'plan: {len(steps)} steps on {args.device}, {p.world} process{"es" * (p.world > 1)}, loader workers '
              f'{args.num_workers}, CRF processes {args.ir_crf_workers} / {args.seg_crf_workers}; '
              f'micro-benchmarks {format_seconds(time.perf_counter() - t0)} (nothing was written)')
        print(format_table(['step', 'work', 'measured here', 'estimate'],
                           [[s, w, per, format_seconds(secs)] for s, w, per, secs in rows] +
                           [['total', '', '', format_seconds(total)]]))
    return rows
