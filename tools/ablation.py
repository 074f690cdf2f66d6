"""The paper's ablation of SFC (Table 3), one command: train each variant, make and score its CAMs, one table.

    bash run_ablation.sh                                   # the demo data at demo size, seed 10 (about 20 min)
    python -m tools.ablation --recipe quick                # run_demo.sh --quick's data and sizes (about 6 min)
    python -m tools.ablation --seeds 10 11 12 --rows plain sfc
    python -m tools.ablation --voc12_root DATA --meta_dir META --work_dir work/abl --recipe none -- \\
        --backbone_weights imagenet --sfc_num_epoches 6            # real data: your own flags after --

Rows (all share data, seed and budget; --seeds repeats them):
    plain        plain CAM: no image bank, no L_PDW, no L_WDW, uniform class weights
    ibr          + Image Bank Re-sampling
    ibr_pdw      + IBR + L_PDW (prototype consistency)
    ibr_pdw_wdw  + IBR + L_PDW + L_WDW (cross-scale consistency), uniform class weights
    sfc          full SFC: the above with the distribution-calibrating (DC) class weights
    wdw          L_WDW alone, with the DC weights (the paper reports that it hurts on its own)
Each run lives in <work_dir>/runs/<row>_s<seed>/ (train_sfc, make_cam and eval_cam on --eval_list with the
cam / proto_cam / fused CAMs); a run whose metrics/eval_cam.json exists is reused (delete its folder to redo).
The table gives, per row, the mean (and standard deviation over seeds) of each CAM's mIoU, the mean IoU over
the head half and the tail half of the foreground classes (ranked by training-image count), and the mean share
of a class's GT pixels handed to another foreground class. Written to <work_dir>/metrics/ablation.json, with
<work_dir>/vis/ablation_gain.png: the per-class IoU gain of full SFC over the plain CAM, head to tail.
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from misc import camio  # noqa: E402
from misc.pyutils import format_seconds, format_table  # noqa: E402

COMPONENTS = ('sfc_ibr', 'sfc_pdw', 'sfc_wdw', 'sfc_dc_weights')
ROWS = {  # name: (label, IBR, L_PDW, L_WDW, DC weights)
    'plain': ('plain CAM', False, False, False, False),
    'ibr': ('+IBR', True, False, False, False),
    'ibr_pdw': ('+IBR +L_PDW', True, True, False, False),
    'ibr_pdw_wdw': ('+IBR +L_PDW +L_WDW', True, True, True, False),
    'sfc': ('full SFC (DC weights)', True, True, True, True),
    'wdw': ('L_WDW alone (DC weights)', False, False, True, True),
}
SOURCES = ('cam', 'proto_cam', 'fused')
# The demo's SFC recipe (run_demo.sh step 1; a test keeps them equal): the stand-in backbone, the demo's sizes. 'demo'
# is the demo (images of 160-240 px); 'quick' is run_demo.sh --quick (72-136 px).
_COMMON_SFC = ['--backbone_weights', 'weights/standin/resnet50_w8.pth', '--backbone_width', '8',
               '--sfc_batch_size', '16', '--sfc_lr', '0.1', '--sfc_momentum', '0.9', '--sfc_dc_offset', 'auto',
               '--sfc_select_on_gt', 'False']
RECIPES = {
    'demo': (_COMMON_SFC + ['--sfc_crop_size', '192', '--sfc_num_epoches', '6'],
             dict(n_train=200, n_val=100, n_aug=1000, seed=0, min_size=160, max_size=240)),
    'quick': (_COMMON_SFC + ['--sfc_crop_size', '96', '--sfc_num_epoches', '8'],
              dict(n_train=200, n_val=100, n_aug=1000, seed=0, min_size=72, max_size=136)),
}
DEMO_SFC_FLAGS, DEMO_DATA = RECIPES['demo']


def row_flags(name):
    _, *on = ROWS[name]
    return [x for k, v in zip(COMPONENTS, on) for x in (f'--{k}', str(v))]


def head_tail(iou, counts):
    """Mean IoU over the head half and the tail half of the foreground classes ranked by training count."""
    fg = np.asarray(iou, dtype=np.float64)[1:]
    order = np.argsort(-np.asarray(counts), kind='stable')
    half = len(order) // 2
    return float(np.nanmean(fg[order[:half]])), float(np.nanmean(fg[order[half:]]))


def run_one(a, row, seed, extra):
    import run_sample
    work = os.path.join(a.work_dir, 'runs', f'{row}_s{seed}')
    done = os.path.join(work, 'metrics', 'eval_cam.json')
    if os.path.isfile(done):
        print(f'[ablation] {row} seed {seed}: reusing {done}')
        return camio.load_json(done), 0.0
    meta = a.meta_dir
    argv = ['--voc12_root', a.voc12_root, '--work_dir', work, '--device', a.device, '--seed', str(seed),
            '--num_workers', str(a.num_workers), '--train_list', os.path.join(meta, a.train_list),
            '--infer_list', os.path.join(meta, a.eval_list), '--eval_list', os.path.join(meta, a.eval_list),
            '--cls_labels', os.path.join(meta, 'cls_labels.npz'), '--cam_eval_source', *SOURCES,
            *(RECIPES[a.recipe][0] if a.recipe in RECIPES else []), *row_flags(row), *extra,
            '--train_sfc_pass', 'True', '--make_cam_pass', 'True', '--eval_cam_pass', 'True']
    print(f'[ablation] {row} seed {seed}: {ROWS[row][0]} -> {work}')
    t0 = time.time()
    run_sample.main(argv)
    return camio.load_json(done), time.time() - t0


def summarise(results, counts, class_names, source):
    """Per row: mean/std over seeds of every source's mIoU, head/tail IoU and to_other_fg of `source`."""
    out = {}
    for row, per_seed in results.items():
        r = {'label': ROWS[row][0], 'seeds': sorted(per_seed)}
        for s in SOURCES:
            v = [per_seed[k]['sources'][s]['miou'] for k in sorted(per_seed)]
            r[f'miou_{s}'] = {'mean': float(np.mean(v)), 'std': float(np.std(v)), 'per_seed': v}
        ht, other, ious = [], [], []
        for k in sorted(per_seed):
            m = per_seed[k]['sources'][source]
            iou = np.array([np.nan if m['iou'][c] is None else m['iou'][c] for c in class_names])
            ious.append(iou)
            ht.append(head_tail(iou, counts))
            to = np.array([np.nan if m['to_other_fg'][c] is None else m['to_other_fg'][c] for c in class_names[1:]])
            other.append(float(np.nanmean(to)))
        r['head_iou'] = {'mean': float(np.mean([h for h, _ in ht])), 'per_seed': [h for h, _ in ht]}
        r['tail_iou'] = {'mean': float(np.mean([t for _, t in ht])), 'per_seed': [t for _, t in ht]}
        r['to_other_fg'] = {'mean': float(np.mean(other)), 'per_seed': other}
        with warnings.catch_warnings():  # a class without GT pixels in every seed stays NaN
            warnings.simplefilter('ignore', RuntimeWarning)
            r['iou_per_class'] = dict(zip(class_names, np.nanmean(np.stack(ious), 0).tolist()))
        out[row] = r
    return out


