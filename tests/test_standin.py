"""The ImageNet stand-in: committed weights load through the ImageNet route strictly, the command that
made them reproduces its first steps, and the ablation runner works end to end."""
import hashlib
import json
import os
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import run_sample
from misc import camio
from net import resnet50
from step import train_seg
from tools import ablation, pretrain_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(ROOT, 'weights', 'standin')


@pytest.mark.parametrize('name', ['resnet50_w8', 'resnet101_w8'])
def test_committed_weights_match_their_provenance(name):
    rec = json.load(open(os.path.join(STANDIN, name + '.json')))
    with open(os.path.join(STANDIN, rec['file']), 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == rec['sha256']
    assert rec['command'].startswith('python -m tools.pretrain_backbone') and rec['seed'] == 0
    assert rec['val_top1'] > 5 / rec['classes'] and rec['bytes'] < 4 * 2 ** 20


def test_standin_loads_through_the_imagenet_route(tmp_path):
    path = os.path.join(STANDIN, 'resnet50_w8.pth')
    net = resnet50.resnet50(width=8, weights=path)  # --backbone_weights PATH: strict, fc dropped
    sd = torch.load(path, weights_only=True)
    assert torch.equal(net.layer4[2].conv3.weight, sd['layer4.2.conv3.weight'])
    bad = dict(sd)
    bad['layer2.1.conv2.weigth'] = bad.pop('layer2.1.conv2.weight')
    torch.save(bad, str(tmp_path / 'bad.pth'))
    with pytest.raises(ValueError, match=r'missing tensors.*layer2\.1\.conv2\.weight(.|\n)*unexpected.*weigth'):
        resnet50.resnet50(width=8, weights=str(tmp_path / 'bad.pth'))
    legacy = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}  # as resnet50-19c8e357.pth
    torch.save(legacy, str(tmp_path / 'legacy.pth'))
    resnet50.resnet50(width=8, weights=str(tmp_path / 'legacy.pth'))
    # the DeepLab stand-in goes through --seg_init PATH: torchvision layout, stride in the 3x3, RGB mean/std
    a = run_sample.get_parser().parse_args(['--seg_init', os.path.join(STANDIN, 'resnet101_w8.pth'),
                                            '--backbone_width', '8'])
    model, norm = train_seg.build_model(a, 21)
    assert norm == 'torchvision' and model.stride_in == '3x3' and model.depth == 101
    sd101 = torch.load(os.path.join(STANDIN, 'resnet101_w8.pth'), weights_only=True)
    assert torch.equal(model.base.layer4.block23.increase.conv.weight, sd101['layer3.22.conv3.weight'])


def test_pretraining_reproduces_its_first_steps():
    rec = json.load(open(os.path.join(STANDIN, 'resnet50_w8.json')))
    argv = shlex.split(rec['command'])[3:]
    argv = [x for i, x in enumerate(argv) if x != '--out_dir' and (i == 0 or argv[i - 1] != '--out_dir')]
    argv = [x for i, x in enumerate(argv) if x != '--nets' and (i == 0 or argv[i - 1] != '--nets')]
    a = pretrain_backbone.get_parser().parse_args(argv + ['--max_steps', '3'])
    assert a.seed == rec['seed'] and a.threads == rec['settings']['threads']
    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)  # as the committed run
    try:
        runs = [pretrain_backbone.train('resnet50', a, log=lambda *_: None) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    for k, v in runs[0][0].state_dict().items():  # bit for bit, twice
        assert torch.equal(v, runs[1][0].state_dict()[k]), k
    assert runs[0][1]['first_losses'] == runs[1][1]['first_losses']
    # and the committed file's first steps (recorded when it was made) to float32 rounding
    np.testing.assert_allclose(runs[0][1]['first_losses'], rec['first_losses'][:3], rtol=1e-5)


def test_generated_classes_are_balanced_and_deterministic():
    a, b = pretrain_backbone.make_image(0, 77, 64, 12), pretrain_backbone.make_image(0, 77, 64, 12)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] == 77 % 72
    labels = [pretrain_backbone.make_image(0, i, 32, 12)[1] for i in range(144)]
    assert np.bincount(labels).tolist() == [2] * 72


def test_wide_vocabulary_adds_three_textures_and_light():
    wide = pretrain_backbone.VOCABULARIES['wide']
    assert wide[:6] == pretrain_backbone.TEXTURES and len(wide) == 9
    a, b = (pretrain_backbone.make_image(0, 77, 64, 12, wide) for _ in range(2))
    assert np.array_equal(a[0], b[0]) and a[1] == 77 % 108
    labels = [pretrain_backbone.make_image(0, i, 32, 12, wide)[1] for i in range(216)]
    assert np.bincount(labels).tolist() == [2] * 108
    # the new textures: blotches are smooth (neighbours agree far more often than grain's), rings are patterns
    args = (64, 64, 8, 0.5, np.array([3, 4]))
    tex = {k: pretrain_backbone.texture(k, *args) for k in ('blotches', 'grain', 'rings', 'solid')}
    agree = {k: float(np.mean(np.abs(np.diff(t, axis=1)) < 1e-6)) for k, t in tex.items()}
    assert agree['blotches'] > 0.85 and agree['grain'] < 0.05 and 0.7 < agree['rings'] < 0.97, agree
    assert set(np.unique(tex['blotches'])) == set(np.unique(tex['rings'])) == {np.float32(0.5), np.float32(1.0)}
    assert np.array_equal(tex['blotches'], pretrain_backbone.texture('blotches', *args))  # seeded by the phase
    light = pretrain_backbone.shading(np.random.default_rng(0), 64, 64)
    assert abs(light.min() - 0.65) < 1e-6 and abs(light.max() - 1.25) < 1e-6


