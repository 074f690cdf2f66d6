"""Figures of the evaluation steps (matplotlib, Agg backend: no display needed).

- `per_class_bars`: vis/<metric>_per_class.png, the per-class IoU of one or more sources as grouped bars, classes
  ordered by training-image count (head left, tail right; background first), the count under each name.
- `gain_vs_frequency`: the ablation's per-class IoU gain of one row over another against class frequency.
The numbers behind every figure are in the metrics JSON the same step writes.
"""
import os

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def training_counts(ds_mod, train_list, cls_labels):
    """Images per foreground class over train_list's image-level labels, or None when they cannot be read."""
    try:
        names = ds_mod.load_img_name_list(train_list)
        labels = ds_mod.load_cls_labels(cls_labels)
    except (OSError, ValueError):
        return None
    rows = [labels[n] for n in names if n in labels]
    return np.sum(rows, axis=0).astype(np.int64) if rows else None


def frequency_order(class_names, counts):
    """Indices into class_names (background first) with the foreground by descending count (ties by name order)."""
    if counts is None:
        return list(range(len(class_names)))
    return [0] + [1 + int(i) for i in np.argsort(-np.asarray(counts), kind='stable')]


def _save(fig, path):
    from misc.camio import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=110, bbox_inches='tight'))


def per_class_bars(path, class_names, series, counts=None, title=''):
    """series: {label: per-class IoU array (NaN where a class has no GT)}; counts: training images per
    foreground class (orders the classes and labels the axis)."""
    plt = _pyplot()
    order = frequency_order(class_names, counts)
    n, k = len(order), len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * n * max(1, k) + 1.5), 3.8))
    width = 0.8 / max(1, k)
    for j, (label, values) in enumerate(series.items()):
        v = np.asarray(values, dtype=np.float64)[order]
        ax.bar(np.arange(n) + (j - (k - 1) / 2) * width, np.nan_to_num(v), width, label=f'{label} (mIoU {np.nanmean(v):.3f})')
    names = [class_names[i] if i == 0 or counts is None else f'{class_names[i]} ({int(counts[i - 1])})' for i in order]
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels(names, rotation=70, ha='right', fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel('IoU')
    ax.set_title(title + ('  (classes by training-image count, head to tail)' if counts is not None else ''), fontsize=9)
    ax.legend(fontsize=7, loc='upper right')
    ax.grid(axis='y', alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return path


def gain_vs_frequency(path, class_names, gain, counts, title=''):
    """Per-class IoU gain (foreground classes) against training-image count, classes head to tail."""
    plt = _pyplot()
    order = frequency_order(class_names, counts)[1:]
    g = np.asarray(gain, dtype=np.float64)[order]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order) + 1.5), 3.8))
    ax.bar(np.arange(len(order)), np.nan_to_num(g), color=['tab:green' if x >= 0 else 'tab:red' for x in np.nan_to_num(g)])
    ax.axhline(0, color='k', lw=0.8)
    ax.set_xticks(np.arange(len(order)))
    ax.set_xticklabels([f'{class_names[i]} ({int(counts[i - 1])})' for i in order], rotation=70, ha='right', fontsize=7)
    ax.set_ylabel('IoU gain')
    ax.set_title(title, fontsize=9)
    ax.grid(axis='y', alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return path


def eval_figure(args, ds_mod, metric, series, class_names, train_list=None):
    """vis/<metric>_per_class.png for an evaluation step, classes ordered by --train_list's image counts."""
    counts = training_counts(ds_mod, train_list or args.train_list, args.cls_labels)
    path = os.path.join(args.vis_dir, f'{metric}_per_class.png')
    per_class_bars(path, class_names, series, counts, title=metric)
    print(f'  per-class chart: {path}')
    return path