def print_table(summary, source):
    rows = []
    for row, r in summary.items():
        def ms(k):
            return f'{r[k]["mean"]:.4f}' + (f' ±{r[k]["std"]:.4f}' if len(r['seeds']) > 1 else '')
        rows.append([r['label'], ms('miou_cam'), ms('miou_proto_cam'), ms('miou_fused'), f'{r["head_iou"]["mean"]:.4f}',
                     f'{r["tail_iou"]["mean"]:.4f}', f'{r["to_other_fg"]["mean"]:.4f}'])
    print(format_table(['row', 'mIoU cam', 'mIoU proto_cam', 'mIoU fused', f'head IoU ({source})',
                        f'tail IoU ({source})', f'to other fg ({source})'], rows))


def ensure_demo_data(a):
    """The demo's generated VOC-format data under work_dir when no --voc12_root is given."""
    from voc12.make_cls_labels import build
    from voc12.synthetic import make_synthetic_voc
    root = os.path.join(a.work_dir, 'VOC2012')
    if not os.path.isfile(os.path.join(root, 'ImageSets', 'Segmentation', 'val.txt')):
        make_synthetic_voc(root, **RECIPES.get(getattr(a, 'recipe', 'demo'), RECIPES['demo'])[1])
    meta = os.path.join(a.work_dir, 'meta')
    if not os.path.isfile(os.path.join(meta, 'cls_labels.npz')):
        build(root, meta)
    return root, meta


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--voc12_root', default=None, help='VOC-format root (default: the demo data, generated)')
    p.add_argument('--meta_dir', default=None, help='lists and cls_labels.npz (default work_dir/meta)')
    p.add_argument('--train_list', default='train_aug.txt', help='file name in --meta_dir SFC trains on')
    p.add_argument('--eval_list', default='val.txt', help='file name in --meta_dir the CAMs are made and scored on')
    p.add_argument('--work_dir', default='work/ablation')
    p.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS))
    p.add_argument('--seeds', nargs='+', default=[10], type=int)
    p.add_argument('--recipe', default='demo', choices=('demo', 'quick', 'none'),
                   help="demo: the demo's SFC flags (stand-in backbone, width 8, crop 192) and data; quick: "
                        "run_demo.sh --quick's (crop 96, 72-136 px); none: only your flags")
    p.add_argument('--head_tail_source', default='cam', choices=SOURCES, help='CAM the head/tail columns score')
    p.add_argument('--device', default='auto')
    p.add_argument('--num_workers', default=1, type=int)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    a = get_parser().parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    t0 = time.time()
    if a.voc12_root is None:
        a.voc12_root, meta = ensure_demo_data(a)
        a.meta_dir = a.meta_dir or meta
    a.meta_dir = a.meta_dir or os.path.join(a.work_dir, 'meta')
    from voc12 import dataloader as voc
    from misc.plots import gain_vs_frequency, training_counts
    class_names = voc.VOC12Layout.class_names()
    counts = training_counts(voc, os.path.join(a.meta_dir, a.train_list), os.path.join(a.meta_dir, 'cls_labels.npz'))
    results, times = {}, {}
    for row in a.rows:
        results[row] = {}
        for seed in a.seeds:
            results[row][seed], times[f'{row}_s{seed}'] = run_one(a, row, seed, extra)
    summary = summarise(results, counts, class_names, a.head_tail_source)
    print(f'ablation on {a.voc12_root} ({os.path.join(a.meta_dir, a.eval_list)}), seeds {a.seeds}; head/tail: the '
          f'{len(counts) // 2} most / least frequent classes of {a.train_list}')
    print_table(summary, a.head_tail_source)
    out = {'rows': summary, 'seeds': a.seeds, 'head_tail_source': a.head_tail_source, 'train_counts':
           dict(zip(class_names[1:], counts.tolist())), 'voc12_root': a.voc12_root, 'extra_flags': extra,
           'recipe': a.recipe, 'seconds': times, 'total_seconds': time.time() - t0}
    os.makedirs(os.path.join(a.work_dir, 'metrics'), exist_ok=True)
    camio.save_json(os.path.join(a.work_dir, 'metrics', 'ablation.json'), out)
    if 'plain' in summary and 'sfc' in summary:
        gain = [summary['sfc']['iou_per_class'][c] - summary['plain']['iou_per_class'][c] for c in class_names]
        path = gain_vs_frequency(os.path.join(a.work_dir, 'vis', 'ablation_gain.png'), class_names, gain, counts,
                                 f'IoU gain of full SFC over the plain CAM ({a.head_tail_source}), seeds {a.seeds}')
        print(f'  gain plot: {path}')
    print(f'  metrics/ablation.json written; {format_seconds(time.time() - t0)} in all')
    return out


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
