"""The segmentation stage: DeepLab-v2 against deeplab-pytorch's outputs, its init weights, losses,
learning-rate groups, data augmentation, the VOC test-server export, and train_seg -> make_seg -> eval_seg."""
import json
import math
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import run_sample
from misc import camio
from misc.imutils import voc_palette
from net import deeplab, seg_loss
from step import make_seg, train_seg
from tests.test_e2e import base_args


def rule_weights(z):
    """The fixture's weights, made from its key list by the rule in fixtures/README.md (deeplab_v2.npz)."""
    d = json.loads(str(z['keys_json']))
    sd = {}
    for i, (k, s) in enumerate(zip(d['keys'], d['shapes'])):
        g, s = torch.Generator().manual_seed(1000 + i), tuple(s)
        if k.endswith('num_batches_tracked'):
            t = torch.zeros(s, dtype=torch.long)
        elif 'aspp' in k:
            t = torch.randn(s, generator=g) * 0.01
        elif len(s) == 4:
            t = torch.randn(s, generator=g) * math.sqrt(2 / (s[1] * s[2] * s[3])) * (0.2 if '.increase.' in k else 1)
        elif k.endswith('running_var'):
            t = 1 + 0.1 * torch.rand(s, generator=g)
        elif k.endswith('weight'):
            t = 1 + 0.1 * torch.randn(s, generator=g)
        else:
            t = 0.1 * torch.randn(s, generator=g)
        sd[k] = t
    return sd, d['keys']


def test_deeplab_v2_matches_deeplab_pytorch(fixture):
    z = fixture('deeplab_v2')
    sd, keys = rule_weights(z)
    model = deeplab.build(21, 101, 64, '1x1')
    assert list(model.state_dict()) == keys  # the same 632 names in the same order
    mapped, layout = deeplab.to_model_keys(sd, 'fixture')
    assert layout == 'deeplab' and deeplab.load_weights(model, mapped, 'fixture') == 'whole'
    x = torch.from_numpy(z['input'])
    with torch.no_grad():
        out = model.eval()(x)
        np.testing.assert_allclose(out.numpy(), z['eval_logits_max'], rtol=0, atol=DEEPLAB_REL * np.abs(
            z['eval_logits_max']).max())
        outs = model.train()(x)  # BatchNorm stays frozen in train mode
        assert len(outs) == 4
        for i, o in enumerate(outs):
            np.testing.assert_allclose(o.numpy(), z[f'train_out{i}'], rtol=0,
                                       atol=DEEPLAB_REL * np.abs(z[f'train_out{i}']).max())
        # the tolerance sees the smallest term of the network: without the ASPP biases (|b| <= 0.03, 5e-5 of the
        # largest logit) the logits leave it
        for name, p in model.named_parameters():
            if name.startswith('base.aspp.') and name.endswith('bias'):
                p.zero_()
        gap = float(np.abs(model.eval()(x).numpy() - z['eval_logits_max']).max())
        assert gap > 3 * DEEPLAB_REL * np.abs(z['eval_logits_max']).max(), gap


# |ours - deeplab-pytorch| relative to the largest logit: measured 2e-7 to 1e-6 on the fixture (float32 summation
# order through 101 layers, logits up to 792); dropping the ASPP biases moves them by 5e-5
DEEPLAB_REL = 1e-5


def test_architecture_facts():
    m = deeplab.build(21, 101, 64, '1x1')
    b = m.base
    assert [len(getattr(b, f'layer{i}')) for i in (2, 3, 4, 5)] == [3, 4, 23, 3]
    assert b.layer1.pool.ceil_mode and b.layer3.block1.reduce.conv.stride == (2, 2)
    assert b.layer3.block1.conv3x3.conv.stride == (1, 1) and b.layer4.block2.conv3x3.conv.dilation == (2, 2)
    assert b.layer5.block3.conv3x3.conv.padding == (4, 4) and b.layer5.block1.reduce.bn.eps == 1e-5
    assert [c.dilation[0] for c in b.aspp.children()] == [6, 12, 18, 24]
    tv = deeplab.build(21, 50, 8, '3x3').base
    assert [len(getattr(tv, f'layer{i}')) for i in (2, 3, 4, 5)] == [3, 4, 6, 3]
    assert tv.layer3.block1.reduce.conv.stride == (1, 1) and tv.layer3.block1.conv3x3.conv.stride == (2, 2)
    assert not any(p.requires_grad for n, p in m.named_parameters() if '.bn.' in n)  # BN affine frozen
    with torch.no_grad():  # output stride 8: 321 -> 41 (and 21 / 31 for the 0.5x / 0.75x inputs)
        outs = deeplab.build(21, 50, 4, '1x1').train()(torch.zeros(1, 3, 321, 321))
    assert [tuple(o.shape[2:]) for o in outs] == [(41, 41), (21, 21), (31, 31), (41, 41)]