def flag_dict(tokens):
    """{--flag: value} of a command's tokens (a flag followed by one value)."""
    return {t: tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t.startswith('--')}


def test_demo_recipe_and_ablation_defaults_agree():
    """The ablation's default rows train SFC exactly as run_demo.sh does (and its quick recipe as --quick), on the same
    generated data."""
    text = open(os.path.join(ROOT, 'run_demo.sh')).read().replace('$STANDIN', 'weights/standin')
    quick = text.split('if [ "$QUICK" = True ]; then')[1]
    main = quick[quick.index('\nfi\n'):quick.index('if [ -n "${DATA:-}" ]')]  # the demo's values follow the
    # quick ones (which, when set, win)
    quick = quick[:quick.index('\nfi\n')]

    def values(part):
        env = {m.group(1): m.group(2).strip('"')
               for m in re.finditer(r'([A-Z_]+)=("[^"]*"|\$\{[^}]*\}|[^\s;]+)', part)}
        return {k: (re.fullmatch(r'\$\{\w+:-(.*)\}', v).group(1) if v.startswith('${') else v) for k, v in env.items()}
    env_main = values(main)
    block = text[text.index('# 1. SFC'):text.index('--train_sfc_pass True')]
    for recipe, env in (('demo', env_main), ('quick', {**env_main, **values(quick)})):
        line = re.sub(r'"?\$\{?(\w+)\}?"?', lambda m: env.get(m.group(1), m.group(0)),
                      ' '.join(x.rstrip('\\') for x in block.splitlines()[1:]))
        demo = flag_dict(shlex.split(line))
        common = flag_dict(shlex.split(re.search(r'COMMON=\((.*?)\)', text, re.S).group(1).replace('\\\n', ' ')))
        demo.update({k: v for k, v in common.items() if k.startswith('--backbone')})
        flags, data = ablation.RECIPES[recipe]
        ours = flag_dict(flags)
        assert set(ours) <= set(demo) and {k: v for k, v in demo.items() if k in ours} == ours, recipe
        lo, hi = env['SIZE'].split()
        assert (data['min_size'], data['max_size'], data['n_train'], data['n_val'], data['n_aug']) == \
            (int(lo), int(hi), int(env['N_TRAIN']), int(env['N_VAL']), int(env['N_AUG'])), recipe


@pytest.mark.parametrize('quick, full', [('False', 'False'), ('False', 'True'), ('True', 'False')])
def test_stage_study_reads_the_settings_bash_gives(quick, full):
    """tools.stage_study passes the demo's settings to run_coco.sh and its oracles: each must be what bash itself sets
    in run_demo.sh (the demo's value, not the --quick block's, which comes first in the file; with --full, the --full
    block's where it sets one)."""
    import subprocess
    from tools import stage_study
    names = sorted({f for f in stage_study.COCO_DEMO if f.isupper()} | {'SEG_CROP', 'SIZE', 'SEG_ITERS'})
    script = (f'QUICK={quick}; FULL={full}; eval "$(sed -n \'/^if \\[ "\\$QUICK" = True/,/^if \\[ -n "\\${{DATA/p\' '
              f'run_demo.sh | head -n -1)"; ' + '; '.join(f'echo "${n}"' for n in names))
    out = subprocess.run(['bash', '-c', script], cwd=ROOT, capture_output=True, text=True, env={'PATH': os.environ['PATH']},
                         check=True).stdout.splitlines()
    assert len(out) == len(names) and all(out), out
    bash = dict(zip(names, out))
    ours = {n: stage_study.demo_setting(n, full == 'True') for n in names}
    if quick == 'False':
        assert ours == bash
    else:  # the quick block's values differ from the demo's, so the comparison above can fail
        assert {n for n in names if ours[n] != bash[n]} >= {'SFC_EPOCHS', 'SEG_ITERS', 'SEG_LR'}
    if full == 'True':  # --full gives DeepLab more updates than the demo
        assert int(ours['SEG_ITERS']) > int(stage_study.demo_setting('SEG_ITERS'))


