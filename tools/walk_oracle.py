"""What would the pseudo masks be if IRN's boundary map were right? A finished run's CAMs walked on boundaries drawn
from the ground truth instead of IRN's: an oracle for IRN's edge network (run it after make_sem_seg).

    python -m tools.walk_oracle work/demo_c                             # the run's eval list and background plane
    python -m tools.walk_oracle work/demo_c --bg_values 0.25 0.65 --edges soft band

The walk is make_sem_seg's own (step.make_sem_seg.pseudo_label) with the settings the run's make_sem_seg used (its
step record: CAM weight and powers, radius, beta, walk length, and the background plane unless --bg_values), on the
run's CAMs; only the stride-4 boundary map differs. A pixel is on a GT boundary when its upper or left neighbour
has another label, or when it is void (255). A stride-4 cell's boundary value is
    soft   the share of its 16 pixels on a boundary: a straight boundary through a cell gives 0.25 (IRN's maps are
           soft too, values in [0, 1]; the default)
    band   1 where any of its pixels is on a boundary: each such cell blocks the walk and keeps no score of its own,
           a boundary 4 px thick (a lower figure than soft on every run we tried)
Prints the mIoU of each (edges, plane), and a per-class table of the first beside the run's CAM and IRN masks
(metrics/eval_cam.json, metrics/eval_sem_seg.json). With --irn_edges it also runs the run's IRN on the images (as
make_sem_seg: the image and its flip, fp32 on the CPU) and says how its edge map meets the GT boundaries: the share of
the cells a boundary crosses ('band' cells) where IRN's edge exceeds 0.5, and the share of the other cells where it
does. Writes nothing.
"""
import argparse
import os
import sys
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from misc import camio  # noqa: E402
from misc.errors import BadInput, MissingInput  # noqa: E402

EDGES = ('soft', 'band')


def gt_boundary_map(gt, mode='soft'):
    """(H, W) label array (255 void) -> (1, ceil(H/4), ceil(W/4)) float32 tensor: the GT boundary map at stride 4."""
    import torch
    import torch.nn.functional as F
    if mode not in EDGES:
        raise BadInput(f'--edges must be among {EDGES}, got {mode!r}')
    g = torch.from_numpy(np.asarray(gt).astype(np.int64))
    h, w = g.shape
    b = g == 255
    b[:, 1:] |= g[:, 1:] != g[:, :-1]
    b[1:, :] |= g[1:, :] != g[:-1, :]
    h4, w4 = (h + 3) // 4, (w + 3) // 4
    padded = F.pad(b.float()[None, None], (0, 4 * w4 - w, 0, 4 * h4 - h))  # outside the image: no boundary
    pool = F.max_pool2d if mode == 'band' else F.avg_pool2d
    return pool(padded, 4)[0]


def edge_agreement(edge, gt, threshold=0.5):
    """IRN's stride-4 edge map (1, h, w) (h, w at least the GT map's; cropped) against a GT label array -> counts
    (boundary cells, those with edge > threshold, other cells, those with edge > threshold); boundary cells are the
    'band' map's."""
    band = gt_boundary_map(gt, 'band')[0] > 0
    e = edge[0, :band.shape[0], :band.shape[1]].float().cpu()
    if e.shape != band.shape:
        raise BadInput(f'edge map {tuple(edge.shape)} is smaller than the GT boundary map {tuple(band.shape)}')
    above = e > threshold
    return (int(band.sum()), int((above & band).sum()), int((~band).sum()), int((above & ~band).sum()))


def irn_edge_agreement(args, lst, device='cpu'):
    """edge_agreement summed over the images of list file `lst`, with the run's IRN weights and make_sem_seg's crop."""
    import torch
    from misc.dataset import get_dataset
    from step.make_sem_seg import load_edge_model
    ds_mod = get_dataset(args)
    if not os.path.isfile(str(getattr(args, 'irn_weights', ''))):
        raise MissingInput(f'IRN weights {getattr(args, "irn_weights", None)} are missing: --irn_edges needs the '
                           f'run\'s ckpt/ (train_irn)')
    net_args = types.SimpleNamespace(**dict(vars(args), cam_fold_bn=False, channels_last=False))
    model = load_edge_model(net_args, torch.device(device))
    ds = ds_mod.ClassificationDatasetMSF(lst, args.dataset_root, args.cls_labels, scales=(1.0,))
    total = np.zeros(4, np.int64)
    for i in range(len(ds)):
        pack = ds[i]
        gt = ds_mod.load_gt(args.dataset_root, pack['name'], ds_mod.ImageDataset.layout)
        with torch.inference_mode():
            edge, _ = model(torch.as_tensor(pack['img'][0]).to(device))
        total += edge_agreement(edge, gt)
    return total