def test_lr_groups_and_poly_every_10():
    model = deeplab.build(21, 101, 8, '1x1')
    a = run_sample.get_parser().parse_args([])
    opt = train_seg.optimizer_for(model, a, max_step=30000)
    g = opt.param_groups
    n_conv = 1 + 3 * (3 + 4 + 23 + 3) + 4  # stem + 3 per block + 4 shortcuts
    assert [len(x['params']) for x in g] == [n_conv, 4, 4]
    assert [x['lr'] for x in g] == pytest.approx([2.5e-4, 2.5e-3, 5e-3])
    assert [x['weight_decay'] for x in g] == [5e-4, 5e-4, 0.0] and g[0]['momentum'] == 0.9
    assert all(p.dim() == 1 for p in g[2]['params']) and all(p.dim() == 4 for p in g[1]['params'])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for x in g for p in x['params']}  # BN affine is in no group
    # deeplab-pytorch PolynomialLR(step_size=10): update i uses lr0 (1 - 10 floor((i-1)/10) / max) ^ 0.9
    for step, f in ((0, 1.0), (9, 1.0), (10, (1 - 10 / 30000) ** 0.9), (19, (1 - 10 / 30000) ** 0.9),
                    (12345, (1 - 12340 / 30000) ** 0.9)):
        assert opt.lr_at(step) == pytest.approx([2.5e-4 * f, 2.5e-3 * f, 5e-3 * f], rel=1e-12)


def test_recipes_and_overrides():
    p = run_sample.get_parser()
    a = run_sample.finalize_args(p.parse_args(['--device', 'cpu', '--work_dir', '/tmp/x_recipe']))
    assert (a.seg_init, a.seg_batch_size, a.seg_iter_size, a.seg_iters) == ('imagenet', 10, 1, 30000)
    assert (a.seg_scales, a.seg_scale_mode, a.seg_loss, a.seg_crop_size) == ([0.5, 2.0], 'uniform', 'balanced', 321)
    assert (a.seg_lr, a.seg_momentum, a.seg_weight_decay, a.seg_poly_power) == (2.5e-4, 0.9, 5e-4, 0.9)
    assert a.seg_label_dir == a.sem_seg_dir and a.seg_infer_list.endswith('val.txt')
    c = run_sample.finalize_args(p.parse_args(['--device', 'cpu', '--work_dir', '/tmp/x_recipe',
                                               '--seg_recipe', 'deeplab_coco', '--seg_iters', '7']))
    assert (c.seg_batch_size, c.seg_iter_size, c.seg_iters, c.seg_loss) == (5, 2, 7, 'ce')
    assert c.seg_scales == [0.5, 0.75, 1.0, 1.25, 1.5] and c.seg_scale_mode == 'choice' and c.seg_init is None
    assert (c.seg_crf_iters, c.seg_crf_pos_w, c.seg_crf_pos_xy_std) == (10, 3, 1)
    assert (c.seg_crf_bi_w, c.seg_crf_bi_xy_std, c.seg_crf_bi_rgb_std) == (4, 67, 3)
    with pytest.raises(ValueError, match='deeplabv1_resnet101-coco.pth'):
        train_seg.resolve_init(c)


