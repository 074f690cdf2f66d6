"""Micro-benchmarks of the heavy stages, shared by the run planner (--plan True, misc/plan.py) and the benchmark
tool (tools/benchmark.py): each `stage_<name>(a)` builds the stage's real network and step code at the sizes in `a`
(an argparse.Namespace), times it after a warm-up and returns {'stage', 'seconds', 'unit', 'images_per_s',
'peak_mb', ...}. Random weights (the cost does not depend on them); peak memory is the resident set on the CPU,
torch.cuda.max_memory_allocated on CUDA. `a.run_args` holds run_sample's flags (a run's own, or the defaults).
"""
import os
import resource
import time


def reset_device_state(device):
    """Between two stages measured in one process: cuDNN autotuning off (a stage that wants it turns it on), the
    caching allocator emptied and the peak-memory counter reset, so that each stage's figures are its own."""
    import torch
    if torch.device(device).type == 'cuda':
        torch.backends.cudnn.benchmark = False
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def crf_available():
    """pydensecrf imports (it is compiled; a machine without a build of it for its Python cannot run the CRF)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
        return True
    except ImportError:
        return False


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
    """Mean seconds of `once()` over a.repeats runs after one warm-up run (allocator, cuDNN autotuning, lazy
    initialisation); without the warm-up only when a.warmup is False (the tests of this function)."""
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


def _method_args(a, **overrides):
    """The run's own flags (a.run_args: run_sample's parsed flags, given by the run planner, or their defaults, given
    by tools/benchmark.py), with the stage's overrides."""
    import copy
    args = copy.copy(a.run_args)
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


def make_cam_stage(a, optimised, authors_prototype=None):
    import numpy as np
    import torch
    from misc.torchutils import autocast, prepare_for_inference, to_memory_format
    from net.resnet50_sfc import CAM
    from step.make_cam import postprocess
    from voc12.dataloader import multiscale_flip
    torch.manual_seed(0)
    if not optimised:  # the authors' prototype, (n, C, D, h, w) and all (tools/benchmark.py, its own process)
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
    return make_cam_stage(a, True)


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
    crf, has_crf = [], getattr(a, 'make_seg_crf', True) and crf_available()

    def once():
        with tempfile.TemporaryDirectory() as d:
            with torch.inference_mode():
                prob = F.softmax(predict_logits(model, x, img.shape[:2], args.seg_test_scales, args.seg_test_flip,
                                                amp=a.amp, channels_last=_layout(a)), dim=0)
                pred = torch.argmax(prob, dim=0).cpu().numpy().astype(np.uint8)
                camio.write_label(os.path.join(d, 'nocrf.png'), pred)
                prob = prob.cpu().numpy()
            if not has_crf:
                return
            t1 = time.perf_counter()  # the CRF worker's job: the CRF and its two PNGs
            _crf_and_write(img, prob, crf_params(args), os.path.join(d, 'p.png'), os.path.join(d, 's.png'))
            crf.append(time.perf_counter() - t1)
    s = _timed(a, once)
    if not has_crf:  # the network alone; the plan and the report say that the CRF was not timed
        why = 'pydensecrf is not installed' if getattr(a, 'make_seg_crf', True) else 'not asked for'
        return _result(a, f'make_seg ({a.width_px}x{a.height}: DeepLab-v2 ResNet-{a.seg_depth} MSC, width {a.width}; '
                          f'dense CRF NOT timed: {why})', s, 'per image', 1, crf_s=None)
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


STAGES = {'train_step': stage_train_step, 'make_cam': stage_make_cam, 'cam_to_ir_label': stage_cam_to_ir_label,
          'train_irn_step': stage_train_irn_step, 'make_sem_seg': stage_make_sem_seg,
          'train_seg_step': stage_train_seg_step, 'make_seg': stage_make_seg, 'make_seg_crf': stage_make_seg_crf}
CRF_STAGES = ('cam_to_ir_label', 'make_seg_crf')  # nothing but the dense CRF: they need pydensecrf
