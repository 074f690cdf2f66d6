"""IRN half of the pipeline against the authors' fixtures and hand-checkable facts."""
import argparse

import numpy as np
import pytest
import torch

from misc.imutils import crf_inference_label, pil_rescale
from misc.indexing import PathIndex, affinity_labels, random_walk, random_walk_dense
from net import resnet50_irn
from step.cam_to_ir_label import ir_label
from step.make_sem_seg import pseudo_label
from step.train_irn import affinity_labels_torch


def test_path_index_sizes_of_spec():
    p = PathIndex(10, (128, 128))
    assert len(p.search_dst) == 152 and len(p.src_indices) == 13090 and len(p.path_indices) == 20
    assert [len(g[0]) for g in p.search_paths] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22]
    assert len(PathIndex(5, (20, 20)).search_dst) == 34


def test_path_index_matches_authors(fixture):
    z = fixture('path_index')
    for pre in ('r10', 'r5'):
        p = PathIndex(int(z[f'{pre}_radius']), tuple(z[f'{pre}_size']))
        assert p.radius_floor == int(z[f'{pre}_radius_floor'])
        np.testing.assert_array_equal(p.search_dst, z[f'{pre}_search_dst'])
        np.testing.assert_array_equal([len(g[0]) for g in p.search_paths], z[f'{pre}_path_lengths'])
        np.testing.assert_array_equal([len(g) for g in p.search_paths], z[f'{pre}_group_sizes'])
        for g in range(len(p.search_paths)):
            np.testing.assert_array_equal(p.search_paths[g], z[f'{pre}_search_paths_{g:02d}'])
            np.testing.assert_array_equal(p.path_indices[g], z[f'{pre}_path_indices_{g:02d}'])
        np.testing.assert_array_equal(p.src_indices, z[f'{pre}_src_indices'])
        np.testing.assert_array_equal(p.dst_indices, z[f'{pre}_dst_indices'])


def test_affinity_labels_match_authors(fixture):
    z = fixture('affinity_labels')
    p = PathIndex(10, (24, 28))
    red = pil_rescale(z['label_full'], 0.25, 0)
    np.testing.assert_array_equal(red, z['label_reduced'])
    for got, key in zip(affinity_labels(red, p.src_indices, p.dst_indices, 21), ('bg_pos', 'fg_pos', 'neg')):
        np.testing.assert_array_equal(got, z[key])
    t = affinity_labels_torch(torch.from_numpy(red.copy())[None], torch.from_numpy(p.src_indices),
                              torch.from_numpy(p.dst_indices), 21)
    for got, key in zip(t, ('bg_pos', 'fg_pos', 'neg')):
        np.testing.assert_array_equal(got[0].numpy(), z[key])


def test_irn_losses_match_authors(fixture):
    z = fixture('irn_loss')
    p = PathIndex(10, (24, 24))
    maps = resnet50_irn.irn_loss_maps(torch.from_numpy(z['edge_logits']), torch.from_numpy(z['dp']),
                                      [torch.from_numpy(i) for i in p.path_indices], p.search_dst, p.radius_floor)
    for m, k in zip(maps, ('pos_aff_loss_map', 'neg_aff_loss_map', 'dp_fg_loss_map', 'dp_bg_loss_map')):
        np.testing.assert_allclose(m.numpy(), z[k], rtol=0, atol=1e-5)
    out = resnet50_irn.irn_losses(maps, *(torch.from_numpy(z[k]) for k in ('bg_pos', 'fg_pos', 'neg')))
    for ours, theirs in (('bg_pos', 'bg_pos_aff_loss'), ('fg_pos', 'fg_pos_aff_loss'), ('pos', 'pos_aff_loss'),
                         ('neg', 'neg_aff_loss'), ('dp_fg', 'dp_fg_loss'), ('dp_bg', 'dp_bg_loss'), ('total', 'total_loss')):
        np.testing.assert_allclose(out[ours].item(), z[theirs], rtol=1e-5)


def test_crf_matches_authors(fixture):
    z = fixture('crf')
    np.testing.assert_array_equal(crf_inference_label(z['img'], z['labels'], int(z['n_labels'])), z['out'])


def test_ir_label_matches_authors(fixture):
    z = fixture('cam2ir')
    lab = ir_label(z['img'], {'keys': z['keys'], 'cam': z['IS_CAM1'], 'proto_cam': z['IS_CAM']})
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, z['ir_label'])


