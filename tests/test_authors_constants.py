"""One table of the constants of the method with their sources, against run_sample.py's defaults and the values the
recipes (run_voc.sh, run_coco.sh) pass.

Sources: SFC = the authors' release (github.com/Barrett-python/SFC, branch Barrett-python-patch-1), SIPE = the
modules it takes from github.com/chenqi1126/SIPE, dlp = kazuto1011/deeplab-pytorch (configs/voc12.yaml, main.py),
which the SFC authors point to for the last stage. A flag of run_sample.py is either a constant of the method (in
AUTHORS) or a choice of this project that changes no result of the method (in OURS, with why); a new flag must be
put in one of them.
"""
import os
import re
import shlex

import pytest

import run_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

AUTHORS = {
    # SFC training
    'seed': (10, 'SFC/train_resnet50_SFC.py:99'),
    'sfc_batch_size': (16, 'SFC/train_resnet50_SFC.py:86'),
    'sfc_num_epoches': (6, 'SFC/train_resnet50_SFC.py:87'),
    'sfc_lr': (0.1, 'SFC/train_resnet50_SFC.py:89'),
    'sfc_new_layer_lr_mult': (10.0, 'SFC/train_resnet50_SFC.py:123-126 (lr 10x for classifier, f9, side1-4)'),
    'sfc_weight_decay': (1e-4, 'SFC/train_resnet50_SFC.py:91'),
    'sfc_momentum': (1e-4, 'SIPE/tool/torchutils.py:14 (weight decay passed positionally as momentum)'),
    'sfc_poly_power': (0.9, "SIPE/tool/torchutils.py:13, :26 (the 'momentum=0.9' is the poly power)"),
    'sfc_grad_clip': (1.0, 'SFC/train_resnet50_SFC.py:260'),
    'sfc_crop_size': (512, 'SFC/train_resnet50_SFC.py:115 (hard-coded)'),
    'sfc_resize_long_aug': (False, "resize-long commented out in the authors' branch data module"),
    'sfc_resize_long': ([320, 640], 'SFC/train_resnet50_SFC.py:114'),
    'sfc_hor_flip': (False, "flip commented out in the authors' branch data module"),
    'sfc_half_scale': (0.5, 'SFC/train_resnet50_SFC.py:143, :170'),
    'sfc_bank_samples': (4, 'SFC/train_resnet50_SFC.py:158-168'),
    'sfc_pdw_weight': (1.6, 'SFC/train_resnet50_SFC.py:225'),
    'sfc_wdw_weight': (0.8, 'SFC/train_resnet50_SFC.py:254'),
    'sfc_proto_bg_factor': (0.3, 'SFC/network/resnet50_SFC.py:49'),
    'sfc_dc_offset': ('396', 'SFC/train_resnet50_SFC.py:198 (660*4*3/20)'),
    'sfc_ibr': (True, 'the method: image bank re-sampling on'),
    'sfc_pdw': (True, 'the method: L_PDW on'),
    'sfc_wdw': (True, 'the method: L_WDW on'),
    'sfc_dc_weights': (True, 'the method: distribution-calibrating weights on'),
    'sfc_select_on_gt': (True, 'SFC/train_resnet50_SFC.py:299-304 (best.pth chosen on train pixel GT)'),
    'sfc_val_freq': (300, 'SFC/train_resnet50_SFC.py:96'),
    'sfc_val_min_step': (10, 'SFC/train_resnet50_SFC.py:299 (g > 10)'),
    'sfc_print_freq': (10, 'SFC/train_resnet50_SFC.py:94'),
    'backbone_weights': ('imagenet', 'SFC/network/resnet50.py:6, :110-118 (torchvision resnet50-19c8e357.pth)'),
    'backbone_width': (64, 'ResNet-50 (SFC/network/resnet50.py)'),
    # make_cam / eval_cam
    'cam_scales': ([1.0, 0.5, 1.5, 2.0], 'SFC/make_cam.py:118'),
    'cam_bg_offset': (0.4, "SFC/make_cam.py:63, :74 (the 'pad 0.4' line)"),
    'cam_fg_scale': (2.0, 'SFC/make_cam.py:63, :74 (the same line doubles the foreground)'),
    'cam_norm_eps': (1e-5, 'SFC/make_cam.py:61, :73'),
    'cam_eval_source': (['proto_cam'], 'SFC/eval_cam.py:20 (IS_CAM)'),
    'cam_eval_fuse_weight': (0.3, 'SFC/make_cam.py:81 (the commented final_cam)'),
    # cam_to_ir_label
    'ir_proto_weight': (0.7, 'SFC/cam2ir.py:26'),
    'ir_bg_factor': (0.5, 'SFC/cam2ir.py:35'),
    'ir_crf_iters': (12, "the authors' branch tool/imutils.py (SIPE/tool/imutils.py:156 has 10)"),
    'ir_crf_gt_prob': (0.7, 'SIPE/tool/imutils.py:156'),
    'ir_crf_gauss_sxy': (3, 'SIPE/tool/imutils.py:165'),
    'ir_crf_gauss_compat': (3, 'SIPE/tool/imutils.py:165'),
    'ir_crf_bi_sxy': (50, 'SIPE/tool/imutils.py:166'),
    'ir_crf_bi_srgb': (5, 'SIPE/tool/imutils.py:166'),
    'ir_crf_bi_compat': (10, 'SIPE/tool/imutils.py:166'),
    # train_irn
    'irn_crop_size': (512, 'SFC/train_irn.py:126'),
    'irn_batch_size': (32, 'SFC/train_irn.py:127'),
    'irn_num_epoches': (3, 'SFC/train_irn.py:128'),
    'irn_lr': (0.1, 'SFC/train_irn.py:129'),
    'irn_dp_lr_mult': (10.0, 'SFC/train_irn.py:36-37 (displacement branch lr 1.0)'),
    'irn_weight_decay': (1e-4, 'SFC/train_irn.py:130'),
    'irn_momentum': (1e-4, 'SIPE/tool/torchutils.py:14 (the same positional-momentum quirk)'),
    'irn_poly_power': (0.9, 'SIPE/tool/torchutils.py:13, :26'),
    'irn_rescale': ([0.5, 1.0], 'SFC/train_irn.py:27 passes (0.5, 1.0, 1.5); SIPE/tool/imutils.py:36-41 reads two'),
    'irn_hor_flip': (True, 'SFC/train_irn.py:27'),
    'irn_radius': (10, 'SFC/train_irn.py:15'),
    'irn_print_freq': (10, 'SFC/train_irn.py (print every 10 steps)'),
    'irn_dp_mean': (True, 'SFC/train_irn.py:89-110'),
    'irn_crop_size_infer': (512, 'SFC/network/resnet50_irn.py:218 (EdgeDisplacement crop_size)'),
    # make_sem_seg
    'sem_seg_proto_weight': (0.3, 'SFC/make_seg_labels.py:45'),
    'sem_seg_power': (1.3, 'SFC/make_seg_labels.py:49'),
    'sem_seg_double_power': (True, 'SFC/make_seg_labels.py:56-57 (the power applied again: F^1.69)'),
    'sem_seg_bg_value': (0.25, 'SFC/make_seg_labels.py:54'),
    'beta': (10, 'SFC/make_seg_labels.py:87'),
    'exp_times': (8, 'SFC/make_seg_labels.py:88'),
    'sem_seg_radius': (5, 'SFC/make_seg_labels.py:51, :59'),
    # the segmentation model (deeplab-pytorch, which the SFC README points to)
    'seg_depth': (101, 'dlp libs/models/deeplabv2.py (DeepLabV2_ResNet101_MSC)'),
    'seg_lr': (2.5e-4, 'dlp configs/voc12.yaml SOLVER.LR'),
    'seg_head_lr_mult': (10.0, 'dlp main.py get_params (ASPP weights 10x)'),
    'seg_head_bias_lr_mult': (20.0, 'dlp main.py get_params (ASPP biases 20x, no weight decay)'),
    'seg_momentum': (0.9, 'dlp configs/voc12.yaml SOLVER.MOMENTUM'),
    'seg_weight_decay': (5e-4, 'dlp configs/voc12.yaml SOLVER.WEIGHT_DECAY'),
    'seg_poly_power': (0.9, 'dlp configs/voc12.yaml SOLVER.POLY_POWER'),
    'seg_lr_decay_every': (10, 'dlp configs/voc12.yaml SOLVER.LR_DECAY'),
    'seg_crop_size': (321, 'dlp configs/voc12.yaml IMAGE.SIZE.TRAIN'),
    'seg_base_size': (0, 'dlp configs/voc12.yaml IMAGE.SIZE.BASE (none)'),
    'seg_hor_flip': (True, 'dlp libs/datasets/base.py (flip p = 0.5)'),
    'seg_msc_scales': ([0.5, 0.75], 'dlp libs/models/msc.py'),
    'seg_aspp_rates': ([6, 12, 18, 24], 'dlp libs/models/deeplabv2.py'),
    'seg_test_scales': ([1.0], 'dlp main.py test (the image only)'),
    'seg_test_flip': (False, 'dlp main.py test (no flip)'),
    'seg_crf': (True, 'dlp main.py crf'),
    'seg_crf_iters': (10, 'dlp configs/voc12.yaml CRF.ITER_MAX'),
    'seg_crf_pos_w': (3, 'dlp configs/voc12.yaml CRF.POS_W'),
    'seg_crf_pos_xy_std': (1, 'dlp configs/voc12.yaml CRF.POS_XY_STD'),
    'seg_crf_bi_w': (4, 'dlp configs/voc12.yaml CRF.BI_W'),
    'seg_crf_bi_xy_std': (67, 'dlp configs/voc12.yaml CRF.BI_XY_STD'),
    'seg_crf_bi_rgb_std': (3, 'dlp configs/voc12.yaml CRF.BI_RGB_STD'),
    'seg_recipe': ('imagenet', "the paper's ImageNet-initialised DeepLab-v2 (recipes below)"),
}

