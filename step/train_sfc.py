"""SFC training (docs/faithfulness §3): ResNet-50 CAM classifier with Image Bank Re-sampling and the MSDW loss.

Per step: a batch of B crops plus `sfc_bank_samples` bank images (B+4 = 20 for VOC); a second forward
at half scale; L = L_cls + 1.6 L_PDW + 0.8 L_WDW; global grad-norm clip 1.0; PolyOptimizer with the
authors' momentum quirk. Every SFC component can be switched off (--sfc_ibr, --sfc_pdw, --sfc_wdw,
--sfc_dc_weights); with all four off this is the plain CAM baseline.

Writes under ckpt/: res50_sfc_final.pth, res50_sfc_best_gt.pth (only with --sfc_select_on_gt) and
res50_sfc.pth (the one make_cam loads: best-on-GT when selection is on, else final), each {'net': sd};
sfc_resume.pth holds the full training state (model, optimizer, step, bank, RNG) for resuming.
Differences from the authors that do not change the computation: the in-batch re-shuffle and the dead
torch.randperm(20) are dropped (they only consume RNG); stage0-2 run without autograd (they never get a
gradient); the bank lives on the device.
"""
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from misc import camio, distributed
from misc.dataset import get_dataset, num_classes
from misc.errors import BadInput
from misc.image_bank import ImageBank
from misc.metrics import ConfusionMatrix
from misc.pyutils import AverageMeter, format_table
from misc.torchutils import PolyOptimizer, autocast, explain_oom, grad_scaler, to_memory_format, use_channels_last
from misc.trainutils import (DataWait, FiniteGuard, apply_update, curve_log, epoch_order, load_resume_state,
                             load_scaler, peak_memory_gb, progress_line, resume_writer, schedule, step_loader,
                             training_device)
from net import resnet50_sfc, sfc_loss
from net import resnet50 as resnet


def stride_masks(valid, label, size):
    """Compact crop masks (N,H,W) + labels (N,C-1) -> (N,C,size,size): channel 0 = real-image area,
    channel c = that area if class c is present (authors' valid_mask[:,1:] *= label, then nearest)."""
    m = F.interpolate(valid[:, None].float(), size=(size, size), mode='nearest')
    return torch.cat([m, m * label[:, :, None, None]], dim=1)


def sfc_step_gradients(model, img, valid, label, w_ch, args, s1, s2, optimizer, scaler=None, n_total=None):
    """Gradients of L = L_cls + 1.6 L_PDW + 0.8 L_WDW for the batch (docs/faithfulness §3.5 steps 5-8), computed in
    micro-batches of --sfc_micro_batch images: every loss is a mean over the batch and every operation
    per-sample (frozen BN, PCM, prototype), so each chunk contributes its mean x (chunk size / batch size)
    and the accumulated gradient is the whole batch's. Under --amp the network runs in autocast and the
    losses in float32; `scaler` scales them for fp16. Under torchrun `img` is this rank's slice of a global
    batch of n_total images: each chunk still weighs chunk / n_total, and the ranks' gradients are summed.
    Returns this slice's share of the batch's loss terms (detached)."""
    n = n_total or img.shape[0]
    mb = args.sfc_micro_batch if args.sfc_micro_batch > 0 else n
    amp = getattr(args, 'amp', 'none')
    optimizer.zero_grad(set_to_none=True)
    zero = torch.zeros((), device=img.device)
    total = {'cls': zero, 'pdw': zero, 'wdw': zero}
    for i in range(0, img.shape[0], mb):
        sl = slice(i, min(i + mb, img.shape[0]))
        frac = (sl.stop - sl.start) / n
        x = img[sl]
        x2 = F.interpolate(x, scale_factor=args.sfc_half_scale, mode='bilinear', align_corners=True)
        with autocast(amp, img.device):
            out1 = model(x, stride_masks(valid[sl], label[sl], s1))
            out2 = model(x2, stride_masks(valid[sl], label[sl], s2))
        y = label[sl, :, None, None]
        y_bg = torch.cat([torch.ones_like(y[:, :1]), y], dim=1)
        terms = {'cls': sfc_loss.classification_loss(out1['score'], out2['score'], y) * frac,
                 'pdw': (args.sfc_pdw_weight * sfc_loss.gsc_loss(out1['cam'], out1['proto_cam'], w_ch) * frac
                         if args.sfc_pdw else zero),
                 'wdw': (args.sfc_wdw_weight * sfc_loss.cross_scale_loss(out1['cam'], out2['cam'], y_bg, w_ch) * frac
                         if args.sfc_wdw else zero)}
        loss = terms['cls'] + terms['pdw'] + terms['wdw']
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total = {k: total[k] + v.detach() for k, v in terms.items()}
    return total