def test_random_walk_sparse_equals_dense_and_authors(fixture):
    z = fixture('random_walk')
    x, e = torch.from_numpy(z['x']), torch.from_numpy(z['edge'])
    sparse = random_walk(x, e, int(z['radius']), int(z['beta']), int(z['exp_times']))
    dense, aff = random_walk_dense(x, e, int(z['radius']), int(z['beta']), int(z['exp_times']))
    scale = float(z['out'].max())
    np.testing.assert_allclose(sparse.numpy(), z['out'], rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(dense.numpy(), z['out'], rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(aff.numpy(), z['dense_aff'])


def test_random_walk_sparse_equals_dense_on_random_maps():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 9, 13, generator=g)
    e = torch.rand(1, 9, 13, generator=g) * 0.6
    for exp_times in (0, 1, 3, 8):
        s = random_walk(x, e, exp_times=exp_times)
        d, _ = random_walk_dense(x, e, exp_times=exp_times)
        np.testing.assert_allclose(s.numpy(), d.numpy(), rtol=1e-4, atol=1e-6)


def test_pseudo_label_matches_authors(fixture):
    z = fixture('sem_seg_post')
    a = argparse.Namespace(sem_seg_proto_weight=0.3, sem_seg_power=1.3, sem_seg_double_power=True,
                           sem_seg_bg_value=0.25, sem_seg_radius=5, beta=int(z['beta']), exp_times=int(z['exp_times']))
    lab = pseudo_label({'keys': z['keys'], 'cam': z['IS_CAM1'], 'proto_cam': z['IS_CAM']},
                       torch.from_numpy(z['edge']), tuple(z['img_size']), a)
    np.testing.assert_array_equal(lab, z['pseudo_label'])


def authors_irn_state_dict(net):
    """Our tensors under the authors' 1 056 IRN names: aliases (stage*, backbone.*, edge_layers.*, dp_layers.*,
    mean_shift) and the loss's buffers (path_indices*, disp_target), as their train_irn.py saves them."""
    sd = dict(net.state_dict())
    authors = dict(sd)
    for k, v in sd.items():  # the authors' 1 056 keys: aliases and the loss buffers
        if k.startswith('resnet50.'):
            rest = k[len('resnet50.'):]
            if rest.startswith('conv1.'):
                st = 'stage1.0.' + rest[6:]
            elif rest.startswith('bn1.'):
                st = 'stage1.1.' + rest[4:]
            else:
                layer, tail = rest.split('.', 1)
                st = f'stage{int(layer[-1]) + 1}.0.{tail}'
            authors[st] = v
            authors[f'backbone.{int(st[5]) - 1}.{st[7:]}'] = v
        elif k.startswith('fc_edge'):
            i, tail = k[len('fc_edge'):].split('.', 1)
            authors[f'edge_layers.{int(i) - 1}.{tail}'] = v
        elif k.startswith('fc_dp'):
            i, tail = k[len('fc_dp'):].split('.', 1)
            authors[f'dp_layers.{int(i) - 1}.{tail}'] = v
    authors['mean_shift.running_mean'] = sd['fc_dp7.4.running_mean']
    p = PathIndex(10, (128, 128))
    for i, pi in enumerate(p.path_indices):
        authors[f'path_indices{i}'] = torch.from_numpy(pi)
    authors['disp_target'] = torch.zeros(1, 2, 152, 1)
    return authors


def test_irn_parameter_groups_and_authors_checkpoint():
    net = resnet50_irn.Net(64)
    edge, dp = net.trainable_parameters()
    assert (len(edge), sum(p.numel() for p in edge)) == (17, 125409)
    assert (len(dp), sum(p.numel() for p in dp)) == (22, 1269120)
    authors = authors_irn_state_dict(net)
    assert len(authors) == 1056
    dst = resnet50_irn.EdgeDisplacement(backbone_width=64)
    resnet50_irn.load_irn_weights(dst, authors)
    authors.pop('fc_edge6.bias')
    with pytest.raises(ValueError, match='fc_edge6.bias'):
        resnet50_irn.load_irn_weights(dst, authors)


def test_edge_displacement_any_size_and_flip_fusion():
    torch.manual_seed(0)
    net = resnet50_irn.EdgeDisplacement(crop_size=64, backbone_width=8).eval()
    for h, w in ((37, 50), (70, 90)):  # below and above the pad size
        img = torch.randn(1, 3, h, w)
        with torch.no_grad():
            edge, dp = net(torch.cat([img, img.flip(-1)]))
            edge2, _ = net(torch.cat([img.flip(-1), img]))
        assert edge.shape == (1, (h - 1) // 4 + 1, (w - 1) // 4 + 1) and dp.shape[0] == 2
        assert float(edge.min()) >= 0 and float(edge.max()) <= 1
        np.testing.assert_allclose(edge2.numpy(), edge.flip(-1).numpy(), atol=1e-5)


def test_path_max_gradient_equals_max_pooling_reference():
    from misc.indexing import path_affinity
    p = PathIndex(10, (24, 28))
    inds = [torch.from_numpy(i) for i in p.path_indices]

    def ref(edge):  # the authors' gather + max_pool2d
        out = []
        for ind in inds:
            v = torch.index_select(edge, 1, ind.reshape(-1)).view(edge.shape[0], *ind.shape)
            out.append(1 - torch.nn.functional.max_pool2d(v, (v.shape[2], 1)).squeeze(2))
        return torch.cat(out, 1)
    for e in (torch.rand(2, 24 * 28, dtype=torch.float64), torch.full((1, 24 * 28), 0.5, dtype=torch.float64)):
        e.requires_grad_(True)
        a, b = path_affinity(e, inds), ref(e)
        assert torch.equal(a, b)
        g = torch.randn_like(a)
        ga, = torch.autograd.grad(a, e, g)
        gb, = torch.autograd.grad(b, e, g)
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), atol=1e-12)  # ties: first maximal pixel, as max-pooling


