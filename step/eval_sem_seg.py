"""eval_sem_seg (SPEC B8.4): pseudo masks vs GT on --eval_list -> metrics/eval_sem_seg.json, per-class table.

--eval_masks ir_label scores the CRF labels instead (the authors' final COCO masks, 255 counted as background).
Also scores the IR labels of the same images when present: precision of the confident pixels (not 255)
and their coverage (share of non-void GT pixels that are confident). The authors' fp/fn figures are
included: fp = 1 - gt/union, fn = 1 - pred/union per class.
"""
import os

import numpy as np
from tqdm import tqdm

from misc import camio
from misc.dataset import get_dataset
from misc.metrics import ConfusionMatrix, per_class
from misc.pyutils import format_table


def run(args):
    ds_mod = get_dataset(args)
    names = ds_mod.ImageDataset(args.eval_list, args.dataset_root).names
    layout = ds_mod.ImageDataset.layout
    class_names = layout.class_names()
    conf = ConfusionMatrix(len(class_names))
    ir_conf = ConfusionMatrix(len(class_names))
    ir_pix = ir_confident = 0
    mask_dir, producer = ((args.sem_seg_dir, 'make_sem_seg') if args.eval_masks == 'sem_seg'
                          else (args.ir_label_dir, 'cam_to_ir_label'))
    for name in tqdm(names, desc='eval_sem_seg', dynamic_ncols=True, mininterval=5):
        gt = ds_mod.load_gt(args.dataset_root, name, layout)
        path = camio.label_path(mask_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'pseudo mask {path} is missing: run {producer} on a list containing {name}')
        mask = camio.read_label(path)
        conf.update(gt, np.where(mask == 255, 0, mask), name)  # 255 -> 0 as the authors (SFC/eval_sem_seg.py:16)
        ir_path = camio.label_path(args.ir_label_dir, name)
        if args.eval_masks == 'ir_label' or os.path.isfile(ir_path):
            ir = mask if args.eval_masks == 'ir_label' else camio.read_label(ir_path)
            keep = (ir != 255) & (gt != 255)
            ir_pix += int((gt != 255).sum())
            ir_confident += int(keep.sum())
            ir_conf.update(np.where(keep, gt, 255), np.where(keep, ir, 0), name)
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
    if ir_pix:
        tp = np.trace(ir_conf.mat)
        ir = {'precision': float(tp / max(1, ir_conf.mat.sum())), 'coverage': ir_confident / ir_pix,
              'miou_confident': ir_conf.scores()['miou']}
        out['ir_label'] = ir
        print(f'  IR labels on the same images: precision {ir["precision"]:.4f} (confident pixels), '
              f'coverage {ir["coverage"]:.4f}')
    camio.save_json(os.path.join(args.metrics_dir, 'eval_sem_seg.json'), out)
    print(f'  pseudo-mask mIoU {s["miou"]:.4f}')
    return out