# The two training recipes of the segmentation model (run_sample.SEG_RECIPES), with their sources.
SEG_RECIPES = {
    'imagenet': ({'seg_init': 'imagenet', 'seg_batch_size': 10, 'seg_iter_size': 1, 'seg_iters': 30000,
                  'seg_scales': [0.5, 2.0], 'seg_scale_mode': 'uniform', 'seg_loss': 'balanced'},
                 'ImageNet init as users of AdvCAM (#9), ReCAM (#16) and CLIMS (voc12_imagenet_pretrained.yaml, '
                 'main_v2.py criterion_balance) were told'),
    'deeplab_coco': ({'seg_init': None, 'seg_batch_size': 5, 'seg_iter_size': 2, 'seg_iters': 20000,
                      'seg_scales': [0.5, 0.75, 1.0, 1.25, 1.5], 'seg_scale_mode': 'choice', 'seg_loss': 'ce'},
                     'dlp configs/voc12.yaml: BATCH_SIZE.TRAIN 5, ITER_SIZE 2, ITER_MAX 20000, SCALES, '
                     'CrossEntropyLoss(ignore_index=255)'),
}

OURS = {
    'dataset': 'which dataset layout (voc12 or coco14)',
    'voc12_root': 'a path', 'coco14_root': 'a path', 'work_dir': 'a path',
    'train_list': 'a path', 'infer_list': 'a path', 'eval_list': 'a path', 'cls_labels': 'a path',
    'sfc_val_list': 'a path', 'sfc_weights': 'a path', 'irn_weights': 'a path', 'irn_dp_mean_list': 'a path',
    'seg_train_list': 'a path', 'seg_label_dir': 'a path', 'seg_weights': 'a path', 'seg_infer_list': 'a path',
    'seg_infer_root': 'a path', 'seg_eval_list': 'a path',
    'device': 'where it runs', 'num_workers': 'loader processes (no effect on results)',
    'deterministic': 'CUDA determinism', 'redo': 'provenance: which steps to remake', 'amp': "precision; the default 'none' is the authors' float32",
    'channels_last': 'memory layout', 'log': 'run.log', 'tensorboard': 'curves', 'traceback': 'error display',
    'check_data': 'a check before the steps', 'plan': 'a cost estimate instead of the run',
    'ir_crf_workers': 'CRF processes (no effect on results)', 'seg_crf_workers': 'CRF processes (no effect on results)',
    'sfc_micro_batch': 'exact micro-batches: the same gradients with less memory',
    'irn_micro_batch': 'exact micro-batches', 'seg_micro_batch': 'exact micro-batches',
    'sfc_ckpt_freq': 'resume checkpoints', 'irn_ckpt_freq': 'resume checkpoints', 'seg_ckpt_freq': 'resume checkpoints',
    'sfc_resume': 'resume', 'irn_resume': 'resume', 'seg_resume': 'resume',
    'sfc_calibrate_bn': 'random initialisation only (the authors always start from ImageNet)',
    'sfc_zero_init_residual': 'random initialisation only', 'irn_calibrate_bn': 'random initialisation only',
    'seg_calibrate_bn': 'random initialisation only',
    'cam_fold_bn': 'an opt-in speed-up, off by default', 'cam_skip_existing': 'resume', 'ir_skip_existing': 'resume',
    'sem_seg_skip_existing': 'resume', 'seg_skip_existing': 'resume',
    'cam_vis_count': 'pictures', 'seg_print_freq': 'logging', 'cam_eval_sweep': 'an extra evaluation',
    'cam_sweep_thresholds': 'values of the extra evaluation', 'cam_sweep_offsets': 'values of the extra evaluation',
    'eval_masks': "which masks eval_sem_seg scores (sem_seg, the authors' VOC masks, by default)",
    'seg_init': 'set by --seg_recipe (SEG_RECIPES)', 'seg_batch_size': 'set by --seg_recipe',
    'seg_iter_size': 'set by --seg_recipe', 'seg_iters': 'set by --seg_recipe', 'seg_scales': 'set by --seg_recipe',
    'seg_scale_mode': 'set by --seg_recipe', 'seg_loss': 'set by --seg_recipe',
    'seg_stride_in': 'follows the init file (auto)', 'seg_input_norm': 'follows the init file (auto)',
    'seg_export_voc_test': 'an extra output',
}

