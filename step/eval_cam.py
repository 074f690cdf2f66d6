"""eval_cam (docs/faithfulness §5): CAM seeds vs pixel GT on --eval_list -> metrics/eval_cam.json and a per-class
table.

Prediction = keys[argmax over the stored channels] (ties -> background), with the CAM chosen by
--cam_eval_source: proto_cam (the authors' IS_CAM, default), cam (PCM classifier CAM, IS_CAM1) or fused
(cam + --cam_eval_fuse_weight * proto_cam); several may be given, the first is the headline. Confusion
counts skip GT 255. Per class: IoU, precision, recall and the share of its GT pixels predicted as another
foreground class (the over/under-activation SFC targets).
"""
import functools
import os

import numpy as np

from misc import camio
from misc.dataset import get_dataset
from misc.errors import BadInput
from misc.metrics import accumulate, confusion_of, per_class, scores_from_confusion
from misc.plots import eval_figure
from misc.pyutils import format_table
from misc.visualize import cam_panels


def check_keys(cams, label, name):
    keys = camio.keys_from_label(label)
    if not np.array_equal(cams['keys'], keys):
        raise BadInput(f'CAM file of {name}: keys {cams["keys"].tolist()} disagree with the image labels '
                       f'{keys.tolist()} in --cls_labels; re-run make_cam for it (delete the file)')


def metrics_dict(scores, class_names, n_images, **extra):
    def per(v):
        return per_class(v, class_names)
    return {'miou': scores['miou'], 'iou': per(scores['iou']), 'n_images': n_images,
            'precision': per(scores['precision']), 'recall': per(scores['recall']),
            'to_other_fg': per(scores['to_other_fg']), 'gt_pixels': per(scores['gt_pixels']), **extra}


def print_table(title, scores, class_names):
    rows = [[n, scores['iou'][i], scores['precision'][i], scores['recall'][i], scores['to_other_fg'][i],
             int(scores['gt_pixels'][i])] for i, n in enumerate(class_names)]
    rows.append(['mIoU', scores['miou'], float(np.nanmean(scores['precision'])), float(np.nanmean(scores['recall'])),
                 float(np.nanmean(scores['to_other_fg'][1:])), int(scores['gt_pixels'].sum())])
    print(title)
    print(format_table(['class', 'IoU', 'precision', 'recall', 'to_other_fg', 'gt_pixels'], rows))


def sweep_predictions(score, keys, bg_offset, fg_scale, thresholds, offsets):
    """The two background conventions of the literature on one CAM, as label maps per value:
    - a constant background score t against the max-normalised foreground CAMs (IRN, AdvCAM, ...): background
      where max_c N_c <= t (a tie goes to the background, the first channel), else the arg max class;
    - SFC's form with the offset o in place of the run's: background where N_0 + o >= 2 max_c N_c (the fg x 2 of
      make_cam), else the arg max class; computed on the stored arrays as cam_0 + (o - bg_offset) >= max_c cam_c, so
      that o = the run's offset is exactly the headline prediction.
    N_c = cam_c / fg_scale is recovered with the run's make_cam flags. Returns ({t: map}, {o: map})."""
    if score.shape[0] == 1:
        zero = np.zeros(score.shape[1:], np.uint8)
        return {t: zero for t in thresholds}, {o: zero for o in offsets}
    top_stored, arg = score[1:].max(0), keys[1:][score[1:].argmax(0)].astype(np.uint8)
    top = top_stored / fg_scale
    zero = np.uint8(0)
    return ({t: np.where(top <= t, zero, arg) for t in thresholds},
            {o: np.where(score[0] + (o - bg_offset) >= top_stored, zero, arg) for o in offsets})


def _image_confusions(name, root, cam_dir, labels, sources, fuse_weight, ds_name, sweep=None):
    """Per-source confusion counts of one image (run in a loader worker); with `sweep` (bg_offset, fg_scale,
    thresholds, offsets) also those of the headline source at every background threshold and offset."""
    ds_mod = get_dataset(ds_name)
    layout = ds_mod.ImageDataset.layout
    cams = camio.load_cam(camio.cam_path(cam_dir, name))
    if name in labels:
        check_keys(cams, labels[name], name)
    gt = ds_mod.load_gt(root, name, layout)
    if gt.shape != cams['cam'].shape[1:]:
        raise BadInput(f'{name}: CAM size {cams["cam"].shape[1:]} differs from GT size {gt.shape}')
    n = layout.n_cat() + 1
    out = {s: confusion_of(gt, camio.cam_labels(cams, s, fuse_weight), n, name) for s in sources}
    if sweep is not None:
        bg_offset, fg_scale, thresholds, offsets = sweep
        score = camio.cam_score(cams, sources[0], fuse_weight)
        if sources[0] == 'fused':  # cam + w proto_cam: its N is the weighted mean of the two CAMs' N
            score = score / (1 + fuse_weight)
        by_t, by_o = sweep_predictions(score, cams['keys'], bg_offset, fg_scale, thresholds, offsets)
        out['sweep_threshold'] = np.stack([confusion_of(gt, by_t[t], n, name) for t in thresholds])
        out['sweep_offset'] = np.stack([confusion_of(gt, by_o[o], n, name) for o in offsets])
    return out