def load_run(run):
    """What the run's make_sem_seg was run with: args.json (paths, dataset), overlaid with the settings its step record
    kept (args.json holds the last call's flags, which need not be make_sem_seg's)."""
    from misc import provenance
    path = os.path.join(run, 'args.json')
    record = provenance.load(run, 'make_sem_seg') if os.path.isfile(path) else None
    if not record or 'flags' not in record:
        what = 'readable record of make_sem_seg' if os.path.isfile(path) else 'args.json'
        raise MissingInput(f'{run} has no {what}: give the work directory of a run that made its pseudo masks '
                           f'(--make_sem_seg_pass True)')
    args = types.SimpleNamespace(**{**camio.load_json(path), **record['flags']})
    args.work_dir = run
    for flag, kind in provenance.STEP_INPUTS['make_sem_seg']:  # the CAMs / IRN it would use are those of the masks
        if flag in ('cam_dir', 'irn_weights'):
            now, then = provenance.identity(run, kind, getattr(args, flag, None)), record.get('inputs', {}).get(flag)
            if now != then:
                raise provenance.StaleOutput(f'{run}: --{flag} is not what made the pseudo masks (then: {then}; '
                                             f'now: {now}); re-run make_sem_seg first, so that the oracle and the '
                                             f'masks it is compared with walk the same CAMs and IRN')
    return args


def oracle_confusions(args, names, edges=('soft',), bg_values=(None,)):
    """{(edges, plane): confusion matrix over `names`} of the run's CAMs walked on GT boundaries (plane None: the
    run's own)."""
    from misc.dataset import get_dataset, num_classes
    from misc.metrics import confusion_of
    from step.make_sem_seg import pseudo_label
    ds = get_dataset(args)
    n = num_classes(args)
    conf = {(e, p): np.zeros((n, n), np.int64) for e in edges for p in bg_values}
    walks = {p: types.SimpleNamespace(**dict(vars(args), **({} if p is None else {'sem_seg_bg_value': p})))
             for p in bg_values}
    for name in names:
        gt = ds.load_gt(args.dataset_root, name, ds.ImageDataset.layout)
        cams = camio.load_cam(camio.cam_path(args.cam_dir, name))
        if cams['cam'].shape[1:] != gt.shape:
            raise BadInput(f'{name}: CAM size {cams["cam"].shape[1:]} differs from its GT {gt.shape}')
        for e in edges:
            edge = gt_boundary_map(gt, e)
            for p in bg_values:
                conf[e, p] += confusion_of(gt, pseudo_label(cams, edge, gt.shape, walks[p]), n, name)
    return conf


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('run', help='work directory of a run (its args.json, cam/, metrics/)')
    p.add_argument('--list', default=None, help="image list to score (default: the run's --eval_list)")
    p.add_argument('--bg_values', nargs='+', type=float, default=None,
                   help="background planes to try (default: the run's --sem_seg_bg_value)")
    p.add_argument('--edges', nargs='+', choices=EDGES, default=['soft'], help='GT boundary maps to try')
    p.add_argument('--irn_edges', action='store_true',
                   help="also score the run's IRN edge map against the GT boundaries (runs IRN on the images)")
    a = p.parse_args(argv)
    from misc.dataset import get_dataset
    from misc.metrics import scores_from_confusion
    from misc.pyutils import format_table
    args = load_run(a.run)
    lst = a.list or args.eval_list
    names = get_dataset(args).ImageDataset(lst, args.dataset_root).names
    if not names:
        raise BadInput(f'{lst} lists no image')
    planes = a.bg_values or [args.sem_seg_bg_value]
    conf = oracle_confusions(args, names, a.edges, planes)
    print(f'{a.run}: CAMs walked on GT boundaries, {len(names)} images of {lst} (beta {args.beta}, '
          f'T^{2 ** args.exp_times}, radius {args.sem_seg_radius})')
    scores = {k: scores_from_confusion(c) for k, c in conf.items()}
    print(format_table(['edges', 'background plane', 'mIoU'],
                       [[e, f'{pl:g}', s['miou']] for (e, pl), s in scores.items()]))
    first = scores[a.edges[0], planes[0]]
    classes = get_dataset(args).ImageDataset.layout.class_names()
    cols, ref = [], {}
    for label, f in (('CAM', 'eval_cam.json'), ('IRN masks', 'eval_sem_seg.json')):
        path = os.path.join(args.metrics_dir, f)
        if os.path.isfile(path):
            m = camio.load_json(path)
            if label == 'CAM':  # the best of the CAM sources eval_cam scored, as the docs' tables
                m = max((m.get('sources') or {}).values(), key=lambda v: v['miou'], default=m)
            cols.append(label)
            ref[label] = m
    rows = [[c] + [ref[k]['iou'].get(c, float('nan')) for k in cols] + [float(first['iou'][i])]
            for i, c in enumerate(classes)]
    rows.append(['mIoU'] + [float(ref[k]['miou']) for k in cols] + [first['miou']])
    print(f'per class (GT boundaries: {a.edges[0]}, plane {planes[0]:g}; CAM: the best of the sources eval_cam '
          'scored):')
    print(format_table(['class'] + cols + ['GT boundaries'], rows))
    if a.irn_edges:
        on, on_above, off, off_above = irn_edge_agreement(args, lst)
        scores['irn_edges'] = {'boundary_found': on_above / max(1, on), 'other_marked': off_above / max(1, off)}
        print(f"IRN's edge map (> 0.5): {scores['irn_edges']['boundary_found']:.3f} of the {on} cells a GT boundary "
              f"crosses, {scores['irn_edges']['other_marked']:.3f} of the {off} other cells")
    return scores


if __name__ == '__main__':
    from misc.errors import InputError
    try:
        main()
    except InputError as e:
        sys.exit(f'walk_oracle: {e}')