# Values a recipe passes that differ from AUTHORS on purpose.
RECIPE_DIFFERENCES = {
    ('run_coco.sh', 'seed'): (15, "SIPE's COCO branch (SIPE/train_resnet50_SIPE.py:103-116); SFC has no COCO script"),
    ('run_coco.sh', 'sfc_num_epoches'): (5, "SIPE's COCO schedule"),
    ('run_coco.sh', 'sfc_dc_offset'): ('auto', "396 is VOC's (660 steps x 4 x 3 / 20); COCO: the same expression"),
    ('run_coco.sh', 'sfc_select_on_gt'): (False, 'the authors never validated on COCO'),
    ('run_coco.sh', 'cam_eval_source'): (['proto_cam', 'cam', 'fused'], 'every CAM scored; proto_cam first'),
    ('run_voc.sh', 'cam_eval_source'): (['proto_cam', 'cam', 'fused'], 'every CAM scored; proto_cam first'),
    ('run_coco.sh', 'seg_iters'): (100000, 'COCO with ImageNet init (LPCAM #3/#4): 100k iterations'),
    ('run_coco.sh', 'seg_lr'): (2e-4, 'COCO with ImageNet init (LPCAM #3/#4): lr 2e-4'),
    ('run_coco.sh', 'seg_loss'): ('balanced', 'the imagenet recipe\'s loss, stated in the recipe'),
}


