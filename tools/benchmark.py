"""Speed and memory of the heavy stages: prints numbers, asserts nothing.

    python tools/benchmark.py                                   # every stage on CPU, the authors' sizes
    python tools/benchmark.py --stages make_cam make_cam_unoptimised --threads 2
    python tools/benchmark.py --device cuda --amp none tf32 bf16 fp16   # images/s and peak GPU memory per precision

Each stage runs in a fresh subprocess, so that its peak memory is its own: the resident set (ru_maxrss) on CPU,
torch.cuda.max_memory_allocated on CUDA. Random weights are used (no download); the cost does not depend on the
weight values. Sizes are the authors': ResNet-50 at crop 512 with batch 16 + 4 bank images (SFC), batch 32
(IRN), 500x375 images with 4 scales x flip (make_cam), DeepLab-v2 ResNet-101 at crop 321 with batch 10.
`make_cam_unoptimised` computes what the authors' make_cam computes per image as they compute it (BatchNorm not
folded, NCHW, every channel upsampled, the prototype through an (n, 21, 768, h, w) tensor): the reference the
optimised `make_cam` is compared with.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# --- measuring ---------------------------------------------------------------------------------------------------
def _cuda(a):
    import torch
    return torch.device(a.device).type == 'cuda'  # under torchrun the device is cuda:<local rank>


def _sync(a):
    import torch
    if _cuda(a):
        torch.cuda.synchronize()


def _peak_mb(a):
    import torch
    if _cuda(a):
        return torch.cuda.max_memory_allocated(torch.device(a.device)) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(a, once):
    """Mean seconds of `once()` over a.repeats runs after one warm-up run (allocator, cuDNN autotuning); without
    the warm-up when a.warmup is False (the run planner on the CPU, where it costs time and changes little)."""
    times = []
    first = 1 if getattr(a, 'warmup', True) else 0
    for it in range(a.repeats + first):
        _sync(a)
        t0 = time.perf_counter()
        once()
        _sync(a)
        if it >= first:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def _timed_part(a, parts):
    """Mean of a part's times recorded by each run of `once()`, without the warm-up run's (as _timed)."""
    timed = parts[1:] if getattr(a, 'warmup', True) else parts
    return sum(timed) / max(1, len(timed))


def _layout(a):
    from misc.torchutils import use_channels_last
    return use_channels_last(a.channels_last, a.device)


def _method_args(a=None, **overrides):
    """run_sample's flags at their defaults (the authors' constants, one place), or a run's own flags (a.run_args,
    set by the run planner), with the benchmark's overrides."""
    import copy

    import run_sample
    args = copy.copy(a.run_args) if getattr(a, 'run_args', None) is not None else run_sample.get_parser().parse_args([])
    vars(args).update(overrides)
    return args


def _result(a, stage, seconds, unit, images, **extra):
    return {'stage': stage, 'seconds': seconds, 'unit': unit, 'images_per_s': images / seconds,
            'peak_mb': _peak_mb(a), **extra}


