"""train_seg (docs/deeplab.md): DeepLab-v2 (ResNet-101, ASPP, MSC) trained on the pseudo masks -> ckpt/deeplab.pth.

Reads the masks in --seg_label_dir (sem_seg/ by default; ir_label/ for the COCO recipe, 255 ignored), never
the GT. Per update: --seg_iter_size accumulation steps of --seg_batch_size random crops; on each MSC output
(full, 0.5x, 0.75x, max) the CE against the labels resized to it by nearest neighbour (plain, or balanced:
the mean of the background-pixel CE and the foreground-pixel CE), summed and divided by the iter size.
SGD with real momentum, backbone conv weights at lr, ASPP weights x10, ASPP biases x20 without weight decay,
BatchNorm frozen (statistics and affine), poly decay updated every --seg_lr_decay_every updates. Micro-batches
(--seg_micro_batch) give the same gradients with less memory. The final weights are kept (no selection on
GT). Resumes from ckpt/seg_resume.pth; curves go to metrics/train_seg_scalars.jsonl.
"""
import os
import time

import torch
from tqdm import tqdm

from misc import camio, distributed
from misc.dataset import get_dataset, num_classes
from misc.errors import BadInput
from misc.pyutils import AverageMeter
from misc.torchutils import PolyOptimizer, autocast, explain_oom, grad_scaler, to_memory_format, use_channels_last
from misc.trainutils import (DataWait, FiniteGuard, apply_update, curve_log, epoch_order, load_resume_state,
                             load_scaler, peak_memory_gb, progress_line, resume_writer, schedule, step_loader,
                             training_device)
from net import deeplab, seg_loss
from net.resnet50 import calibrating_batchnorm


def resolve_init(args):
    """(state dict in our keys or None, layout, stride_in, input_norm, source text) of --seg_init."""
    if args.seg_init is None:
        raise BadInput(f'--seg_recipe {args.seg_recipe} needs --seg_init: the path of deeplab-pytorch\'s '
                       f'deeplabv1_resnet101-coco.pth (or imagenet, another file, or none)')
    src = deeplab.TORCHVISION_URL[args.seg_depth] if args.seg_init == 'imagenet' else args.seg_init
    sd, layout = deeplab.init_layout(src, '--seg_init')
    stride_in, norm = deeplab.resolve_stride_and_norm(layout, args.seg_stride_in, args.seg_input_norm)
    return sd, layout, stride_in, norm, src


def build_model(args, n_classes):
    sd, layout, stride_in, norm, src = resolve_init(args)
    model = deeplab.build(n_classes, args.seg_depth, args.backbone_width, stride_in, args.seg_aspp_rates,
                          args.seg_msc_scales)
    how = deeplab.load_weights(model, sd, f'--seg_init {src}') if sd is not None else 'random initialisation'
    if how == 'backbone':
        how = 'backbone loaded, ASPP fresh (normal 0.01)'
    print(f'  DeepLab-v2 ResNet-{args.seg_depth} (width {args.backbone_width}), {n_classes} classes; init '
          f'{args.seg_init} [{layout} layout]: {how}; stride in the {stride_in} conv; input normalisation {norm}')
    return model, norm


def check_not_gt(label_dir, root, layout):
    """train_seg never reads GT: refuse a --seg_label_dir inside the dataset's GT folders."""
    real = os.path.realpath(label_dir)
    for d in (layout.gt_dir, 'SegmentationClass', 'SegmentationClassAug'):
        g = os.path.realpath(os.path.join(root, d))
        if real == g or real.startswith(g + os.sep):
            raise BadInput(f'--seg_label_dir {label_dir} is the dataset\'s ground truth ({d}/): the segmentation '
                           f'model trains on pseudo masks only (sem_seg/ or ir_label/ of a work directory)')


def optimizer_for(model, args, max_step):
    backbone, head_w, head_b = model.param_groups()
    lr, wd = args.seg_lr, args.seg_weight_decay
    return PolyOptimizer([{'params': backbone, 'lr': lr, 'weight_decay': wd},
                          {'params': head_w, 'lr': lr * args.seg_head_lr_mult, 'weight_decay': wd},
                          {'params': head_b, 'lr': lr * args.seg_head_bias_lr_mult, 'weight_decay': 0.0}],
                         lr=lr, weight_decay=wd, max_step=max_step, momentum=args.seg_momentum,
                         power=args.seg_poly_power, decay_every=args.seg_lr_decay_every)