def test_label_resizing_is_pil_nearest():
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in (((321, 321), (41, 41)), ((321, 321), (21, 21)), ((321, 321), (31, 31)),
                             ((97, 130), (13, 17)), ((50, 40), (7, 9)), ((8, 8), (16, 12))):
        lab = rng.integers(0, 21, (2, h, w)).astype(np.uint8)
        lab[0, :3] = 255
        ours = seg_loss.resize_labels(torch.from_numpy(lab), (oh, ow)).numpy()
        for i in range(2):  # deeplab-pytorch main.py resize_labels: PIL NEAREST on the float label
            ref = np.asarray(Image.fromarray(lab[i].astype(np.float32)).resize((ow, oh), resample=Image.NEAREST))
            np.testing.assert_array_equal(ours[i], ref.astype(np.int64))


def test_balanced_and_plain_ce_by_hand():
    logit = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 3.0]]]])  # (1, 3 classes, 1, 2)
    logit = torch.cat([logit, logit.flip(-1)], dim=3)  # 4 pixels
    labels = torch.tensor([[[0, 2, 255, 1]]])
    p = torch.softmax(logit, 1)[0, :, 0]
    ce = [-math.log(p[0, 0]), -math.log(p[2, 1]), None, -math.log(p[1, 3])]
    den = seg_loss.denominators(labels, 'balanced')
    assert den.tolist() == [1, 2]
    got = seg_loss.output_loss(logit, labels, den, 'balanced').item()
    assert got == pytest.approx((ce[0] + (ce[1] + ce[3]) / 2) / 2, rel=1e-6)
    den = seg_loss.denominators(labels, 'ce')
    assert den.tolist() == [3]
    assert seg_loss.output_loss(logit, labels, den, 'ce').item() == pytest.approx((ce[0] + ce[1] + ce[3]) / 3, rel=1e-6)
    # no foreground pixel at all: the background term alone (CLIMS would give NaN)
    bg_only = torch.tensor([[[0, 255, 255, 0]]])
    den = seg_loss.denominators(bg_only, 'balanced')
    assert seg_loss.output_loss(logit, bg_only, den, 'balanced').item() == pytest.approx(
        (-math.log(p[0, 0]) - math.log(p[0, 3])) / 2, rel=1e-6)


def test_micro_batches_give_the_same_gradients():
    torch.manual_seed(0)
    model = deeplab.build(5, 50, 4, '1x1').double().train()
    img = torch.randn(5, 3, 40, 40, dtype=torch.float64)
    label = torch.randint(0, 5, (5, 40, 40))
    label[1] = 0  # an image without foreground and one mostly ignored: counts must span the batch
    label[2, :30] = 255
    grads = []
    for mb in (0, 2):
        model.zero_grad(set_to_none=True)
        loss = train_seg.seg_step_gradients(model, img, label, 'balanced', iter_size=2, micro_batch=mb)
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def torchvision_state_dict(depth, width, with_counters=True):
    """A state dict with torchvision's ResNet names (as resnet101-5d3b4d8f.pth), made from our network."""
    m = deeplab.build(21, depth, width, '3x3')
    inv = {}
    for k in list(m.state_dict()):
        if k.startswith('base.aspp'):
            continue
        inner = k[5:]
        mm = __import__('re').match(r'layer(\d)\.block(\d+)\.(\w+)\.(conv|bn)\.(.*)', inner)
        if inner.startswith('layer1.conv1.'):
            tv = ('conv1.' if '.conv.' in inner else 'bn1.') + inner.split('.', 3)[3]
        else:
            part = {('reduce', 'conv'): 'conv1', ('reduce', 'bn'): 'bn1', ('conv3x3', 'conv'): 'conv2',
                    ('conv3x3', 'bn'): 'bn2', ('increase', 'conv'): 'conv3', ('increase', 'bn'): 'bn3',
                    ('shortcut', 'conv'): 'downsample.0', ('shortcut', 'bn'): 'downsample.1'}[(mm.group(3), mm.group(4))]
            tv = f'layer{int(mm.group(1)) - 1}.{int(mm.group(2)) - 1}.{part}.{mm.group(5)}'
        if with_counters or not tv.endswith('num_batches_tracked'):
            inv[tv] = m.state_dict()[k]
    inv['fc.weight'], inv['fc.bias'] = torch.zeros(1000, width * 32), torch.zeros(1000)
    return m, inv