def dc_weights(args, counts, steps_per_epoch):
    if not args.sfc_dc_weights:
        return np.ones(len(counts), dtype=np.float32)
    if (counts == 0).any():
        print(f'  note: {int((counts == 0).sum())} classes have no training image; their DC weight is kept')
    if str(args.sfc_dc_offset) == 'auto':
        offset = sfc_loss.dc_offset(steps_per_epoch, args.sfc_bank_samples if args.sfc_ibr else 0, len(counts))
    else:
        offset = float(args.sfc_dc_offset)
    if offset <= 0 and (counts == 0).any():
        raise BadInput(f'DC weights: classes without training images and offset {offset} divide by zero; '
                       f'pass a positive --sfc_dc_offset or --sfc_dc_weights False')
    return sfc_loss.msdw_class_weights(counts, offset)


def build_model(args, device):
    model = resnet50_sfc.Net(num_classes(args), backbone_width=args.backbone_width,
                             backbone_weights=args.backbone_weights, bg_factor=args.sfc_proto_bg_factor)
    return model.to(device)


def validate(model, dataset, device, eps=1e-5, amp='none'):
    """Scores (misc.metrics) of the PCM CAM and the prototype CAM on full images with GT (docs/faithfulness §3.9)."""
    ds_mod = get_dataset(dataset.layout.name)
    n_cls = dataset.layout.n_cat() + 1
    confs = {'cam': ConfusionMatrix(n_cls), 'proto_cam': ConfusionMatrix(n_cls)}
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False  # images of every size
    try:
        _validate(model, dataset, device, eps, amp, ds_mod, confs)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return {k: c.scores() for k, c in confs.items()}


def _validate(model, dataset, device, eps, amp, ds_mod, confs):
    with torch.no_grad():
        for i in range(len(dataset)):
            pack = dataset[i]
            img = torch.from_numpy(pack['img'])[None].to(device)
            label = torch.cat([torch.ones(1), torch.from_numpy(pack['label'])]).to(device).view(1, -1, 1, 1)
            with autocast(amp, device):
                out = model(img, label)
            gt = ds_mod.load_gt(dataset.root, pack['name'], dataset.layout)
            for k, conf in confs.items():
                up = F.interpolate(out[k], size=gt.shape, mode='bilinear', align_corners=False)[0]
                up = up / (up.amax(dim=(1, 2), keepdim=True) + eps)
                conf.update(gt, up.argmax(0).cpu().numpy(), pack['name'])


def validation_table(scores, class_names):
    """Per-class IoU of both CAMs, classes without GT pixels left out, mIoU last."""
    rows = [[n, scores['cam']['iou'][i], scores['proto_cam']['iou'][i]] for i, n in enumerate(class_names)
            if scores['cam']['gt_pixels'][i] > 0]
    rows.append(['mIoU', scores['cam']['miou'], scores['proto_cam']['miou']])
    return format_table(['class', 'IoU cam', 'IoU proto_cam'], rows)