# --- stages ------------------------------------------------------------------------------------------------------
def stage_train_step(a):
    import torch
    from misc import distributed
    from misc.image_bank import ImageBank
    from misc.torchutils import PolyOptimizer, configure_cudnn, grad_scaler, to_memory_format
    from net import sfc_loss
    from net.resnet50_sfc import Net
    from step.train_sfc import sfc_step_gradients
    torch.manual_seed(0)
    configure_cudnn(a.device, fixed_size=True)  # as train_sfc: cuDNN autotuning for the fixed-size crops
    n_cat, B, K, crop, dev = a.classes, a.batch, a.bank, a.crop, a.device
    model = to_memory_format(Net(n_cat + 1, backbone_width=a.width).to(dev), _layout(a))
    bb, new = model.trainable_parameters()
    opt = PolyOptimizer([{'params': bb, 'lr': 0.1, 'weight_decay': 1e-4},
                         {'params': new, 'lr': 1.0, 'weight_decay': 1e-4}], 0.1, 1e-4, 100)
    bank = ImageBank(n_cat, crop, dev)
    w = sfc_loss.channel_weights(torch.ones(n_cat)).to(dev)
    args = _method_args(a, sfc_micro_batch=a.sfc_micro_batch, amp=a.amp)
    scaler = grad_scaler(a.amp, dev)
    g = torch.Generator().manual_seed(0)
    rank, world = distributed.rank(), distributed.world()
    per = distributed.split_batch(B + K, '--batch + --bank')
    params = [p for p in model.parameters() if p.requires_grad]

    def once():  # as train_sfc does it: each rank loads its slice, the bank sees the whole batch
        img = to_memory_format(torch.randn(B // world, 3, crop, crop, device=dev), _layout(a))
        valid = torch.ones(B // world, crop, crop, dtype=torch.uint8, device=dev)
        label = (torch.rand(B // world, n_cat) < 0.1).float().to(dev)
        img, valid, label = (distributed.all_gather_cat(t) for t in (img, valid, label))
        bank.update(img, valid, label)
        bi, bm, bl = bank.sample(K, g)
        mine = slice(rank * per, (rank + 1) * per)
        sfc_step_gradients(model, torch.cat([img, bi])[mine], torch.cat([valid, bm])[mine],
                           torch.cat([label, bl])[mine], w, args, crop // 16, crop // 32, opt, scaler, B + K)
        distributed.sum_gradients(params)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
    s = _timed(a, once)
    procs = f', {world} processes x {torch.get_num_threads()} threads' if world > 1 else ''
    return _result(a, f'train_sfc step (crop {crop}, batch {B}+{K} in micro-batches of {a.sfc_micro_batch or B + K}, '
                      f'width {a.width}{procs})', s, 'per step', B + K, bank_mb=bank.nbytes() / 2 ** 20)


def authors_prototype(norm_cam, feature, mask, bg_factor=None, cos_eps=None):
    """The prototype CAM as the authors compute it (docs/faithfulness §2.6): the masked features materialised as
    (n, C, D, h, w), pooled, and a broadcast cosine over (n, C, D, h, w). Tested against the authors' outputs (the
    prototype fixture), as net.resnet50_sfc.prototype_cam is; used to time the authors' make_cam and as
    tools/cam_fidelity.py's reference."""
    import torch.nn.functional as F
    from net.resnet50_sfc import COS_EPS, PROTO_BG_FACTOR, prototype_seeds
    bg_factor = PROTO_BG_FACTOR if bg_factor is None else bg_factor
    cos_eps = COS_EPS if cos_eps is None else cos_eps
    seeds = prototype_seeds(norm_cam, mask, bg_factor)
    proto = F.adaptive_avg_pool2d(seeds.unsqueeze(2) * feature.unsqueeze(1), 1)  # (n, C, D, 1, 1)
    return F.relu(F.cosine_similarity(feature.unsqueeze(1), proto, dim=2, eps=cos_eps))


def _make_cam_stage(a, optimised):
    import numpy as np
    import torch
    from misc.torchutils import autocast, prepare_for_inference, to_memory_format
    from net.resnet50_sfc import CAM
    from step.make_cam import postprocess
    from voc12.dataloader import multiscale_flip
    torch.manual_seed(0)
    if not optimised:  # the authors' prototype, (n, C, D, h, w) and all
        from net import resnet50_sfc
        resnet50_sfc.prototype_cam = authors_prototype
    layout = _layout(a) if optimised else False
    model = prepare_for_inference(CAM(a.classes + 1, backbone_width=a.width), a.device,
                                  fold_bn=optimised and a.fold_bn, channels_last=layout)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (a.height, a.width_px, 3), dtype=np.uint8)
    label = torch.zeros(a.classes + 1, device=a.device)
    label[[0, 3, 15]] = 1
    keys = np.array([0, 3, 15]) if optimised else np.arange(a.classes + 1)  # the authors upsample every channel
    size = img.shape[:2]

    def once():
        with torch.inference_mode():
            outs = []
            for x in multiscale_flip(img, a.scales):
                with autocast(a.amp, a.device):
                    outs.append(model(to_memory_format(torch.from_numpy(x).to(a.device), layout), label))
            cam, proto = postprocess([o[0] for o in outs], size, keys), postprocess([o[1] for o in outs], size, keys)
            if not optimised:
                cam, proto = cam[[0, 3, 15]], proto[[0, 3, 15]]
            cam.cpu(), proto.cpu()
    s = _timed(a, once)
    what = ('BN folded in float64, ' if a.fold_bn else 'BN not folded, ') + ('channels-last' if layout else 'NCHW') \
        if optimised else \
        "BN not folded, NCHW, every channel upsampled, the authors' prototype"
    return _result(a, f'make_cam{"" if optimised else "_unoptimised"} ({a.width_px}x{a.height}, scales '
                      f'{tuple(a.scales)} x flip, width {a.width}; {what})', s, 'per image', 1)


def stage_make_cam(a):
    return _make_cam_stage(a, True)


def stage_make_cam_unoptimised(a):
    return _make_cam_stage(a, False)


def _synthetic_cams(a):
    """A 500x375 image with two objects and CAM-like arrays for keys [0, 3, 15]. The networks' cost does not depend
    on the values; the dense CRF's does, through the image's colours (its bilateral lattice grows with their
    spread), so a real image of the run is used when given (a.image, set by the run planner)."""
    import numpy as np
    rng = np.random.default_rng(0)
    real = getattr(a, 'image', None)
    h, w = real.shape[:2] if real is not None else (a.height, a.width_px)
    img = real.copy() if real is not None else rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    blobs = [np.exp(-((yy - h * 0.4) ** 2 + (xx - w * 0.3) ** 2) / (2 * (h / 6) ** 2)),
             np.exp(-((yy - h * 0.6) ** 2 + (xx - w * 0.7) ** 2) / (2 * (h / 5) ** 2))]
    cam = np.stack([1 - np.maximum(*blobs) + 0.4] + [2 * b for b in blobs]).astype(np.float32)
    if real is None:
        img[blobs[0] > 0.5] = (200, 40, 40)
        img[blobs[1] > 0.5] = (40, 40, 200)
    return img, {'keys': np.array([0, 3, 15]), 'cam': cam, 'proto_cam': cam * 0.9}


def stage_cam_to_ir_label(a):
    from step.cam_to_ir_label import ir_label
    img, cams = _synthetic_cams(a)
    from step.cam_to_ir_label import crf_kwargs
    args = _method_args(a)
    s = _timed(a, lambda: ir_label(img, {k: v.copy() for k, v in cams.items()}, args.ir_proto_weight, args.ir_bg_factor,
                                   **crf_kwargs(args)))
    return _result(a, f'cam_to_ir_label ({a.width_px}x{a.height}, K=3, two CRF passes t=12; CPU, pydensecrf)', s,
                   'per image', 1)


def stage_make_sem_seg(a):
    import torch
    from misc.torchutils import autocast, prepare_for_inference, to_memory_format
    from net.resnet50_irn import EdgeDisplacement
    from step.make_sem_seg import pseudo_label
    from voc12.dataloader import multiscale_flip
    torch.manual_seed(0)
    args = _method_args(a)
    model = prepare_for_inference(EdgeDisplacement(crop_size=args.irn_crop_size_infer, backbone_width=a.width),
                                  a.device, channels_last=_layout(a))
    img, cams = _synthetic_cams(a)
    walk = []

    def once():
        with torch.inference_mode():
            with autocast(a.amp, a.device):
                x = torch.from_numpy(multiscale_flip(img, (1.0,))[0]).to(a.device)
                edge, _ = model(to_memory_format(x, _layout(a)))
            _sync(a)
            t1 = time.perf_counter()
            pseudo_label(cams, edge, img.shape[:2], args)
            _sync(a)
            walk.append(time.perf_counter() - t1)
    s = _timed(a, once)
    return _result(a, f'make_sem_seg ({a.width_px}x{a.height}: IRN edges + both random walks T^256, width {a.width})',
                   s, 'per image', 1, walk_s=_timed_part(a, walk))


def stage_train_irn_step(a):
    import torch
    from misc.indexing import PathIndex
    from misc.torchutils import PolyOptimizer, configure_cudnn, grad_scaler, to_memory_format
    from net import resnet50_irn
    from step.train_irn import accumulate_gradients, affinity_labels_torch
    torch.manual_seed(0)
    configure_cudnn(a.device, fixed_size=True)
    crop, B, dev = a.crop, a.irn_batch, a.device
    model = to_memory_format(resnet50_irn.Net(a.width).to(dev).train(), _layout(a))
    e, d = model.trainable_parameters()
    opt = PolyOptimizer([{'params': e, 'lr': 0.1, 'weight_decay': 1e-4}, {'params': d, 'lr': 1.0, 'weight_decay': 1e-4}],
                        0.1, 1e-4, 100)
    p = PathIndex(_method_args(a).irn_radius, (crop // 4, crop // 4))
    inds = [torch.from_numpy(i).to(dev) for i in p.path_indices]
    src, dst = torch.from_numpy(p.src_indices).to(dev), torch.from_numpy(p.dst_indices).to(dev)
    scaler = grad_scaler(a.amp, dev)

    def once():
        img = to_memory_format(torch.randn(B, 3, crop, crop, device=dev), _layout(a))
        red = torch.randint(0, 3, (B, crop // 4, crop // 4), dtype=torch.uint8, device=dev)
        labels = affinity_labels_torch(red, src, dst, 21)
        accumulate_gradients(model, img, labels, inds, p, a.irn_micro_batch or B, opt, a.amp, scaler)
        scaler.step(opt)
        scaler.update()
    s = _timed(a, once)
    return _result(a, f'train_irn step (crop {crop}, batch {B} in micro-batches of {a.irn_micro_batch or B}, '
                      f'width {a.width})', s, 'per step', B)


def stage_train_seg_step(a):
    import torch
    from misc.torchutils import configure_cudnn, grad_scaler, to_memory_format
    from net import deeplab
    from step.train_seg import optimizer_for, seg_step_gradients
    torch.manual_seed(0)
    configure_cudnn(a.device, fixed_size=True)
    B, crop, dev = a.seg_batch, a.seg_crop, a.device
    model = to_memory_format(deeplab.build(a.classes + 1, a.seg_depth, a.width, '1x1').to(dev).train(), _layout(a))
    opt = optimizer_for(model, _method_args(a), 30000)
    scaler = grad_scaler(a.amp, dev)

    def once():
        img = to_memory_format(torch.randn(B, 3, crop, crop, device=dev) * 50, _layout(a))
        label = torch.randint(0, a.classes + 1, (B, crop, crop), dtype=torch.uint8, device=dev)
        opt.zero_grad(set_to_none=True)
        seg_step_gradients(model, img, label, 'balanced', 1, a.seg_micro_batch, a.amp, scaler)
        scaler.step(opt)
        scaler.update()
    s = _timed(a, once)
    return _result(a, f'train_seg step (DeepLab-v2 ResNet-{a.seg_depth} MSC, crop {crop}, batch {B} in micro-batches '
                      f'of {a.seg_micro_batch or B}, width {a.width})', s, 'per step', B)


def stage_make_seg(a):
    import tempfile

    import numpy as np
    import torch
    import torch.nn.functional as F
    from misc import camio
    from misc.torchutils import to_memory_format
    from net import deeplab
    from step.make_seg import _crf_and_write, crf_params, predict_logits
    torch.manual_seed(0)
    model = to_memory_format(deeplab.build(a.classes + 1, a.seg_depth, a.width, '1x1').to(a.device).eval(), _layout(a))
    img, _ = _synthetic_cams(a)
    x = torch.from_numpy(deeplab.normalize_image(img, 'caffe').transpose(2, 0, 1).copy())[None].to(a.device)
    args = _method_args(a)
    crf = []

    def once():
        with tempfile.TemporaryDirectory() as d:
            with torch.inference_mode():
                prob = F.softmax(predict_logits(model, x, img.shape[:2], args.seg_test_scales, args.seg_test_flip,
                                                amp=a.amp, channels_last=_layout(a)), dim=0)
                pred = torch.argmax(prob, dim=0).cpu().numpy().astype(np.uint8)
                camio.write_label(os.path.join(d, 'nocrf.png'), pred)
                prob = prob.cpu().numpy()
            t1 = time.perf_counter()  # the CRF worker's job: the CRF and its two PNGs
            _crf_and_write(img, prob, crf_params(args), os.path.join(d, 'p.png'), os.path.join(d, 's.png'))
            crf.append(time.perf_counter() - t1)
    s = _timed(a, once)
    return _result(a, f'make_seg ({a.width_px}x{a.height}: DeepLab-v2 ResNet-{a.seg_depth} MSC + dense CRF 10 it '
                      f'on CPU, width {a.width})', s, 'per image', 1, crf_s=_timed_part(a, crf))


def stage_make_seg_crf(a):
    """make_seg's CRF stage as it runs beside a GPU, where the network costs a fraction of the CRF: the real loop
    (misc.workpool.Background with make_seg's own job: CRF, palette PNG, PNG) over --crf_images images of
    --crf_sizes px (300-500) with given softmax maps, in --crf_workers processes (1 = inline). Images per second of
    the whole loop."""
    import tempfile

    import numpy as np
    from misc.workpool import Background
    from step.make_seg import _crf_and_write
    rng = np.random.default_rng(0)
    items = []
    for i in range(a.crf_images):
        h, w = (int(v) for v in rng.integers(a.crf_sizes[0], a.crf_sizes[1] + 1, 2))
        img = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
        logits = rng.normal(size=(a.classes + 1, h // 8 + 1, w // 8 + 1)).astype(np.float32) * 3
        up = np.repeat(np.repeat(logits, 8, 1), 8, 2)[:, :h, :w]
        prob = np.exp(up - up.max(0))
        items.append((img, (prob / prob.sum(0)).astype(np.float32)))
    params = dict(t=10, pos_w=3, pos_xy_std=1, bi_w=4, bi_xy_std=67, bi_rgb_std=3)
    with tempfile.TemporaryDirectory() as d, Background(a.crf_workers, 'process') as pool:
        pool.submit(int, 0)  # the workers start before the clock does (a real run amortises their start)
        pool.wait()

        def once():
            for i, (img, prob) in enumerate(items):
                pool.submit(_crf_and_write, img, prob, params, os.path.join(d, f'p{i}.png'),
                            os.path.join(d, f's{i}.png'))
            pool.wait()
        s = _timed(a, once)
    return _result(a, f'make_seg CRF beside a GPU ({a.crf_images} images of {a.crf_sizes[0]}-{a.crf_sizes[1]} px, '
                      f'{a.classes + 1} classes, '
                      f'{a.crf_workers} CRF process{"es" if a.crf_workers > 1 else " (inline)"})', s,
                   f'per {a.crf_images} images', a.crf_images, crf_workers=a.crf_workers)


STAGES = {'train_step': stage_train_step, 'make_cam': stage_make_cam, 'make_cam_unoptimised': stage_make_cam_unoptimised,
          'cam_to_ir_label': stage_cam_to_ir_label, 'train_irn_step': stage_train_irn_step,
          'make_sem_seg': stage_make_sem_seg, 'train_seg_step': stage_train_seg_step, 'make_seg': stage_make_seg,
          'make_seg_crf': stage_make_seg_crf}
DEFAULT_STAGES = [s for s in STAGES if s not in ('make_cam_unoptimised', 'make_seg_crf')]
# seconds one run of a stage (a fresh process: start, model, warm-up and --repeats runs) may take on a GPU; on the
# CPU there is no limit unless --timeout is given
GPU_LIMITS = {'train_step': 90, 'make_cam': 60, 'make_cam_unoptimised': 90, 'cam_to_ir_label': 60,
              'train_irn_step': 90, 'make_sem_seg': 60, 'train_seg_step': 120, 'make_seg': 90, 'make_seg_crf': 60}
NO_NETWORK = ('cam_to_ir_label', 'make_seg_crf')  # CPU-only stages: measured once, not per precision


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--stages', nargs='+', default=DEFAULT_STAGES, choices=list(STAGES))
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--amp', nargs='+', default=['none'], choices=('none', 'tf32', 'bf16', 'fp16'),
                   help='precisions to measure each stage in')
    p.add_argument('--channels_last', default='auto', choices=('auto', 'True', 'False'))
    p.add_argument('--fold_bn', default=False, type=lambda v: v == 'True',
                   help='make_cam: fold BatchNorm (True/False; default False as --cam_fold_bn)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
    p.add_argument('--nproc', type=int, nargs='+', default=[1],
                   help='processes for train_step (through torchrun, gradients summed as in training): e.g. 1 2')
    p.add_argument('--width', type=int, default=64, help='backbone width (64 = the real networks)')
    p.add_argument('--classes', type=int, default=20)
    p.add_argument('--crop', type=int, default=512)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--bank', type=int, default=4)
    p.add_argument('--sfc_micro_batch', type=int, default=10)
    p.add_argument('--irn_batch', type=int, default=32)
    p.add_argument('--irn_micro_batch', type=int, default=8)
    p.add_argument('--seg_batch', type=int, default=10, help='train_seg images per update (the ImageNet recipe)')
    p.add_argument('--seg_crop', type=int, default=321)
    p.add_argument('--seg_micro_batch', type=int, default=5, help='0 = the whole batch in one pass')
    p.add_argument('--seg_depth', type=int, default=101)
    p.add_argument('--width_px', type=int, default=500)
    p.add_argument('--height', type=int, default=375)
    p.add_argument('--scales', type=float, nargs='+', default=[1.0, 0.5, 1.5, 2.0])
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--crf_images', type=int, default=12, help='make_seg_crf: images per timed run')
    p.add_argument('--crf_sizes', type=int, nargs=2, default=[300, 500], help='make_seg_crf: image sides drawn from')
    p.add_argument('--crf_workers', type=int, nargs='+', default=[1, 2], help='make_seg_crf: CRF processes to compare')
    p.add_argument('--timeout', type=float, default=None,
                   help='seconds per run of a stage (default: GPU_LIMITS on CUDA, none on the CPU); a run past it is '
                        'reported as a timeout with what it printed')
    p.add_argument('--json', default=None, help='also write the results to this file')
    p.add_argument('--_child', default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = get_parser().parse_args(argv)
    if a._child:
        import torch
        from misc import distributed
        if a.threads:
            torch.set_num_threads(a.threads)
        a.device = distributed.init(a.device)
        a.amp, a.crf_workers = a.amp[0], a.crf_workers[0]
        from misc.torchutils import setup_precision
        setup_precision(a.amp, a.device)
        r = STAGES[a._child](a)
        if distributed.is_main():
            print(json.dumps(r))
        distributed.shutdown()
        return
    import torch
    from misc.torchutils import environment_line
    print(environment_line(a.device))
    print(f'benchmark: threads {a.threads or torch.get_num_threads()}, channels_last {a.channels_last}, '
          f'width {a.width}, repeats {a.repeats}')
    base = []
    for k, v in vars(a).items():  # every setting but the ones this loop varies
        if k not in ('stages', 'amp', 'json', '_child', 'nproc', 'crf_workers', 'timeout'):
            base += [f'--{k}', *(map(str, v) if isinstance(v, list) else [str(v)])]
    results = []
    runs = [(s, amp, n, w) for s in a.stages for amp in (a.amp[:1] if s in NO_NETWORK else a.amp)
            for n in (a.nproc if s == 'train_step' else [1]) for w in (a.crf_workers if s == 'make_seg_crf' else [1])]
    for s, amp, nproc, workers in runs:
        launch = [sys.executable] if nproc == 1 else [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                                      '--nproc_per_node', str(nproc)]
        limit = a.timeout or (GPU_LIMITS[s] if a.device == 'cuda' else None)
        r = run_stage([*launch, os.path.abspath(__file__), *base, '--_child', s, '--amp', amp,
                       '--crf_workers', str(workers)], limit)
        r.setdefault('stage', s)
        r['amp'] = amp
        results.append(r)
        if 'error' in r:
            print(f'{s} ({amp}): {r["error"]}\n' + '\n'.join('    ' + line for line in r['stderr_tail']), flush=True)
        else:
            extra = f', image bank {r["bank_mb"]:.0f} MB' if 'bank_mb' in r else ''
            extra += f' (random walks {r["walk_s"]:.2f} s)' if 'walk_s' in r else ''
            extra += f' (CRF {r["crf_s"]:.2f} s = {100 * r["crf_s"] / r["seconds"]:.0f}%)' if 'crf_s' in r else ''
            mem = 'peak GPU memory (allocated)' if a.device == 'cuda' else 'peak RSS'
            print(f'{r["stage"]} [amp {amp}]: {r["seconds"]:.3f} s {r["unit"]}, {r["images_per_s"]:.2f} images/s, '
                  f'{mem} {r["peak_mb"] / 1024:.2f} GB{extra}', flush=True)
        if a.json:  # after every stage, so that a run stopped by a time limit keeps what it measured
            with open(a.json, 'w') as f:
                json.dump(results, f, indent=1)
    return results


def run_stage(cmd, limit):
    """One stage run in its own process: its result, or {'error': why, 'exit_status', 'stderr_tail'} where it failed
    (a non-zero exit with the last lines it wrote to stderr) or passed its time limit (and what it wrote so far)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors='replace') if isinstance(e.stderr, bytes) else (e.stderr or '')
        return {'error': f'stopped at its time limit of {limit:.0f} s', 'exit_status': None,
                'stderr_tail': err.strip().splitlines()[-15:]}
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        return {'error': f'failed with exit status {out.returncode}', 'exit_status': out.returncode,
                'stderr_tail': out.stderr.strip().splitlines()[-15:]}
    return json.loads(lines[-1])


if __name__ == '__main__':
    main()
