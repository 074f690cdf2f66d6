"""eval_sem_seg (SPEC B8.4): pseudo masks vs GT on --eval_list -> metrics/eval_sem_seg.json, per-class table.

--eval_masks ir_label scores the CRF labels instead (the authors' final COCO masks, 255 counted as background).
Also scores the IR labels of the same images when present: precision of the confident pixels (not 255),
their coverage (share of non-void GT pixels that are confident), and their mIoU as masks (255 -> background). The authors' fp/fn figures are
included: fp = 1 - gt/union, fn = 1 - pred/union per class.
"""
import os

import numpy as np
from tqdm import tqdm

from misc import camio
from misc.dataset import get_dataset
from misc.errors import MissingInput
from misc.metrics import ConfusionMatrix, per_class
from misc.plots import eval_figure
from misc.pyutils import format_table


def run(args):
    ds_mod = get_dataset(args)
    names = ds_mod.ImageDataset(args.eval_list, args.dataset_root).names
    layout = ds_mod.ImageDataset.layout
    class_names = layout.class_names()
    conf = ConfusionMatrix(len(class_names))
    ir_conf = ConfusionMatrix(len(class_names))
    ir_mask_conf = ConfusionMatrix(len(class_names))  # the IR labels scored as masks, 255 counted as background
    n_cls = len(class_names)
    ir_gt_pix, ir_confident = np.zeros(n_cls, np.int64), np.zeros(n_cls, np.int64)  # per GT class
    mask_dir, producer = ((args.sem_seg_dir, 'make_sem_seg') if args.eval_masks == 'sem_seg'
                          else (args.ir_label_dir, 'cam_to_ir_label'))
    for name in tqdm(names, desc='eval_sem_seg', dynamic_ncols=True, mininterval=5):
        gt = ds_mod.load_gt(args.dataset_root, name, layout)
        path = camio.label_path(mask_dir, name)
        if not os.path.isfile(path):
            raise MissingInput(f'pseudo mask {path} is missing: run {producer} on a list containing {name}')
        mask = camio.read_label(path)
        conf.update(gt, np.where(mask == 255, 0, mask), name)  # 255 -> 0 as the authors (SFC/eval_sem_seg.py:16)
        ir_path = camio.label_path(args.ir_label_dir, name)
        if args.eval_masks == 'ir_label' or os.path.isfile(ir_path):
            ir = mask if args.eval_masks == 'ir_label' else camio.read_label(ir_path)
            keep = (ir != 255) & (gt != 255)
            ir_gt_pix += np.bincount(gt[gt != 255].ravel(), minlength=n_cls)[:n_cls]
            ir_confident += np.bincount(gt[keep].ravel(), minlength=n_cls)[:n_cls]
            ir_conf.update(np.where(keep, gt, 255), np.where(keep, ir, 0), name)
            ir_mask_conf.update(gt, np.where(ir == 255, 0, ir), name)
    s = conf.scores()
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
        tp = np.trace(ir_conf.mat)
        si = ir_conf.scores()
        with np.errstate(invalid='ignore', divide='ignore'):
            coverage = np.where(ir_gt_pix > 0, ir_confident / ir_gt_pix, np.nan)
        ir = {'precision': float(tp / max(1, ir_conf.mat.sum())), 'coverage': float(ir_confident.sum() / ir_gt_pix.sum()),
              'miou_confident': si['miou'], 'precision_per_class': per(si['precision']),
              'coverage_per_class': per(coverage), 'iou_confident': per(si['iou']),
              'miou_as_mask': ir_mask_conf.scores()['miou'], 'iou_as_mask': per(ir_mask_conf.scores()['iou'])}
        out['ir_label'] = ir
        rows = [[n, si['precision'][i], coverage[i], si['iou'][i]] for i, n in enumerate(class_names) if ir_gt_pix[i]]
        rows.append(['all', ir['precision'], ir['coverage'], si['miou']])
        print('  IR labels on the same images (precision of the confident pixels, share of GT pixels that are '
              'confident, IoU on confident pixels):')
        print(format_table(['class', 'precision', 'coverage', 'IoU'], rows))
    series = {args.eval_masks: s['iou']}
    if 'ir_label' in out and args.eval_masks != 'ir_label':
        series['ir_label (255 -> bg)'] = ir_mask_conf.scores()['iou']
    eval_figure(args, ds_mod, 'eval_sem_seg', series, class_names)
    camio.save_json(os.path.join(args.metrics_dir, 'eval_sem_seg.json'), out)
    print(f'  pseudo-mask mIoU {s["miou"]:.4f}')
    return out