def run(args):
    device = training_device(args)
    ds_mod = get_dataset(args)
    crop = args.sfc_crop_size
    if crop % 32:
        raise BadInput(f'--sfc_crop_size {crop} must be a multiple of 32 (stride-16 maps at full and half scale)')
    train_ds = ds_mod.ClassificationDataset(
        args.train_list, args.dataset_root, args.cls_labels, crop_size=crop,
        resize_long=tuple(args.sfc_resize_long) if args.sfc_resize_long_aug else None,
        hor_flip=args.sfc_hor_flip, seed=args.seed)
    B = args.sfc_batch_size
    steps_per_epoch, max_step = schedule(len(train_ds), B, args.sfc_num_epoches, args.train_list, '--sfc_batch_size')
    n_cat = ds_mod.N_CAT
    counts = train_ds.class_counts()
    w_cls = dc_weights(args, counts, steps_per_epoch)
    w_ch = sfc_loss.channel_weights(w_cls).to(device)
    print(f'  train list {args.train_list}: {len(train_ds)} images, {steps_per_epoch} steps/epoch, '
          f'{max_step} steps; batch {B} + {args.sfc_bank_samples if args.sfc_ibr else 0} bank images')
    print(f'  SFC components: IBR={args.sfc_ibr} L_PDW={args.sfc_pdw} L_WDW={args.sfc_wdw} '
          f'DC weights={args.sfc_dc_weights}')

    model = build_model(args, device)
    channels_last = use_channels_last(args.channels_last, device)
    model = to_memory_format(model, channels_last)
    backbone, new = model.trainable_parameters()
    optimizer = PolyOptimizer(
        [{'params': backbone, 'lr': args.sfc_lr, 'weight_decay': args.sfc_weight_decay},
         {'params': new, 'lr': args.sfc_lr * args.sfc_new_layer_lr_mult, 'weight_decay': args.sfc_weight_decay}],
        lr=args.sfc_lr, weight_decay=args.sfc_weight_decay, max_step=max_step,
        momentum=args.sfc_momentum, power=args.sfc_poly_power)
    bank = ImageBank(n_cat, crop, device) if args.sfc_ibr else None
    bank_gen = torch.Generator().manual_seed(args.seed)

    val_ds = None
    if args.sfc_select_on_gt:
        val_ds = ds_mod.ClassificationDataset(args.sfc_val_list, args.dataset_root, args.cls_labels)
        print(f'  NOTE: checkpoint selection uses PIXEL GT of {args.sfc_val_list} ({len(val_ds)} images) every '
              f'{args.sfc_val_freq} steps, as the authors did (--sfc_select_on_gt False to use the final weights)')

    ckpt = args.ckpt_dir
    resume_path = os.path.join(ckpt, camio.SFC_RESUME)
    scaler = grad_scaler(args.amp, device)
    start, best = 0, {'score': -1.0, 'step': None}
    if args.sfc_resume and os.path.isfile(resume_path):
        state = load_resume_state(resume_path, max_step)
        resnet50_sfc.load_sfc_weights(model, state['net'], resume_path)
        optimizer.load_state_dict(state['optimizer'])
        load_scaler(scaler, state, resume_path)
        if bank is not None:
            if state['bank'] is None:
                raise BadInput(f'{resume_path} was written with --sfc_ibr False; resume with the same setting')
            bank.load_state_dict(state['bank'])
        bank_gen.set_state(state['bank_rng'])
        start, best = int(state['step']), dict(state['best'])
        print(f'  resumed from {resume_path} at step {start}/{max_step}')
    elif args.backbone_weights == 'none' and args.sfc_calibrate_bn:
        calibrate(model, train_ds, device, args)

    scalars = curve_log(args, 'train_sfc', start)
    guard = FiniteGuard('train_sfc', resume_path, 'Lower --sfc_lr.')
    save = resume_writer(resume_path, model, optimizer, max_step, scaler, before=(guard.check, scalars.flush))

    def save_state(step, best):
        save(step, bank=bank.state_dict() if bank is not None else None, bank_rng=bank_gen.get_state(), best=best)

    try:
        step, best = train_loop(args, model, optimizer, train_ds, bank, bank_gen, w_ch, val_ds, start, max_step,
                                best, save_state, resume_path, scalars, guard, scaler, device)
    finally:
        scalars.close()
    if not distributed.is_main():
        return {'steps': step, 'best': best, 'weights': None}
    camio.save_checkpoint({'net': model.state_dict()}, os.path.join(ckpt, camio.SFC_FINAL))
    chosen = camio.SFC_FINAL
    if val_ds is not None and best['step'] is not None:
        chosen = camio.SFC_BEST_GT
        print(f'  selected step {best["step"]} on GT (cam {best["cam"]:.4f} + proto_cam {best["proto_cam"]:.4f})')
    camio.save_checkpoint(camio.load_checkpoint(os.path.join(ckpt, chosen)), os.path.join(ckpt, camio.SFC_WEIGHTS))
    print(f'  wrote {os.path.join(ckpt, camio.SFC_WEIGHTS)} (= {chosen})')
    return {'steps': step, 'best': best, 'weights': chosen,
            'class_weights': dict(zip(train_ds.layout.cat_list, [float(v) for v in w_cls]))}