def test_ablation_runner_end_to_end(tiny_voc, tmp_path, capsys):
    work = str(tmp_path / 'abl')
    small = ['--backbone_weights', 'none', '--backbone_width', '8', '--sfc_crop_size', '64', '--sfc_batch_size', '2',
             '--sfc_num_epoches', '1', '--sfc_lr', '0.01', '--sfc_dc_offset', 'auto', '--sfc_select_on_gt', 'False',
             '--sfc_bank_samples', '2', '--cam_scales', '1.0', '--run_log', 'False', '--check_data', 'False']
    argv = ['--voc12_root', tiny_voc['root'], '--meta_dir', tiny_voc['meta'], '--work_dir', work, '--rows', 'plain',
            'sfc', '--seeds', '1', '--recipe', 'none', '--device', 'cpu', '--num_workers', '0', '--', *small]
    out = ablation.main(argv)
    table = capsys.readouterr().out
    assert 'plain CAM' in table and 'full SFC (DC weights)' in table and 'tail IoU (cam)' in table
    m = json.load(open(os.path.join(work, 'metrics', 'ablation.json')))
    assert set(m['rows']) == {'plain', 'sfc'} and m['seeds'] == [1]
    for r in m['rows'].values():
        assert 0 <= r['miou_cam']['mean'] <= 1 and 0 <= r['to_other_fg']['mean'] <= 1
        assert len(r['iou_per_class']) == 21
    sd = torch.load(os.path.join(work, 'runs', 'plain_s1', 'ckpt', camio.SFC_RESUME), weights_only=True)
    assert sd['bank'] is None  # the plain row trains without the image bank
    with Image.open(os.path.join(work, 'vis', 'ablation_gain.png')) as im:
        assert im.size[0] > 300 and im.size[1] > 200
    for run in ('plain_s1', 'sfc_s1'):  # every eval step draws its per-class chart
        with Image.open(os.path.join(work, 'runs', run, 'vis', 'eval_cam_per_class.png')) as im:
            assert im.size[0] > 300
    again = ablation.main(argv)  # finished rows are reused, not retrained
    assert set(again['seconds'].values()) == {0.0} and again['rows']['sfc']['miou_cam'] == out['rows']['sfc']['miou_cam']


def test_second_synthetic_set_is_built_differently(tmp_path):
    from voc12 import synthetic
    a, b = synthetic.variant_style('a'), synthetic.variant_style('b')
    assert max(b[0], key=b[0].get) != max(a[0], key=a[0].get)  # another head class
    assert set(b[1].items()).isdisjoint(a[1].items()) and len(b[1]) == 6  # other tail/head pairs
    assert all(b[3][t][0] == b[3][h][0] and b[3][t][1] != b[3][h][1] for t, h in b[1].items())  # colour shared
    assert len(set(b[3].values())) == 20 and b[3] != a[3]
    ids = synthetic.make_synthetic_voc(str(tmp_path / 'b'), 3, 2, 1, seed=0, min_size=40, max_size=60, variant='b')
    again = synthetic.make_synthetic_voc(str(tmp_path / 'b2'), 3, 2, 1, seed=0, min_size=40, max_size=60, variant='b')
    assert ids == again
    for n in ids['train']:
        assert (tmp_path / 'b' / 'JPEGImages' / f'{n}.jpg').read_bytes() == \
            (tmp_path / 'b2' / 'JPEGImages' / f'{n}.jpg').read_bytes()


def test_set_d_is_built_differently(tmp_path):
    """Variant d: another head class, pairs that share a texture and differ in colour (a, b, c: one colour, two
    textures), every appearance its own, several objects per image; generation is deterministic and the classes the
    Annotations name are those of the GT mask."""
    import xml.etree.ElementTree as ET

    import cv2
    import numpy as np
    from PIL import Image

    from voc12 import synthetic
    from voc12.dataloader import CAT_LIST
    a, d = synthetic.variant_style('a'), synthetic.variant_style('d')
    assert d[4] == 'blobs' and max(d[0], key=d[0].get) != max(a[0], key=a[0].get) and len(d[1]) == 6
    assert set(d[1].items()).isdisjoint(a[1].items())
    for t, h in d[1].items():
        assert d[3][t][1] == d[3][h][1] and 20 < np.abs(np.subtract(d[3][t][0], d[3][h][0])).max() < 120, (t, h)
    assert len(set(d[3].values())) == 20
    root = tmp_path / 'd'
    ids = synthetic.make_synthetic_voc(str(root), 8, 2, 0, seed=0, min_size=160, max_size=240, variant='d')
    again = synthetic.make_synthetic_voc(str(tmp_path / 'd2'), 8, 2, 0, seed=0, min_size=160, max_size=240, variant='d')
    assert ids == again
    blobs = 0
    for n in ids['train'] + ids['val']:
        jpg = ('JPEGImages', f'{n}.jpg')
        assert root.joinpath(*jpg).read_bytes() == (tmp_path / 'd2').joinpath(*jpg).read_bytes()
        names = {o.find('name').text for o in ET.parse(root / 'Annotations' / f'{n}.xml').getroot().iter('object')}
        gt = np.asarray(Image.open(root / 'SegmentationClassAug' / f'{n}.png'))
        assert {CAT_LIST[c - 1] for c in np.unique(gt) if c} == names
        blobs += cv2.connectedComponents((gt > 0).astype(np.uint8))[0] - 1
    assert blobs >= 15  # several objects per image (variant a: mostly one or two)
