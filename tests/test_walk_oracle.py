"""tools.walk_oracle: the GT boundary map by hand, and the oracle's walk equal to make_sem_seg's with the run's
recorded settings."""
import os

import numpy as np
import pytest


def test_walk_oracle_gt_boundary_map_by_hand():
    """6 x 8 labels: class 1 in columns 0-2, one void pixel at (5, 7). Boundary pixels: column 3 (its left neighbour
    differs), and the void pixel. Cells of 4 x 4 (the last row of cells half outside the image): 4, 0, 2 and 1 of
    their 16 pixels."""
    from tools.walk_oracle import gt_boundary_map
    gt = np.zeros((6, 8), np.uint8)
    gt[:, :3] = 1
    gt[5, 7] = 255
    np.testing.assert_array_equal(gt_boundary_map(gt, 'soft').numpy(), [[[0.25, 0], [0.125, 0.0625]]])
    np.testing.assert_array_equal(gt_boundary_map(gt, 'band').numpy(), [[[1, 0], [1, 1]]])
    assert gt_boundary_map(np.zeros((9, 5), np.uint8)).shape == (1, 3, 2)


def test_walk_oracle_walks_the_runs_cams_with_its_make_sem_seg_settings(tiny_voc, tmp_path):
    """The oracle's confusion equals make_sem_seg's walk of the run's CAMs on the GT boundary map, with the walk
    settings of the step record (not args.json's, which here differ) and the planes asked for."""
    import types

    from misc import camio, provenance
    from misc.metrics import confusion_of
    from step.make_sem_seg import pseudo_label
    from tools import walk_oracle
    from voc12.dataloader import load_gt
    run = tmp_path / 'run'
    names = open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()[:3]
    (run / 'meta').mkdir(parents=True)
    lst = run / 'meta' / 'val.txt'
    lst.write_text('\n'.join(names) + '\n')
    rng = np.random.default_rng(0)
    for n in names:
        gt = load_gt(tiny_voc['root'], n)
        keys = np.unique(gt[gt != 255]).astype(np.int64)
        keys = np.concatenate([[0], keys[keys > 0]])
        cam = rng.random((keys.size,) + gt.shape).astype(np.float32)
        camio.save_cam(camio.cam_path(str(run / 'cam'), n), keys, cam, rng.random(cam.shape).astype(np.float32))
    walk = dict(sem_seg_proto_weight=0.3, sem_seg_power=1.3, sem_seg_double_power=True, sem_seg_bg_value=0.4,
                beta=10, exp_times=1, sem_seg_radius=5)
    camio.save_json(str(run / 'args.json'), dict(walk, exp_times=8, sem_seg_bg_value=0.25, dataset='voc12',
                                                 dataset_root=tiny_voc['root'], cam_dir=str(run / 'cam'),
                                                 eval_list=str(lst), metrics_dir=str(run / 'metrics')))
    made_from = {'cam_dir': provenance.identity(str(run), 'folder', str(run / 'cam')), 'irn_weights': 'none'}
    record = {'step': 'make_sem_seg', 'flags': walk, 'inputs': made_from}
    camio.save_json(provenance.record_path(str(run), 'make_sem_seg'), dict(record, inputs=dict(
        made_from, cam_dir='make_cam record 0123456789abcdef')))  # masks made from CAMs that are no longer there
    with pytest.raises(provenance.StaleOutput, match='--cam_dir is not what made the pseudo masks'):
        walk_oracle.load_run(str(run))
    camio.save_json(provenance.record_path(str(run), 'make_sem_seg'), record)
    args = walk_oracle.load_run(str(run))
    got = walk_oracle.oracle_confusions(args, names, ('soft', 'band'), (None, 0.7))
    for e in ('soft', 'band'):
        for plane in (0.4, 0.7):
            want = np.zeros((21, 21), np.int64)
            for n in names:
                gt = load_gt(tiny_voc['root'], n)
                w = types.SimpleNamespace(**dict(walk, sem_seg_bg_value=plane))
                lab = pseudo_label(camio.load_cam(camio.cam_path(str(run / 'cam'), n)),
                                   walk_oracle.gt_boundary_map(gt, e), gt.shape, w)
                want += confusion_of(gt, lab, 21, n)
            np.testing.assert_array_equal(got[e, None if plane == 0.4 else 0.7], want)
    assert not np.array_equal(got['soft', None], got['band', None])
    assert not np.array_equal(got['soft', None], got['soft', 0.7])
    scores = walk_oracle.main([str(run), '--edges', 'soft'])
    assert set(scores) == {('soft', 0.4)}


def test_walk_oracle_names_a_run_without_pseudo_masks(tmp_path):
    from misc.errors import MissingInput
    from tools import walk_oracle
    with pytest.raises(MissingInput, match='args.json'):
        walk_oracle.load_run(str(tmp_path))
    (tmp_path / 'args.json').write_text('{}')
    with pytest.raises(MissingInput, match='record of make_sem_seg'):
        walk_oracle.load_run(str(tmp_path))


def test_walk_oracle_edge_agreement_by_hand():
    """The 6 x 8 labels above: 'band' cells (0,0), (1,0), (1,1) are on a boundary, (0,1) is not. IRN's map is larger
    than the GT map (cropped); 0.5 itself is not above the threshold."""
    import torch

    from tools.walk_oracle import edge_agreement
    gt = np.zeros((6, 8), np.uint8)
    gt[:, :3] = 1
    gt[5, 7] = 255
    edge = torch.tensor([[[0.6, 0.9, 1.0], [0.4, 0.5, 1.0], [1.0, 1.0, 1.0]]])
    assert edge_agreement(edge, gt) == (3, 1, 1, 1)
    assert edge_agreement(edge, gt, threshold=0.3) == (3, 3, 1, 1)
    from misc.errors import BadInput
    with pytest.raises(BadInput, match='smaller than the GT boundary map'):
        edge_agreement(edge[:, :1], gt)