def test_every_flag_is_classified():
    dests = {a.dest for a in run_sample.get_parser()._actions if a.dest != 'help' and not a.dest.endswith('_pass')}
    assert not set(AUTHORS) & set(OURS)
    unclassified = sorted(dests - set(AUTHORS) - set(OURS))
    assert not unclassified, f'flags neither in AUTHORS nor in OURS: {unclassified}'
    assert not (set(AUTHORS) | set(OURS)) - dests, 'the table names flags run_sample.py no longer has'


@pytest.mark.parametrize('flag', sorted(AUTHORS))
def test_default_is_the_authors(flag):
    value, source = AUTHORS[flag]
    assert getattr(run_sample.get_parser().parse_args([]), flag) == value, f'--{flag}: the authors have {value} ({source})'


def test_seg_recipes_are_the_communitys():
    assert set(run_sample.SEG_RECIPES) == set(SEG_RECIPES)
    for name, (values, source) in SEG_RECIPES.items():
        assert run_sample.SEG_RECIPES[name] == values, f'--seg_recipe {name}: {source}'


def recipe_calls(script):
    """The run_sample.py arguments of every sfc_run call in a recipe, with the recipe's own variable values
    (defaults of ${VAR:-...}) substituted, parsed by run_sample's parser: [(flags given, parsed namespace)]."""
    text = open(os.path.join(ROOT, script), encoding='utf-8').read().replace('\\\n', ' ')
    env = {}
    for m in re.finditer(r'^([A-Z0-9_]+)=("[^"]*"|\S+)', text, re.M):
        v = m.group(2).strip('"')
        d = re.fullmatch(r'\$\{\w+:-(.*)\}', v)
        env[m.group(1)] = d.group(1) if d else v
    calls = []
    for line in text.splitlines():
        if not line.lstrip().startswith('sfc_run'):
            continue
        # arrays the recipes fill at run time: the COCO refinement choice, and the segmentation recipe's values that
        # the user set (empty by default: the recipe named by --seg_recipe decides, tests/test_recipes.py)
        line = line.replace('"${REFINE[@]}"', '').replace('"${SEG_OWN[@]}"', '').replace('"$@"', '')
        line = re.sub(r'\$\{?(\w+)\}?', lambda m: env.get(m.group(1), m.group(0)), line)
        tokens = shlex.split(line)[1:]
        given = [t[2:] for t in tokens if t.startswith('--')]
        calls.append((given, run_sample.get_parser().parse_args(tokens)))
    assert calls, f'no sfc_run call found in {script}'
    return calls