def test_init_layouts_load_strictly(tmp_path):
    # (c) torchvision names, legacy file without num_batches_tracked, fc dropped, stride in the 3x3
    src, tv = torchvision_state_dict(50, 8, with_counters=False)
    p = str(tmp_path / 'resnet50-tv.pth')
    torch.save(tv, p)
    a = run_sample.get_parser().parse_args(['--seg_init', p, '--seg_depth', '50', '--backbone_width', '8'])
    model, norm = train_seg.build_model(a, 21)
    assert norm == 'torchvision' and model.stride_in == '3x3'
    assert torch.equal(model.base.layer4.block3.conv3x3.conv.weight, src.base.layer4.block3.conv3x3.conv.weight)
    assert deeplab.torchvision_to_deeplab('layer3.4.downsample.1.running_var') == 'layer4.block5.shortcut.bn.running_var'
    # (a) a deeplab-pytorch backbone without 'base.' (the COCO init): ASPP stays fresh, Caffe BGR mean
    sd = {k[5:]: v for k, v in src.state_dict().items() if not k.startswith('base.aspp')}
    p2 = str(tmp_path / 'deeplabv1_resnet50-coco.pth')
    torch.save(sd, p2)
    a = run_sample.get_parser().parse_args(['--seg_init', p2, '--seg_depth', '50', '--backbone_width', '8'])
    model, norm = train_seg.build_model(a, 21)
    assert norm == 'caffe' and model.stride_in == '1x1'
    assert float(model.base.aspp.c0.bias.detach().abs().sum()) == 0
    assert 0.005 < float(model.base.aspp.c0.weight.detach().std()) < 0.015
    # (a) a whole trained DeepLab ('base.' keys, as deeplab-pytorch saves model.module.state_dict()) loads whole
    whole = deeplab.build(21, 50, 8, '1x1')
    assert deeplab.load_weights(deeplab.build(21, 50, 8, '1x1'), deeplab.to_model_keys(whole.state_dict(), 'w')[0], 'w') == 'whole'
    # errors name the tensor, the depth, the width or the class count
    bad = dict(sd)
    bad['layer2.block1.reduce.convv.weight'] = bad.pop('layer2.block1.reduce.conv.weight')
    with pytest.raises(ValueError, match=r'missing tensors.*base\.layer2\.block1\.reduce\.conv\.weight(.|\n)*'
                                         r'unexpected tensors.*base\.layer2\.block1\.reduce\.convv\.weight'):
        deeplab.load_weights(deeplab.build(21, 50, 8, '1x1'), deeplab.to_model_keys(bad, 'f')[0], 'f')
    bad = dict(sd)
    bad['layer3.block2.conv3x3.conv.weight'] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(ValueError, match=r'mis-shaped.*base\.layer3\.block2\.conv3x3\.conv\.weight'):
        deeplab.load_weights(deeplab.build(21, 50, 8, '1x1'), deeplab.to_model_keys(bad, 'f')[0], 'f')
    with pytest.raises(ValueError, match=r'ResNet-50 .*ResNet-101'):
        deeplab.load_weights(deeplab.build(21, 101, 8, '1x1'), deeplab.to_model_keys(sd, 'f')[0], 'f')
    with pytest.raises(ValueError, match=r'stem of 8 channels.*--backbone_width 4'):
        deeplab.load_weights(deeplab.build(21, 50, 4, '1x1'), deeplab.to_model_keys(sd, 'f')[0], 'f')
    with pytest.raises(ValueError, match=r'trained for 21 classes .*this run has 81'):
        deeplab.load_weights(deeplab.build(81, 50, 8, '1x1'), deeplab.to_model_keys(whole.state_dict(), 'f')[0], 'f')
    with pytest.raises(ValueError, match=r'neither a deeplab-pytorch state dict .* nor a torchvision ResNet'):
        deeplab.to_model_keys({'foo.weight': torch.zeros(1)}, 'f')
    with pytest.raises(ValueError, match='no ASPP tensors'):
        deeplab.load_weights(deeplab.build(21, 50, 8, '1x1'), deeplab.to_model_keys(sd, 'f')[0], 'f',
                             allow_fresh_head=False)


def test_input_normalisation():
    img = np.array([[[10, 20, 30]]], np.uint8)
    np.testing.assert_allclose(deeplab.normalize_image(img, 'caffe')[0, 0], [30 - 104.008, 20 - 116.669, 10 - 122.675],
                               rtol=1e-6)
    np.testing.assert_allclose(deeplab.normalize_image(img, 'torchvision')[0, 0],
                               [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225],
                               rtol=1e-6)