def seg_step_gradients(model, img, label, kind, iter_size=1, micro_batch=0, amp='none', scaler=None, labels=None):
    """Accumulate the gradients of one accumulation step: sum over the MSC outputs of the loss against the labels
    resized to each output, divided by iter_size, forward/backward in micro-batches with the whole step's pixel
    counts as denominators (the same gradients as one pass). `labels`: the labels already resized to each output
    (by the loader workers); else they are resized here. Under --amp the network runs in autocast and the losses
    in float32 (`scaler` scales them for fp16). Returns the step's loss (detached)."""
    n = img.shape[0]
    mb = micro_batch if micro_batch > 0 else n
    dens = None
    total = torch.zeros((), device=img.device)
    for i in range(0, n, mb):
        with autocast(amp, img.device):
            outs = model(img[i:i + mb])
        if dens is None:  # all crops share a size, so the first micro-batch tells every output's size
            if labels is None:
                labels = [seg_loss.resize_labels(label, o.shape[2:]) for o in outs]
            if [tuple(lab.shape[1:]) for lab in labels] != [tuple(o.shape[2:]) for o in outs]:
                raise ValueError('labels resized to other sizes than the outputs')
            dens = [distributed.all_reduce_sum(seg_loss.denominators(lab, kind)) for lab in labels]  # all ranks
        loss = sum(seg_loss.output_loss(o, lab[i:i + mb], d, kind) for o, lab, d in zip(outs, labels, dens))
        loss = loss / iter_size
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total = total + loss.detach()
    return total


def calibrate(model, ds, device, n_images, seed):
    """Random initialisation only: every frozen BatchNorm takes its statistics from training crops."""
    order = epoch_order(seed, 0, len(ds))[:n_images]
    img = torch.stack([torch.from_numpy(ds[i]['img']) for i in order]).to(device)
    with torch.no_grad(), calibrating_batchnorm(model.base) as bns:
        model.base(img)
    print(f'  random initialisation: calibrated {len(bns)} BatchNorm layers on {len(order)} training crops')


def run(args):
    device = training_device(args)
    ds_mod = get_dataset(args)
    n_cls = num_classes(args)
    model, norm = build_model(args, n_cls)
    check_not_gt(args.seg_label_dir, args.dataset_root, ds_mod.ImageDataset.layout)
    ds = ds_mod.SegmentationDataset(args.seg_train_list, args.dataset_root, args.seg_label_dir, args.seg_crop_size,
                                    args.seg_scales, args.seg_scale_mode, args.seg_base_size or None,
                                    args.seg_hor_flip, norm, args.seed)
    B, A, max_step = args.seg_batch_size, args.seg_iter_size, args.seg_iters
    schedule(len(ds), B, 1, args.seg_train_list, '--seg_batch_size')  # stops on a list shorter than a batch
    print(f'  {len(ds)} images with pseudo masks from {args.seg_label_dir}; {max_step} updates of {A} x {B} crops '
          f'of {args.seg_crop_size} ({max_step * A * B / len(ds):.1f} epochs); scales {args.seg_scales} '
          f'({args.seg_scale_mode}), {args.seg_loss} CE, lr {args.seg_lr} (x{args.seg_head_lr_mult:g} / '
          f'x{args.seg_head_bias_lr_mult:g} head), momentum {args.seg_momentum}')
    model = to_memory_format(model.to(device), use_channels_last(args.channels_last, device))
    optimizer = optimizer_for(model, args, max_step)
    resume_path = os.path.join(args.ckpt_dir, camio.SEG_RESUME)
    scaler = grad_scaler(args.amp, device)
    step = 0
    if args.seg_resume and os.path.isfile(resume_path):
        state = load_resume_state(resume_path, max_step)
        deeplab.load_weights(model, deeplab.to_model_keys(state['net'], resume_path)[0], resume_path)
        optimizer.load_state_dict(state['optimizer'])
        load_scaler(scaler, state, resume_path)
        step = int(state['step'])
        print(f'  resumed from {resume_path} at update {step}/{max_step}')
    elif args.seg_init == 'none' and args.seg_calibrate_bn:
        calibrate(model, ds, device, max(B, 8), args.seed)

    ds.label_sizes = output_sizes(model, args.seg_crop_size, device)  # the loader workers resize the labels
    scalars = curve_log(args, 'train_seg', step)
    guard = FiniteGuard('train_seg', resume_path, 'Lower --seg_lr, or use --seg_loss balanced with ImageNet init.')
    save_state = resume_writer(resume_path, model, optimizer, max_step, scaler, before=(guard.check, scalars.flush))
    try:
        step = train_loop(args, model, optimizer, ds, step, max_step, save_state, resume_path,
                          scalars, guard, scaler, device)
    finally:
        scalars.close()
    out = os.path.join(args.ckpt_dir, camio.SEG_WEIGHTS)
    if not distributed.is_main():
        return {'steps': step, 'weights': out}
    camio.save_checkpoint({'net': model.state_dict(), 'meta': deeplab.checkpoint_meta(model, norm)}, out)
    print(f'  wrote {out} (final weights of update {step}; no selection on GT)')
    return {'steps': step, 'weights': out}


