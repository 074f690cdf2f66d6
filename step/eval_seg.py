"""eval_seg (docs/deeplab.md): the segmentation model's predictions vs GT on --seg_eval_list -> metrics/eval_seg.json.

Scores seg/ (after the CRF when make_seg ran with it) and, when make_seg wrote them, the predictions before the
CRF (seg_nocrf/); prints one per-class table with both. GT 255 is ignored. This is the number the paper's main
table reports (VOC val 71.2 / test 72.5 through the server, COCO val 46.8).
"""
import functools
import os

from misc import camio
from misc.dataset import get_dataset
from misc.errors import MissingInput
from misc.metrics import accumulate, confusion_of, per_class, scores_from_confusion
from misc.plots import eval_figure
from misc.pyutils import format_table


def _image_confusions(name, root, sources, ds_name):
    """Confusion counts of one image's predictions (run in a loader worker)."""
    ds_mod = get_dataset(ds_name)
    layout = ds_mod.ImageDataset.layout
    gt = ds_mod.load_gt(root, name, layout)
    return {k: confusion_of(gt, camio.read_label(camio.label_path(d, name)), layout.n_cat() + 1, name)
            for k, d in sources.items()}


def run(args):
    ds_mod = get_dataset(args)
    names = ds_mod.ImageDataset(args.seg_eval_list, args.dataset_root).names
    layout = ds_mod.ImageDataset.layout
    class_names = layout.class_names()
    missing = [n for n in names if not os.path.isfile(camio.label_path(args.seg_dir, n))]
    if missing:
        raise MissingInput(f'{len(missing)} ids of {args.seg_eval_list} have no prediction in {args.seg_dir} '
                           f'(first: {missing[0]}); run make_seg on that list (--make_seg_pass True '
                           f'--seg_infer_list {args.seg_eval_list})')
    with_nocrf = all(os.path.isfile(camio.label_path(args.seg_nocrf_dir, n)) for n in names)
    sources = {('crf' if with_nocrf else 'seg'): args.seg_dir}
    if with_nocrf:
        sources['no_crf'] = args.seg_nocrf_dir
    per_image = functools.partial(_image_confusions, root=args.dataset_root, sources=sources, ds_name=args.dataset)
    mats = accumulate(per_image, names, args.num_workers, 'eval_seg')
    scores = {k: scores_from_confusion(m) for k, m in mats.items()}
    keys = list(sources)
    rows = [[n] + [scores[k]['iou'][i] for k in keys] for i, n in enumerate(class_names)]
    rows.append(['mIoU'] + [scores[k]['miou'] for k in keys])
    label = {'crf': 'IoU (CRF)', 'no_crf': 'IoU (no CRF)', 'seg': 'IoU'}
    print(f'eval_seg: segmentation model on {args.seg_eval_list} ({len(names)} images)')
    print(format_table(['class'] + [label[k] for k in keys], rows))
    head = scores[keys[0]]
    out = {'miou': head['miou'], 'iou': per_class(head['iou'], class_names), 'n_images': len(names),
           'crf': with_nocrf, 'eval_list': args.seg_eval_list,
           'precision': per_class(head['precision'], class_names), 'recall': per_class(head['recall'], class_names)}
    if with_nocrf:
        out['miou_no_crf'] = scores['no_crf']['miou']
        out['iou_no_crf'] = per_class(scores['no_crf']['iou'], class_names)
    eval_figure(args, ds_mod, 'eval_seg', {label[k]: scores[k]['iou'] for k in keys}, class_names, args.seg_train_list)
    camio.save_json(os.path.join(args.metrics_dir, 'eval_seg.json'), out)
    print('  ' + '  '.join(f'{label[k]} mIoU {scores[k]["miou"]:.4f}' for k in keys))
    return out