def test_lean_training_loss_equals_map_formulation(fixture):
    z = fixture('irn_loss')
    p = PathIndex(10, (24, 24))
    inds = [torch.from_numpy(i) for i in p.path_indices]
    labels = [torch.from_numpy(z[k]).double() for k in ('bg_pos', 'fg_pos', 'neg')]
    e1 = torch.from_numpy(z['edge_logits']).double().requires_grad_(True)
    d1 = torch.from_numpy(z['dp']).double().requires_grad_(True)
    e2, d2 = e1.detach().clone().requires_grad_(True), d1.detach().clone().requires_grad_(True)
    ref = resnet50_irn.irn_losses(resnet50_irn.irn_loss_maps(e1, d1, inds, p.search_dst, p.radius_floor), *labels)
    lean = resnet50_irn.irn_training_loss(e2, d2, inds, p.search_dst, p.radius_floor, *labels)
    for k in ref:
        np.testing.assert_allclose(lean[k].item(), ref[k].item(), rtol=1e-12)
    np.testing.assert_allclose(lean['total'].item(), z['total_loss'], rtol=1e-5)
    ref['total'].backward()
    lean['total'].backward()
    np.testing.assert_allclose(e2.grad.numpy(), e1.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(d2.grad.numpy(), d1.grad.numpy(), atol=1e-12)


def test_micro_batches_give_the_full_batch_gradient():
    from misc.torchutils import PolyOptimizer
    from step.train_irn import accumulate_gradients
    torch.manual_seed(0)
    net = resnet50_irn.Net(8).double().train()
    p = PathIndex(10, (24, 24))
    inds = [torch.from_numpy(i) for i in p.path_indices]
    img = torch.randn(4, 3, 96, 96, dtype=torch.float64)
    red = torch.randint(0, 3, (4, 24, 24), dtype=torch.uint8)
    red[0, :3] = 255
    labels = affinity_labels_torch(red, torch.from_numpy(p.src_indices), torch.from_numpy(p.dst_indices), 21)
    edge_p, dp_p = net.trainable_parameters()
    opt = PolyOptimizer([{'params': edge_p + dp_p, 'lr': 0.1, 'weight_decay': 0}], 0.1, 0, 10)
    full = accumulate_gradients(net, img, labels, inds, p, 4, opt)
    g_full = [q.grad.clone() for q in edge_p + dp_p]
    parts = accumulate_gradients(net, img, labels, inds, p, 1, opt)
    for k in full:
        np.testing.assert_allclose(parts[k].item(), full[k].item(), rtol=1e-10)
    for a, b in zip(g_full, [q.grad for q in edge_p + dp_p]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-8, atol=1e-12)
