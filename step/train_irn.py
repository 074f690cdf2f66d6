"""train_irn (docs/faithfulness §7): IRN's boundary and displacement branches on the IR labels -> ckpt/res50_irn.pth.

Frozen ResNet-50 (ImageNet weights, not the SFC classifier's), affinity labels from the IR labels reduced
x0.25 on a radius-10 PathIndex, L = (L_pos + L_neg)/2 + (L_dp_fg + L_dp_bg)/2, PolyOptimizer with the
authors' momentum quirk (edge lr 0.1, displacement lr 1.0), no clipping. Afterwards the displacement
mean over --irn_dp_mean_list (top-left 512 crops) fills MeanShift's running_mean, as the authors do.
Resumes from ckpt/irn_resume.pth. The backbone runs without autograd (it receives no gradient), which
halves the authors' memory; affinity labels are built on the device from the reduced labels.
"""
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from misc import camio, distributed, imutils
from misc.dataset import get_dataset, num_classes
from misc.indexing import PathIndex
from misc.pyutils import AverageMeter
from misc.torchutils import PolyOptimizer, autocast, explain_oom, grad_scaler, to_memory_format, use_channels_last
from misc.trainutils import (DataWait, FiniteGuard, apply_update, curve_log, epoch_order, load_resume_state,
                             load_scaler, peak_memory_gb, progress_line, resume_writer, schedule, step_loader,
                             training_device)
from net import resnet50 as resnet
from net import resnet50_irn

def affinity_labels_torch(reduced, src, dst, n_classes):
    """bg_pos, fg_pos, neg (B, n_dirs, n_src) bool from reduced labels (B, h, w) (docs/faithfulness §7.2)."""
    flat = reduced.reshape(reduced.shape[0], -1)  # uint8: 8x smaller gathers than int64
    a = flat[:, src].unsqueeze(1)
    b = flat[:, dst.reshape(-1)].reshape(flat.shape[0], *dst.shape)
    valid = (a < n_classes) & (b < n_classes)
    eq = a == b
    pos = eq & valid
    return pos & (a == 0), pos & (a > 0), ~eq & valid