def write_masks(tiny_voc, work, names, fn=None):
    for n in names:
        g = camio.read_label(os.path.join(tiny_voc['root'], 'SegmentationClassAug', n + '.png'))
        camio.write_label(os.path.join(work, 'sem_seg', n + '.png'), fn(g) if fn else np.where(g == 255, 0, g))


def test_segmentation_dataset_augmentation(tiny_voc, tmp_path):
    from voc12.dataloader import SegmentationDataset
    work = str(tmp_path / 'w')
    train = os.path.join(tiny_voc['meta'], 'train_aug.txt')
    names = open(train).read().split()
    write_masks(tiny_voc, work, names)
    ds = SegmentationDataset(train, tiny_voc['root'], os.path.join(work, 'sem_seg'), 100, [0.5, 0.75], 'choice',
                             hor_flip=False, input_norm='caffe', seed=1)
    for i in range(4):
        s = ds[i]
        assert s['img'].shape == (3, 100, 100) and s['label'].shape == (100, 100) and s['img'].dtype == np.float32
        pad = s['label'] == 255
        assert pad.any()  # images of 50-90 px at 0.5/0.75 are padded at the bottom/right with 255 ...
        assert np.all(s['img'][:, pad] == 0)  # ... and with the mean colour (0 after normalisation)
        assert pad[-1].all() and pad[:, -1].all()
    assert all(np.array_equal(ds[i]['img'], ds[i]['img']) for i in range(2))  # a function of (seed, epoch, index)
    # bad masks: a value out of range names the id and the value; a missing mask names the id
    camio.write_label(os.path.join(work, 'sem_seg', names[0] + '.png'),
                      np.full(camio.read_label(os.path.join(work, 'sem_seg', names[0] + '.png')).shape, 33, np.uint8))
    with pytest.raises(ValueError, match=rf'pseudo mask of {names[0]} .*holds value 33'):
        ds[0]
    os.remove(os.path.join(work, 'sem_seg', names[1] + '.png'))
    with pytest.raises(FileNotFoundError, match=rf'no pseudo mask .*first: {names[1]}'):
        SegmentationDataset(train, tiny_voc['root'], os.path.join(work, 'sem_seg'), 100, [0.5, 2.0])
    with open(os.path.join(work, 'sem_seg', names[1] + '.png'), 'wb') as f:
        f.write(b'not a png')
    with pytest.raises(ValueError, match=rf'pseudo mask of {names[1]} cannot be read'):
        ds[1]


def test_export_voc_test_layout(tmp_path):
    seg = tmp_path / 'seg'
    rng = np.random.default_rng(0)
    sizes = {'2008_000001': (37, 50), '2008_000002': (60, 41)}
    for n, s in sizes.items():
        camio.write_label(str(seg / (n + '.png')), rng.integers(0, 21, s).astype(np.uint8))
    folder, tar_path = make_seg.export_voc_test(list(sizes), str(seg), str(tmp_path / 'exp'), 21)
    assert folder.endswith(os.path.join('results', 'VOC2012', 'Segmentation', 'comp6_test_cls'))
    for n, s in sizes.items():
        with Image.open(os.path.join(folder, n + '.png')) as im:
            assert im.mode == 'P' and im.size == (s[1], s[0])
            assert np.array_equal(np.asarray(im.getpalette()[:63], np.uint8), voc_palette()[:21].reshape(-1))
            np.testing.assert_array_equal(np.array(im), camio.read_label(str(seg / (n + '.png'))))
    with tarfile.open(tar_path) as t:
        assert sorted(t.getnames())[-2:] == [f'results/VOC2012/Segmentation/comp6_test_cls/{n}.png' for n in sorted(sizes)]
    camio.write_label(str(seg / '2008_000001.png'), np.full((3, 3), 21, np.uint8))
    with pytest.raises(ValueError, match='2008_000001: prediction holds class 21'):
        make_seg.export_voc_test(list(sizes), str(seg), str(tmp_path / 'exp'), 21)