def train_loop(args, model, optimizer, train_ds, bank, bank_gen, w_ch, val_ds, start, max_step, best, save_state,
               resume_path, scalars, guard, scaler, device):
    """Steps start..max_step (docs/faithfulness §3.5); returns (last step, best-on-GT record)."""
    B, crop, ckpt = args.sfc_batch_size, args.sfc_crop_size, args.ckpt_dir
    rank, world, main = distributed.rank(), distributed.world(), distributed.is_main()
    n_total = B + (args.sfc_bank_samples if bank is not None else 0)
    per_rank = distributed.split_batch(n_total, '--sfc_batch_size (+ --sfc_bank_samples)')
    distributed.split_batch(B, '--sfc_batch_size')
    params = [p for p in model.parameters() if p.requires_grad]
    meter = AverageMeter()
    t0 = time.time()
    s1, s2 = crop // 16, int(round(crop * args.sfc_half_scale)) // 16
    run_peak = None
    channels_last = use_channels_last(args.channels_last, device)
    batches = DataWait(step_loader(train_ds, start, max_step, B, args.seed, args.num_workers, device, rank, world))
    pbar = tqdm(total=max_step, initial=start, desc='train_sfc', dynamic_ncols=True, mininterval=5)
    for step in range(start, max_step):
        pack = batches.next()
        img = to_memory_format(pack['img'].to(device, non_blocking=True), channels_last)
        valid = pack['valid_mask'].to(device, non_blocking=True)
        label = pack['label'].to(device, non_blocking=True)
        if bank is not None:  # every rank updates and samples the same bank from the whole batch
            img, valid, label = (distributed.all_gather_cat(t) for t in (img, valid, label))
            bank.update(img, valid, label)
            b_img, b_mask, b_label = bank.sample(args.sfc_bank_samples, bank_gen)
            mine = slice(rank * per_rank, (rank + 1) * per_rank)
            img, valid, label = (torch.cat(pair)[mine] for pair in ((img, b_img), (valid, b_mask), (label, b_label)))
        with explain_oom(f'train_sfc, step {step} ({img.shape[0]} crops of {crop}x{crop})',
                         f'Lower --sfc_micro_batch (now {args.sfc_micro_batch or img.shape[0]}; the gradients do not '
                         f'change). Re-running resumes from {resume_path}.', device):
            losses = sfc_step_gradients(model, img, valid, label, w_ch, args, s1, s2, optimizer, scaler, n_total)
        distributed.sum_gradients(params)
        losses = {k: distributed.all_reduce_sum(v) for k, v in losses.items()}
        loss_cls, loss_pdw, loss_wdw = losses['cls'], losses['pdw'], losses['wdw']
        guard.add(step, loss_cls + loss_pdw + loss_wdw)  # read at the next progress line or checkpoint: no sync here
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.sfc_grad_clip)
        apply_update(optimizer, scaler, step)
        wait, took = batches.lap()
        meter.add({'cls': loss_cls, 'pdw': loss_pdw, 'wdw': loss_wdw, 'wait': wait, 'took': took})
        step += 1
        peak = peak_memory_gb(device, reset=True)
        run_peak = peak if run_peak is None else max(run_peak, peak)
        scalars.add(step, **{'loss/cls': loss_cls, 'loss/pdw': loss_pdw, 'loss/wdw': loss_wdw,
                             'lr': optimizer.param_groups[0]['lr'], 'time/data_wait': wait, 'time/step': took},
                    **({'mem/peak_gb': peak} if peak is not None else {}))
        pbar.update(1)
        if (step - 1) % args.sfc_print_freq == 0 or step == max_step:
            guard.check()
            scalars.flush()
            pbar.write(progress_line('step', step, max_step, start, t0, meter,
                                     [('cls', 'lossCLS'), ('pdw', 'L_PDW'), ('wdw', 'L_WDW')],
                                     optimizer.param_groups[0]['lr'], B, run_peak))
        if val_ds is not None and main and (step - 1) % args.sfc_val_freq == 0 and step > args.sfc_val_min_step:
            scores = validate(model, val_ds, device, amp=args.amp)
            miou = {k: v['miou'] for k, v in scores.items()}
            score = miou['cam'] + miou['proto_cam']
            pbar.write(f'  validation (GT) at step {step}: mIoU cam {miou["cam"]:.4f}  proto_cam '
                       f'{miou["proto_cam"]:.4f}  sum {score:.4f}' + ('  <- best' if score > best['score'] else ''))
            pbar.write(validation_table(scores, train_ds.layout.class_names()))
            scalars.add(step, **{'val/miou_cam': miou['cam'], 'val/miou_proto_cam': miou['proto_cam']})
            if score > best['score']:
                best = {'score': score, 'step': step, 'cam': miou['cam'], 'proto_cam': miou['proto_cam']}
                camio.save_checkpoint({'net': model.state_dict()}, os.path.join(ckpt, camio.SFC_BEST_GT))
            save_state(step, best)
        elif step % args.sfc_ckpt_freq == 0:
            save_state(step, best)
    pbar.close()
    step = max(start, max_step)
    save_state(step, best)
    return step, best


def calibrate(model, dataset, device, args, n_images=None):
    """Random initialisation only: set every frozen BatchNorm's statistics from training crops, so the
    randomly initialised backbone starts with unit-scale activations (an explicit choice, printed)."""
    n = min(len(dataset), n_images or max(args.sfc_batch_size, 32))
    order = epoch_order(args.seed, 0, len(dataset))[:n]
    img = torch.stack([torch.from_numpy(dataset[i]['img']) for i in order]).to(device)
    r = model.resnet50
    msg = f'calibrated {resnet.calibrate(r, img)} BatchNorm layers on {n} training crops'
    if args.sfc_zero_init_residual:
        blocks = [b for layer in (r.layer3, r.layer4) for b in layer]
        for b in blocks:
            torch.nn.init.zeros_(b.bn3.weight)
        msg += f', zeroed the last BN scale of the {len(blocks)} trainable residual blocks'
    print(f'  random initialisation: {msg}')