def run(args):
    device = training_device(args)
    ds_mod = get_dataset(args)
    crop = args.irn_crop_size
    ds = ds_mod.AffinityDataset(args.train_list, args.dataset_root, args.ir_label_dir, crop,
                                rescale=tuple(args.irn_rescale), hor_flip=args.irn_hor_flip, seed=args.seed)
    B = args.irn_batch_size
    steps_per_epoch, max_step = schedule(len(ds), B, args.irn_num_epoches, args.train_list, '--irn_batch_size')
    path_index = PathIndex(args.irn_radius, (crop // 4, crop // 4))
    inds = [torch.from_numpy(p).to(device) for p in path_index.path_indices]
    src = torch.from_numpy(path_index.src_indices).to(device)
    dst = torch.from_numpy(path_index.dst_indices).to(device)
    print(f'  {len(ds)} images, {steps_per_epoch} steps/epoch, {max_step} steps; PathIndex radius {args.irn_radius}: '
          f'{len(path_index.search_dst)} directions, {len(path_index.src_indices)} sources')

    model = resnet50_irn.Net(args.backbone_width, args.backbone_weights).to(device)
    model = to_memory_format(model, use_channels_last(args.channels_last, device))
    edge_p, dp_p = model.trainable_parameters()
    optimizer = PolyOptimizer([{'params': edge_p, 'lr': args.irn_lr, 'weight_decay': args.irn_weight_decay},
                               {'params': dp_p, 'lr': args.irn_lr * args.irn_dp_lr_mult,
                                'weight_decay': args.irn_weight_decay}],
                              lr=args.irn_lr, weight_decay=args.irn_weight_decay, max_step=max_step,
                              momentum=args.irn_momentum, power=args.irn_poly_power)
    resume_path = os.path.join(args.ckpt_dir, camio.IRN_RESUME)
    scaler = grad_scaler(args.amp, device)
    step = 0
    if args.irn_resume and os.path.isfile(resume_path):
        state = load_resume_state(resume_path, max_step)
        resnet50_irn.load_irn_weights(model, state['net'], resume_path)
        optimizer.load_state_dict(state['optimizer'])
        load_scaler(scaler, state, resume_path)
        step = int(state['step'])
        print(f'  resumed from {resume_path} at step {step}/{max_step}')
    elif args.backbone_weights == 'none' and args.irn_calibrate_bn:
        order = epoch_order(args.seed, 0, len(ds))[:max(B, 32)]
        img = torch.stack([torch.from_numpy(ds[i]['img']) for i in order]).to(device)
        print(f'  random initialisation: calibrated {resnet.calibrate(model.resnet50, img)} BatchNorm layers '
              f'on {len(order)} training crops')

    scalars = curve_log(args, 'train_irn', step)
    guard = FiniteGuard('train_irn', resume_path, 'Lower --irn_lr.')
    save_state = resume_writer(resume_path, model, optimizer, max_step, scaler, before=(guard.check, scalars.flush))
    try:
        step = train_loop(args, model, optimizer, ds, inds, src, dst, path_index, step, max_step, save_state,
                          resume_path, scalars, guard, scaler, device)
    finally:
        scalars.close()
    if not distributed.is_main():
        return {'steps': step}
    if args.irn_dp_mean:
        dp_mean(model, args, ds_mod, device)
    out = os.path.join(args.ckpt_dir, camio.IRN_WEIGHTS)
    camio.save_checkpoint({'net': model.state_dict()}, out)
    print(f'  wrote {out}')
    return {'steps': step}


def train_loop(args, model, optimizer, ds, inds, src, dst, path_index, step, max_step, save_state, resume_path,
               scalars, guard, scaler, device):
    """Steps step..max_step (docs/faithfulness §7.4); returns the last step."""
    B, crop, n_cls = args.irn_batch_size, args.irn_crop_size, num_classes(args)
    rank, world = distributed.rank(), distributed.world()
    distributed.split_batch(B, '--irn_batch_size')
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    mb = args.irn_micro_batch if args.irn_micro_batch > 0 else B
    meter = AverageMeter()
    t0, start, run_peak = time.time(), step, None
    channels_last = use_channels_last(args.channels_last, device)
    batches = DataWait(step_loader(ds, start, max_step, B, args.seed, args.num_workers, device, rank, world))
    pbar = tqdm(total=max_step, initial=step, desc='train_irn', dynamic_ncols=True, mininterval=5)
    for step in range(start, max_step):
        pack = batches.next()
        img = to_memory_format(pack['img'].to(device, non_blocking=True), channels_last)
        labels = affinity_labels_torch(pack['reduced_label'].to(device), src, dst, n_cls)
        with explain_oom(f'train_irn, step {step} ({img.shape[0]} crops of {crop}x{crop})',
                         f'Lower --irn_micro_batch (now {mb}; the gradients do not change). Re-running resumes '
                         f'from {resume_path}.', device):
            losses = accumulate_gradients(model, img, labels, inds, path_index, mb, optimizer, args.amp, scaler)
        distributed.sum_gradients(params)
        losses = {k: distributed.all_reduce_sum(v) for k, v in losses.items()}
        guard.add(step, losses['total'])  # read at the next progress line or checkpoint: no sync here
        apply_update(optimizer, scaler, step)
        wait, took = batches.lap()
        meter.add({**{k: losses[k] for k in ('pos', 'neg', 'dp_fg', 'dp_bg')}, 'wait': wait, 'took': took})
        step += 1
        peak = peak_memory_gb(device, reset=True)
        run_peak = peak if run_peak is None else max(run_peak, peak)
        scalars.add(step, **{f'loss/{k}': losses[k] for k in ('pos', 'neg', 'dp_fg', 'dp_bg')},
                    lr=optimizer.param_groups[0]['lr'], **{'time/data_wait': wait, 'time/step': took},
                    **({'mem/peak_gb': peak} if peak is not None else {}))
        pbar.update(1)
        if (step - 1) % args.irn_print_freq == 0 or step == max_step:
            guard.check()
            scalars.flush()
            pbar.write(progress_line('step', step, max_step, start, t0, meter,
                                     [('pos', 'L_pos'), ('neg', 'L_neg'), ('dp_fg', 'L_dp_fg'), ('dp_bg', 'L_dp_bg')],
                                     optimizer.param_groups[0]['lr'], B, run_peak))
        if step % args.irn_ckpt_freq == 0:
            save_state(step)
    pbar.close()
    step = max(start, max_step)
    save_state(step)
    return step


def accumulate_gradients(model, img, labels, inds, path_index, micro_batch, optimizer, amp='none', scaler=None):
    """Forward/backward the batch in micro-batches with the whole batch's label counts as denominators:
    the same loss and gradients as one pass (GroupNorm and the frozen BN are per-sample), with the heads'
    activations held for `micro_batch` images only. Under --amp the network runs in autocast and the losses
    in float32. Under torchrun the counts are summed over the ranks, so each rank's terms are its share of the
    global batch's. Returns this rank's share of the loss terms (detached)."""
    counts = {k: distributed.all_reduce_sum(v) for k, v in resnet50_irn.label_counts(*labels).items()}
    optimizer.zero_grad(set_to_none=True)
    total = {}
    for i in range(0, img.shape[0], micro_batch):
        sl = slice(i, i + micro_batch)
        with autocast(amp, img.device):
            edge_out, dp_out = model(img[sl])
        terms = resnet50_irn.irn_training_loss(edge_out, dp_out, inds, path_index.search_dst, path_index.radius_floor,
                                               *(t[sl] for t in labels), counts=counts)
        (scaler.scale(terms['total']) if scaler is not None else terms['total']).backward()
        for k, v in terms.items():
            total[k] = total.get(k, 0.0) + v.detach()
    return total


def dp_mean(model, args, ds_mod, device):
    """MeanShift running_mean = mean over batches of the batch mean of dp_out (SFC/train_irn.py:89-110)."""
    ds = ds_mod.ImageDataset(args.irn_dp_mean_list, args.dataset_root)
    B, crop = args.irn_batch_size, args.irn_crop_size
    model.eval()
    means = []
    with torch.no_grad():
        for b in range(len(ds) // B):
            imgs = []
            for n in ds.names[b * B:(b + 1) * B]:
                x = imutils.normalize(ds.read(n))
                box = imutils.top_left_box(x.shape[0], x.shape[1], crop)
                imgs.append(imutils.apply_crop(x, box, crop, 0).transpose(2, 0, 1))
            _, dp = model(torch.from_numpy(np.stack(imgs)).to(device))
            means.append(dp.mean(dim=(0, 2, 3)))
    if means:
        model.fc_dp7[4].running_mean.copy_(torch.stack(means).mean(0))
    print(f'  displacement mean over {len(means)} batches of {args.irn_dp_mean_list}: '
          f'{model.fc_dp7[4].running_mean.tolist()}')
    model.train()