def seg_args(tiny_voc, work, *extra):
    meta = tiny_voc['meta']
    return base_args(tiny_voc, work, '--seg_init', 'none', '--seg_depth', '50', '--seg_iters', '4',
                     '--seg_batch_size', '3', '--seg_crop_size', '64', '--seg_lr', '2.5e-5', '--seg_micro_batch', '2',
                     '--seg_infer_list', os.path.join(meta, 'val.txt'), '--seg_ckpt_freq', '2', *extra)


def test_train_make_eval_seg_end_to_end(tiny_voc, tmp_path):
    work = str(tmp_path / 'w')
    names = open(os.path.join(tiny_voc['meta'], 'train_aug.txt')).read().split()
    write_masks(tiny_voc, work, names)
    res = run_sample.main(seg_args(tiny_voc, work, '--train_seg_pass', 'True', '--make_seg_pass', 'True',
                                   '--eval_seg_pass', 'True'))
    assert res['train_seg']['steps'] == 4
    ck = torch.load(os.path.join(work, 'ckpt', camio.SEG_WEIGHTS), weights_only=True)
    assert ck['meta']['input_norm'] == 'caffe' and ck['meta']['depth'] == 50 and len(ck['net']) > 300
    curve = [json.loads(line) for line in open(os.path.join(work, 'metrics', 'train_seg_scalars.jsonl'))]
    assert [c['step'] for c in curve] == [1, 2, 3, 4] and all(np.isfinite(c['loss/seg']) for c in curve)
    val = open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()
    for n in val:
        with Image.open(os.path.join(tiny_voc['root'], 'JPEGImages', n + '.jpg')) as im:
            size = im.size[::-1]
        for d in ('seg', 'seg_nocrf'):
            p = camio.read_label(os.path.join(work, d, n + '.png'))
            assert p.shape == size and p.max() < 21
        assert Image.open(os.path.join(work, 'seg_palette', n + '.png')).mode == 'P'
    with Image.open(os.path.join(work, 'vis', 'eval_seg_per_class.png')) as im:  # the per-class bar chart
        assert im.size[0] > 300 and im.size[1] > 200
    m = json.load(open(os.path.join(work, 'metrics', 'eval_seg.json')))
    assert m['crf'] is True and 0 <= m['miou'] <= 1 and 0 <= m['miou_no_crf'] <= 1 and m['n_images'] == len(val)
    # re-running skips finished predictions and finished training
    again = run_sample.main(seg_args(tiny_voc, work, '--train_seg_pass', 'True', '--make_seg_pass', 'True'))
    assert again['make_seg']['computed'] == 0 and again['train_seg']['steps'] == 4


def test_train_seg_refuses_gt_and_checks_masks(tiny_voc, tmp_path):
    work = str(tmp_path / 'w')
    with pytest.raises(ValueError, match='ground truth'):
        run_sample.main(seg_args(tiny_voc, work, '--train_seg_pass', 'True', '--seg_label_dir',
                                 os.path.join(tiny_voc['root'], 'SegmentationClassAug')))
    names = open(os.path.join(tiny_voc['meta'], 'train_aug.txt')).read().split()
    write_masks(tiny_voc, work, names[1:])
    with pytest.raises(FileNotFoundError, match=rf'no pseudo mask in .*sem_seg \(first: {names[0]}\)'):
        run_sample.main(seg_args(tiny_voc, work, '--train_seg_pass', 'True'))


def test_make_seg_on_a_foreign_checkpoint_and_test_root(tiny_voc, tmp_path):
    """A deeplab-pytorch checkpoint ('base.' keys, no meta) is evaluated as it is; a test root without
    images for the list stops with the list and the first missing image."""
    work = str(tmp_path / 'w')
    torch.manual_seed(0)
    ck = str(tmp_path / 'deeplabv2_resnet50_msc-vocaug.pth')
    torch.save(deeplab.build(21, 50, 8, '1x1').state_dict(), ck)
    res = run_sample.main(seg_args(tiny_voc, work, '--make_seg_pass', 'True', '--seg_weights', ck, '--seg_crf', 'False',
                                   '--seg_test_scales', '1.0', '0.75', '--seg_test_flip', 'True',
                                   '--seg_export_voc_test', 'True'))
    assert res['make_seg']['computed'] == 6 and os.path.isfile(res['make_seg']['export'])
    assert not os.listdir(os.path.join(work, 'seg_nocrf'))
    # a fresh work dir without image-level labels: the data check of make_seg does not ask for them
    fresh = str(tmp_path / 'fresh')
    res = run_sample.main(seg_args(tiny_voc, fresh, '--make_seg_pass', 'True', '--seg_weights', ck, '--seg_crf', 'False',
                                   '--cls_labels', str(tmp_path / 'no_labels.npz')))
    assert res['make_seg']['computed'] == 6
    empty = tmp_path / 'VOC2012_test'
    (empty / 'JPEGImages').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r'ids of .*val\.txt have no image under .*VOC2012_test'):
        run_sample.main(seg_args(tiny_voc, str(tmp_path / 'w2'), '--make_seg_pass', 'True', '--seg_weights', ck,
                                 '--seg_infer_root', str(empty)))