def report_sweep(args, mats, source):
    """The mIoU curves of the two background conventions, their best values, the figure; -> dict for the JSON."""
    out = {}
    for kind, values, mat, what in (('threshold', args.cam_sweep_thresholds, mats['sweep_threshold'],
                                     'constant background score t (IRN style)'),
                                    ('offset', args.cam_sweep_offsets, mats['sweep_offset'],
                                     'background N_0 + o against 2 N_c (SFC style; the authors: o = 0.4)')):
        curve = [scores_from_confusion(m)['miou'] for m in mat]
        best = int(np.nanargmax(curve))
        out[kind] = {'values': list(values), 'miou': curve, 'best_value': values[best], 'best_miou': curve[best]}
        print(f'  sweep of the {what} on {source}: best mIoU {curve[best]:.4f} at {values[best]:g}')
        print('    ' + '  '.join(f'{v:g}:{m:.4f}' for v, m in zip(values, curve)))
    sweep_figure(os.path.join(args.vis_dir, 'eval_cam_sweep.png'), out, source, args.cam_bg_offset)
    return out


def sweep_figure(path, sweep, source, authors_offset):
    from misc.plots import _pyplot, _save
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (kind, label) in zip(axes, (('threshold', 'background threshold t (IRN style)'),
                                        ('offset', 'background offset o (SFC style)'))):
        s = sweep[kind]
        ax.plot(s['values'], s['miou'], marker='o', ms=3)
        ax.axvline(s['best_value'], color='tab:green', ls=':', label=f'best {s["best_miou"]:.3f} at {s["best_value"]:g}')
        if kind == 'offset':
            ax.axvline(authors_offset, color='tab:red', ls='--', label=f'the authors\' {authors_offset:g}')
        ax.set_xlabel(label)
        ax.set_ylabel('mIoU')
        ax.legend(fontsize=7)
    fig.suptitle(f'eval_cam: mIoU of {source} against the background convention', fontsize=9)
    _save(fig, path)
    plt.close(fig)
    print(f'  sweep chart: {path}')


def run(args):
    ds_mod = get_dataset(args)
    names_ds = ds_mod.ImageDataset(args.eval_list, args.dataset_root)
    labels = ds_mod.load_cls_labels(args.cls_labels)
    layout = names_ds.layout
    class_names = layout.class_names()
    sources = list(args.cam_eval_source)
    for s in sources:
        if s not in camio.CAM_SOURCES:
            raise BadInput(f'--cam_eval_source {s!r}: choose from {camio.CAM_SOURCES}')
    sweep = ((args.cam_bg_offset, args.cam_fg_scale, list(args.cam_sweep_thresholds), list(args.cam_sweep_offsets))
             if args.cam_eval_sweep else None)
    per_image = functools.partial(_image_confusions, root=args.dataset_root, cam_dir=args.cam_dir, labels=labels,
                                  sources=sources, fuse_weight=args.cam_eval_fuse_weight, ds_name=args.dataset,
                                  sweep=sweep)
    mats = accumulate(per_image, names_ds.names, args.num_workers, 'eval_cam')
    vis_dir = os.path.join(args.vis_dir, 'cam')
    for name in names_ds.names[:args.cam_vis_count]:
        cams = camio.load_cam(camio.cam_path(args.cam_dir, name))
        gt = ds_mod.load_gt(args.dataset_root, name, layout)
        pred = camio.cam_labels(cams, sources[0], args.cam_eval_fuse_weight)
        camio.write_image(os.path.join(vis_dir, name + '.png'),
                          cam_panels(names_ds.read(name), camio.cam_score(cams, sources[0], args.cam_eval_fuse_weight),
                                     cams['keys'], gt, pred))
    scores = {s: scores_from_confusion(mats[s]) for s in sources}
    results = {}
    for s in sources:
        results[s] = metrics_dict(scores[s], class_names, len(names_ds))
        print_table(f'eval_cam: {s} on {args.eval_list} ({len(names_ds)} images)', scores[s], class_names)
    eval_figure(args, ds_mod, 'eval_cam', {s: scores[s]['iou'] for s in sources}, class_names)
    head = dict(results[sources[0]])
    head.update({'source': sources[0], 'sources': results, 'eval_list': args.eval_list})
    if sweep is not None:
        head['sweep'] = report_sweep(args, mats, sources[0])
    camio.save_json(os.path.join(args.metrics_dir, 'eval_cam.json'), head)
    print('  ' + '  '.join(f'{s} mIoU {results[s]["miou"]:.4f}' for s in sources))
    return head
