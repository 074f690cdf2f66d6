"""eval_sem_seg (docs/faithfulness §8.4): pseudo masks vs GT on --eval_list -> metrics/eval_sem_seg.json, per-class
table.

--eval_masks ir_label scores the CRF labels instead (the authors' final COCO masks, 255 counted as background).
Also scores the IR labels of the same images when present: precision of the confident pixels (not 255),
their coverage (share of non-void GT pixels that are confident), and their mIoU as masks (255 -> background). The authors' fp/fn figures are
included: fp = 1 - gt/union, fn = 1 - pred/union per class.
"""
import functools
import os

import numpy as np

from misc import camio
from misc.dataset import get_dataset
from misc.errors import MissingInput
from misc.metrics import accumulate, confusion_of, per_class, scores_from_confusion
from misc.plots import eval_figure
from misc.pyutils import format_table


def _image_counts(name, root, mask_dir, producer, ir_dir, masks_are_ir, ds_name):
    """Confusion counts of one image's masks, and of its IR labels when present (run in a loader worker)."""
    ds_mod = get_dataset(ds_name)
    layout = ds_mod.ImageDataset.layout
    n = layout.n_cat() + 1
    gt = ds_mod.load_gt(root, name, layout)
    path = camio.label_path(mask_dir, name)
    if not os.path.isfile(path):
        raise MissingInput(f'pseudo mask {path} is missing: run {producer} on a list containing {name}')
    mask = camio.read_label(path)
    out = {'conf': confusion_of(gt, np.where(mask == 255, 0, mask), n, name)}  # 255 -> 0 (SFC/eval_sem_seg.py:16)
    ir_path = camio.label_path(ir_dir, name)
    if masks_are_ir or os.path.isfile(ir_path):
        ir = mask if masks_are_ir else camio.read_label(ir_path)
        keep = (ir != 255) & (gt != 255)
        out['ir_gt_pix'] = np.bincount(gt[gt != 255].ravel(), minlength=n)[:n]
        out['ir_confident'] = np.bincount(gt[keep].ravel(), minlength=n)[:n]
        out['ir_conf'] = confusion_of(np.where(keep, gt, 255), np.where(keep, ir, 0), n, name)
        out['ir_mask_conf'] = confusion_of(gt, np.where(ir == 255, 0, ir), n, name)  # the IR labels as masks
    return out


def run(args):
    ds_mod = get_dataset(args)
    names = ds_mod.ImageDataset(args.eval_list, args.dataset_root).names
    layout = ds_mod.ImageDataset.layout
    class_names = layout.class_names()
    n_cls = len(class_names)
    mask_dir, producer = ((args.sem_seg_dir, 'make_sem_seg') if args.eval_masks == 'sem_seg'
                          else (args.ir_label_dir, 'cam_to_ir_label'))
    per_image = functools.partial(_image_counts, root=args.dataset_root, mask_dir=mask_dir, producer=producer,
                                  ir_dir=args.ir_label_dir, masks_are_ir=args.eval_masks == 'ir_label',
                                  ds_name=args.dataset)
    total = accumulate(per_image, names, args.num_workers, 'eval_sem_seg')
    zero = np.zeros((n_cls, n_cls), np.int64)
    ir_conf, ir_mask_conf = total.get('ir_conf', zero), total.get('ir_mask_conf', zero)
    ir_gt_pix, ir_confident = total.get('ir_gt_pix', np.zeros(n_cls, np.int64)), total.get('ir_confident', 0)
    s = scores_from_confusion(total['conf'])
    rows = [[n, s['iou'][i], s['precision'][i], s['recall'][i], s['fp'][i], s['fn'][i]] for i, n in enumerate(class_names)]
    rows.append(['mIoU', s['miou'], float(np.nanmean(s['precision'])), float(np.nanmean(s['recall'])),
                 float(np.nanmean(s['fp'][1:])), float(np.nanmean(s['fn'][1:]))])
    print(f'eval_sem_seg: {args.eval_masks} masks on {args.eval_list} ({len(names)} images)')
    print(format_table(['class', 'IoU', 'precision', 'recall', 'fp', 'fn'], rows))

    def per(v):
        return per_class(v, class_names)
    out = {'miou': s['miou'], 'iou': per(s['iou']), 'n_images': len(names), 'precision': per(s['precision']),
           'recall': per(s['recall']), 'fp': per(s['fp']), 'fn': per(s['fn']),
           'fp_bg': float(s['fp'][0]), 'fn_bg': float(s['fn'][0]), 'mean_fp_fg': float(np.nanmean(s['fp'][1:])),
           'mean_fn_fg': float(np.nanmean(s['fn'][1:])), 'eval_list': args.eval_list, 'masks': args.eval_masks}
    if ir_gt_pix.sum():
        tp = np.trace(ir_conf)
        si = scores_from_confusion(ir_conf)
        with np.errstate(invalid='ignore', divide='ignore'):
            coverage = np.where(ir_gt_pix > 0, ir_confident / ir_gt_pix, np.nan)
        ir = {'precision': float(tp / max(1, ir_conf.sum())), 'coverage': float(ir_confident.sum() / ir_gt_pix.sum()),
              'miou_confident': si['miou'], 'precision_per_class': per(si['precision']),
              'coverage_per_class': per(coverage), 'iou_confident': per(si['iou']),
              'miou_as_mask': scores_from_confusion(ir_mask_conf)['miou'],
              'iou_as_mask': per(scores_from_confusion(ir_mask_conf)['iou'])}
        out['ir_label'] = ir
        rows = [[n, si['precision'][i], coverage[i], si['iou'][i]] for i, n in enumerate(class_names) if ir_gt_pix[i]]
        rows.append(['all', ir['precision'], ir['coverage'], si['miou']])
        print('  IR labels on the same images (precision of the confident pixels, share of GT pixels that are '
              'confident, IoU on confident pixels):')
        print(format_table(['class', 'precision', 'coverage', 'IoU'], rows))
    series = {args.eval_masks: s['iou']}
    if 'ir_label' in out and args.eval_masks != 'ir_label':
        series['ir_label (255 -> bg)'] = scores_from_confusion(ir_mask_conf)['iou']
    eval_figure(args, ds_mod, 'eval_sem_seg', series, class_names)
    camio.save_json(os.path.join(args.metrics_dir, 'eval_sem_seg.json'), out)
    print(f'  pseudo-mask mIoU {s["miou"]:.4f}')
    return out