@pytest.mark.parametrize('script', ['run_voc.sh', 'run_coco.sh'])
def test_recipe_values_are_the_authors_or_listed_differences(script):
    for given, args in recipe_calls(script):
        for flag in given:
            if flag in ('dataset', 'train_cam_pass') or flag.endswith('_pass'):
                continue
            value = getattr(args, flag)
            if (script, flag) in RECIPE_DIFFERENCES:
                want, why = RECIPE_DIFFERENCES[(script, flag)]
                assert value == want, f'{script} --{flag} {value}: the listed difference is {want} ({why})'
            elif flag in AUTHORS:
                want, source = AUTHORS[flag]
                assert value == want, f'{script} passes --{flag} {value}; the authors have {want} ({source})'
            else:
                assert flag in OURS, f'{script} passes --{flag}, which the table does not know'


def test_recipe_parser_sees_the_values():
    """The parser of the recipes reads what the scripts say (a change of SFC_LR in run_voc.sh would be seen)."""
    (given, args), *_ = recipe_calls('run_voc.sh')
    assert args.sfc_lr == 0.1 and args.exp_times == 8 and args.cam_scales == [1.0, 0.5, 1.5, 2.0]
    assert {'sfc_lr', 'irn_rescale', 'seg_lr', 'seg_recipe', 'beta'} <= set(given)
    (given, args), = recipe_calls('run_coco.sh')
    assert args.dataset == 'coco14' and args.seed == 15 and args.sfc_num_epoches == 5
