"""Confusion matrix and IoU metrics (replaces chainercv's calc_semantic_segmentation_confusion)."""
import numpy as np

from misc.errors import BadInput

IGNORE = 255


class ConfusionMatrix:
    """Streaming (gt, pred) counts over n classes; GT pixels equal to `ignore` are skipped.

    Entry [g, p] counts pixels with ground truth g predicted as p, as in chainercv. A GT value outside
    0..n-1 other than `ignore`, or a prediction outside 0..n-1, is an error (it would be silently
    dropped by slicing, as the authors' [:21, :21] does for 255).
    """

    def __init__(self, n_classes, ignore=IGNORE):
        self.n = int(n_classes)
        self.ignore = ignore
        self.mat = np.zeros((self.n, self.n), dtype=np.int64)

    def update(self, gt, pred, name=None):
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if gt.shape != pred.shape:
            raise BadInput(f'{name or "image"}: GT shape {gt.shape} differs from prediction shape {pred.shape}')
        keep = gt != self.ignore
        g = gt[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.n):
            raise BadInput(f'{name or "image"}: GT class id {int(g.max())} outside 0..{self.n - 1} (ignore={self.ignore})')
        if p.size and (p.min() < 0 or p.max() >= self.n):
            raise BadInput(f'{name or "image"}: predicted class id {int(p.max())} outside 0..{self.n - 1}')
        self.mat += np.bincount(g * self.n + p, minlength=self.n * self.n).reshape(self.n, self.n)
        return self

    def scores(self):
        return scores_from_confusion(self.mat)


def per_class(values, class_names):
    """{class name: float} for a per-class array (NaN stays NaN; camio.save_json writes it as null)."""
    return {n: float(x) for n, x in zip(class_names, values)}


def scores_from_confusion(mat):
    """IoU, precision, recall and confusion-with-other-foreground per class; NaN where undefined."""
    mat = np.asarray(mat, dtype=np.float64)
    tp = np.diag(mat)
    gt = mat.sum(1)
    pred = mat.sum(0)
    union = gt + pred - tp
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = tp / union
        precision = tp / pred
        recall = tp / gt
        # share of class c's GT pixels predicted as another foreground class (over-activation of the
        # others / under-activation of c); background (index 0) is excluded from "other".
        other_fg = mat[:, 1:].sum(1) - np.where(np.arange(len(tp)) > 0, tp, 0)
        to_other_fg = other_fg / gt
        # the authors' eval_sem_seg figures: fp = 1 - gt/union, fn = 1 - pred/union
        fp = 1 - gt / union
        fn = 1 - pred / union
    return {'iou': iou, 'miou': float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float('nan'),
            'precision': precision, 'recall': recall, 'to_other_fg': to_other_fg, 'fp': fp, 'fn': fn,
            'gt_pixels': gt.astype(np.int64), 'pred_pixels': pred.astype(np.int64)}


class _PerImage:
    """A map-style dataset of per_image(name) results, for DataLoader workers."""

    def __init__(self, per_image, names):
        self.per_image, self.names = per_image, names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return self.per_image(self.names[i])


def _as_is(item):
    return item


def accumulate(per_image, names, num_workers=0, desc='eval'):
    """Sum over `names` of per_image(name), a dict of NumPy arrays (per-image confusion matrices and counts), computed
    by `num_workers` loader processes (file reading and decoding in parallel; the sum here is tiny). per_image must
    be picklable (a module-level function or a functools.partial of one). In image order, so the sums do not depend
    on the number of workers."""
    import torch
    from tqdm import tqdm
    loader = torch.utils.data.DataLoader(_PerImage(per_image, names), batch_size=None, num_workers=num_workers,
                                         collate_fn=_as_is)
    total = {}
    for item in tqdm(loader, total=len(names), desc=desc, dynamic_ncols=True, mininterval=5):
        for k, v in item.items():
            total[k] = total[k] + v if k in total else np.array(v, copy=True)
    return total


def confusion_of(gt, pred, n, name=None):
    """The (n, n) confusion counts of one image."""
    return ConfusionMatrix(n).update(gt, pred, name).mat