def output_sizes(model, crop, device):
    """The sizes of the network's training outputs (full, 0.5x, 0.75x, max) for a crop, from one forward pass."""
    with torch.no_grad():
        return [tuple(o.shape[2:]) for o in model(torch.zeros(1, 3, crop, crop, device=device))]


def train_loop(args, model, optimizer, ds, step, max_step, save_state, resume_path, scalars, guard, scaler, device):
    B, A = args.seg_batch_size, args.seg_iter_size
    rank, world = distributed.rank(), distributed.world()
    distributed.split_batch(B, '--seg_batch_size')
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    meter = AverageMeter()
    t0, start, run_peak = time.time(), step, None
    channels_last = use_channels_last(args.channels_last, device)
    batches = DataWait(step_loader(ds, start * A, max_step * A, B, args.seed, args.num_workers, device, rank, world))
    pbar = tqdm(total=max_step, initial=step, desc='train_seg', dynamic_ncols=True, mininterval=5)
    for step in range(start, max_step):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        for _ in range(A):
            pack = batches.next()
            img = to_memory_format(pack['img'].to(device, non_blocking=True), channels_last)
            labels = [t.to(device, non_blocking=True).long() for t in pack['labels']]
            with explain_oom(f'train_seg, update {step} ({img.shape[0]} crops of {args.seg_crop_size})',
                             f'Lower --seg_micro_batch (now {args.seg_micro_batch or B}; the gradients do not '
                             f'change). Re-running resumes from {resume_path}.', device):
                loss = loss + seg_step_gradients(model, img, None, args.seg_loss, A, args.seg_micro_batch, args.amp,
                                                 scaler, labels)
        distributed.sum_gradients(params)
        loss = distributed.all_reduce_sum(loss)
        guard.add(step, loss)  # read at the next progress line or checkpoint: no sync here
        apply_update(optimizer, scaler, step)
        wait, took = batches.lap()
        step += 1
        meter.add({'loss': loss, 'wait': wait, 'took': took})
        peak = peak_memory_gb(device, reset=True)
        run_peak = peak if run_peak is None else max(run_peak, peak)
        scalars.add(step, **{'loss/seg': loss, 'lr': optimizer.param_groups[0]['lr'], 'time/data_wait': wait,
                             'time/step': took}, **({'mem/peak_gb': peak} if peak is not None else {}))
        pbar.update(1)
        if (step - 1) % args.seg_print_freq == 0 or step == max_step:
            guard.check()
            scalars.flush()
            pbar.write(progress_line('update', step, max_step, start, t0, meter, [('loss', 'loss')],
                                     optimizer.param_groups[0]['lr'], A * B, run_peak))
        if step % args.seg_ckpt_freq == 0:
            save_state(step)
    pbar.close()
    step = max(start, max_step)
    save_state(step)
    return step