def test_train_seg_resume_is_exact(tiny_voc, tmp_path, monkeypatch):
    from tests.test_resume import assert_same_weights, run_killed_at
    names = open(os.path.join(tiny_voc['meta'], 'train_aug.txt')).read().split()
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    for w in (full, part):
        write_masks(tiny_voc, w, names)
    common = ['--train_seg_pass', 'True', '--seg_iter_size', '2', '--seg_iters', '5']
    run_sample.main(seg_args(tiny_voc, full, *common))
    run_killed_at(monkeypatch, 3, seg_args(tiny_voc, part, *common))  # after the resume checkpoint of update 2
    assert torch.load(os.path.join(part, 'ckpt', camio.SEG_RESUME), weights_only=True)['step'] == 2
    run_sample.main(seg_args(tiny_voc, part, *common))
    assert_same_weights(os.path.join(full, 'ckpt', camio.SEG_WEIGHTS), os.path.join(part, 'ckpt', camio.SEG_WEIGHTS))
    from tests.test_resume import curve_without_timing
    lines = [curve_without_timing(os.path.join(w, 'metrics', 'train_seg_scalars.jsonl')) for w in (full, part)]
    assert lines[0] == lines[1] and len(lines[0]) == 5


@pytest.mark.parametrize('case', [0, 1])
def test_crf_inference_softmax_matches_deeplab_pytorch(fixture, case):
    """deeplab-pytorch's DenseCRF at its VOC settings (row 0) and another setting (row 1): marginals and argmax."""
    from misc.imutils import crf_inference_softmax
    z = fixture('deeplab_crf')
    img, prob = z[f'case{case}_image'], z[f'case{case}_prob']
    for j, (t, pos_w, pos_xy, bi_w, bi_xy, bi_rgb) in enumerate(z['params']):
        q = crf_inference_softmax(img, prob, t=int(t), pos_w=pos_w, pos_xy_std=pos_xy, bi_w=bi_w, bi_xy_std=bi_xy,
                                  bi_rgb_std=bi_rgb)
        ref = z[f'case{case}_param{j}_Q']
        assert q.dtype == np.float32 and q.shape == ref.shape
        np.testing.assert_allclose(q, ref, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(q.argmax(0), ref.argmax(0))
        assert (ref.argmax(0) != prob.argmax(0)).mean() > 0.05  # the CRF moved boundaries: not an identity check


def test_make_seg_crf_defaults_are_deeplab_pytorch_voc12(fixture):
    """make_seg's CRF flags default to the fixture's row 0, deeplab-pytorch configs/voc12.yaml."""
    z = fixture('deeplab_crf')
    a = run_sample.get_parser().parse_args([])
    p = make_seg.crf_params(a)
    assert [p[k] for k in ('t', 'pos_w', 'pos_xy_std', 'bi_w', 'bi_xy_std', 'bi_rgb_std')] == z['params'][0].tolist()


class _SizeProbe(torch.nn.Module):
    """A stand-in network whose logits are known by hand: channel c = c * mean(input) + width of the input + the
    column index times `ramp` (so that a flipped input, flipped back, is told apart)."""

    def __init__(self, classes=3, ramp=0.0):
        super().__init__()
        self.classes, self.ramp = classes, ramp

    def forward(self, x):
        n, _, h, w = x.shape
        c = torch.arange(self.classes, dtype=x.dtype).view(1, -1, 1, 1)
        col = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w)
        return c * x.mean(dim=(1, 2, 3)).view(n, 1, 1, 1) + w + self.ramp * col + torch.zeros(n, 1, h, 1)


def test_predict_logits_averages_scales_and_flip_by_hand():
    img = torch.full((1, 3, 20, 30), 2.0)  # constant image: every resize of it is exact
    size = (20, 30)
    # scales: logits of scale s are constant, c * 2 + floor(30 s); averaged over the scales
    out = make_seg.predict_logits(_SizeProbe(), img, size, scales=(1.0, 0.5, 0.75))
    widths = [30, 15, 22]  # floor(30 * s), as F.interpolate's scale_factor sizes it
    for c in range(3):
        np.testing.assert_allclose(out[c].numpy(), np.full(size, c * 2 + sum(widths) / 3), rtol=1e-6)
    # flip: the flipped image's logits are flipped back before averaging, so the column ramp j and its mirror
    # (w - 1 - j) average to (w - 1) / 2 everywhere; without the flip back the ramp would survive
    out = make_seg.predict_logits(_SizeProbe(ramp=1.0), img, size, scales=(1.0,), flip=True)
    np.testing.assert_allclose(out.numpy(), (np.arange(3) * 2 + 30 + 29 / 2)[:, None, None] * np.ones(size), rtol=1e-6)
    out = make_seg.predict_logits(_SizeProbe(ramp=1.0), img, size, scales=(1.0,), flip=False)
    np.testing.assert_allclose(out[0].numpy(), np.tile(30 + np.arange(30.0), (20, 1)), rtol=1e-6)
    # both: 2 scales x (image, flip) = 4 logits averaged
    out = make_seg.predict_logits(_SizeProbe(), img, size, scales=(1.0, 0.5), flip=True)
    np.testing.assert_allclose(out[2].numpy(), np.full(size, 4 + (30 + 30 + 15 + 15) / 4), rtol=1e-6)


def test_make_seg_crf_pool_gives_the_same_files_and_a_killed_run_only_complete_ones(tiny_voc, tmp_path):
    """The CRF in 2 worker processes beside the network writes the same bytes as inline (1 worker); a run killed
    (SIGKILL) after its 3rd image leaves only complete predictions, and its re-run completes the rest identically."""
    import subprocess
    import sys
    from misc.workpool import KILL_ENV
    torch.manual_seed(0)
    ck = str(tmp_path / 'deeplab.pth')
    model = deeplab.build(21, 50, 8, '1x1')
    torch.save({'net': model.state_dict(), 'meta': deeplab.checkpoint_meta(model, 'caffe')}, ck)
    works = {k: str(tmp_path / k) for k in ('inline', 'pool', 'killed')}
    for k in ('inline', 'pool'):
        run_sample.main(seg_args(tiny_voc, works[k], '--make_seg_pass', 'True', '--seg_weights', ck,
                                 '--seg_crf_workers', '1' if k == 'inline' else '2'))
    argv = seg_args(tiny_voc, works['killed'], '--make_seg_pass', 'True', '--seg_weights', ck, '--seg_crf_workers', '2')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, 'run_sample.py'), *argv], cwd=root, capture_output=True,
                         text=True, env=dict(os.environ, **{KILL_ENV: '3'}))
    assert out.returncode == -9, out.stderr[-2000:]
    left = sorted(os.listdir(os.path.join(works['killed'], 'seg')))
    assert len(left) <= 3 and all(f.endswith('.png') and not f.startswith('.') for f in left)
    for f in left:  # complete files only (temporary names are dot-files and never read)
        assert open(os.path.join(works['killed'], 'seg', f), 'rb').read() == \
            open(os.path.join(works['inline'], 'seg', f), 'rb').read()
    res = run_sample.main(argv)
    assert res['make_seg']['computed'] == 6 - len(left)
    names = open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()
    for d in ('seg', 'seg_palette', 'seg_nocrf'):
        for n in names:
            ref = open(os.path.join(works['inline'], d, n + '.png'), 'rb').read()
            for k in ('pool', 'killed'):
                assert open(os.path.join(works[k], d, n + '.png'), 'rb').read() == ref, (k, d, n)
