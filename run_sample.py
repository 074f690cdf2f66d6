"""SFC pipeline orchestrator: one parser, typed flags grouped by step, `--<step>_pass True` runs step/<step>.py.

    python run_sample.py --voc12_root VOCdevkit/VOC2012 --work_dir work/voc --train_sfc_pass True ...

Defaults are the authors' (their release of SFC, with IRN and SIPE for the parts it reuses); each flag names
where its number comes from (file:line in the authors' code). docs/faithfulness.md lists every quirk kept. Every output goes below --work_dir (layout in misc/camio.py).
"""
import argparse
import contextlib
import importlib
import os
import sys
import time

from misc import camio, distributed
from misc.errors import BadInput
from misc.pyutils import Tee, format_seconds, format_table, str2bool
from misc.torchutils import environment_line, settings_line

STEPS = ('train_sfc', 'make_cam', 'eval_cam', 'cam_to_ir_label', 'train_irn', 'make_sem_seg', 'eval_sem_seg',
         'train_seg', 'make_seg', 'eval_seg')
EVAL_STEPS = ('eval_cam', 'eval_sem_seg', 'eval_seg')  # run once, on rank 0, after the ranks' outputs are written
PASS_ALIASES = {'train_cam': 'train_sfc'}  # IRN-style name accepted for SFC training
# (train/infer list, eval list, segmentation-model val list) under work_dir/meta, as the dataset's
# make_cls_labels writes them (docs/faithfulness §1.2, §9; docs/deeplab.md)
DEFAULT_LISTS = {'voc12': ('train_aug.txt', 'train.txt', 'val.txt'),
                 'coco14': ('train2014.txt', 'train2014.txt', 'val2014.txt')}
# The segmentation stage's two recipes (docs/deeplab.md). A flag given on the command line overrides its recipe value.
SEG_RECIPES = {
    # ImageNet init, the SFC paper's setting, with the values the community settled on for it
    # (AdvCAM #9, ReCAM #16, CLIMS voc12_imagenet_pretrained.yaml / main_v2.py criterion_balance)
    'imagenet': {'seg_init': 'imagenet', 'seg_batch_size': 10, 'seg_iter_size': 1, 'seg_iters': 30000,
                 'seg_scales': [0.5, 2.0], 'seg_scale_mode': 'uniform', 'seg_loss': 'balanced'},
    # deeplab-pytorch configs/voc12.yaml exactly: COCO-pretrained init, BATCH_SIZE.TRAIN 5 x ITER_SIZE 2,
    # ITER_MAX 20000, SCALES [0.5, 0.75, 1.0, 1.25, 1.5], nn.CrossEntropyLoss(ignore_index=255)
    # (the init is that repository's deeplabv1_resnet101-coco.pth: pass its path with --seg_init)
    'deeplab_coco': {'seg_init': None, 'seg_batch_size': 5, 'seg_iter_size': 2, 'seg_iters': 20000,
                     'seg_scales': [0.5, 0.75, 1.0, 1.25, 1.5], 'seg_scale_mode': 'choice', 'seg_loss': 'ce'},
}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument_group('Environment')
    a.add_argument('--dataset', default='voc12', choices=('voc12', 'coco14'))
    a.add_argument('--voc12_root', default=None, type=str, help='VOC2012 folder (JPEGImages/, SegmentationClass/, ...)')
    a.add_argument('--coco14_root', default=None, type=str,
                   help='COCO 2014 folder (train2014/, val2014/, annotations/, SegmentationClass/ from coco14.make_cls_labels)')
    a.add_argument('--work_dir', default='work/voc', type=str, help='every output goes below this folder')
    a.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    a.add_argument('--num_workers', default=None, type=int,
                   help='data-loading workers per process (default: half of this process\'s share of the cores, the '
                        'cores split over the torchrun ranks of the machine; the authors: cpu_count//2 for inference, '
                        '8 for training)')
    a.add_argument('--seed', default=10, type=int, help='seeds every stage (SFC/train_resnet50_SFC.py:99)')
    a.add_argument('--deterministic', default=False, type=str2bool,
                   help="CUDA: deterministic cuDNN convolutions and PyTorch's deterministic algorithms wherever one "
                        'exists (docs/precision.md says what is then bit-identical); the CPU is deterministic anyway')
    a.add_argument('--amp', default='none', choices=('none', 'tf32', 'bf16', 'fp16'),
                   help="precision of every network. none = the authors' IEEE float32 (also on Ampere+ GPUs, where "
                        "PyTorch would use TF32 convolutions); tf32 = that TF32 (CUDA, Ampere+); bf16/fp16 = "
                        'torch.autocast (fp16 with loss scaling). Normalisations, PCM, prototype, random walk, CRF '
                        'and losses stay IEEE float32')
    a.add_argument('--channels_last', default='auto', choices=('auto', 'True', 'False'),
                   help="NHWC memory layout for the networks; auto = on for CUDA, off on CPU (NCHW is the authors' "
                        "arithmetic; channels-last moves the CAMs further from theirs: docs/faithfulness.md §12)")
    a.add_argument('--run_log', '--log', dest='log', default=True, type=str2bool,
                   help='tee stdout into work_dir/run.log (spell it --run_log under torchrun, whose parser takes --log '
                        'for its own --log-dir)')
    a.add_argument('--tensorboard', default=False, type=str2bool,
                   help='also write training curves as TensorBoard events to work_dir/tb/<step> (pip install '
                        'tensorboard); they always go to metrics/<step>_scalars.jsonl')
    a.add_argument('--traceback', default=False, type=str2bool,
                   help='show the full traceback of an input error (a missing file, a wrong flag) instead of its one '
                        'line; SFC_TRACEBACK=1 does the same')
    a.add_argument('--plan', default=False, type=str2bool,
                   help='print what the selected steps would cost (work, per-item time measured here by a short '
                        'micro-benchmark, estimated wall time) and stop; writes nothing')
    a.add_argument('--redo', default='', type=str,
                   help='steps whose outputs to remove and make again, comma-separated (e.g. make_cam,train_irn), '
                        'with every output made from them; needed when a step\'s outputs were made with other '
                        'settings (docs/pipeline.md, "Re-runs")')
    a.add_argument('--check_data', default=True, type=str2bool,
                   help='before the steps, check that every listed image, label and needed GT mask exists '
                        '(python -m misc.check_data also decodes every file)')

    a = p.add_argument_group('Data (lists default to work_dir/meta, built by voc12.make_cls_labels)')
    a.add_argument('--train_list', default=None, type=str,
                   help='images SFC and IRN train on (default meta/train_aug.txt; COCO meta/train2014.txt)')
    a.add_argument('--infer_list', default=None, type=str,
                   help='images make_cam, cam_to_ir_label and make_sem_seg run on (default: as --train_list)')
    a.add_argument('--eval_list', default=None, type=str,
                   help='images with GT that the eval steps score (default meta/train.txt; COCO meta/train2014.txt)')
    a.add_argument('--cls_labels', default=None, type=str, help='image-level labels (default meta/cls_labels.npz)')

    a = p.add_argument_group('Backbone')
    a.add_argument('--backbone_weights', default='imagenet', type=str,
                   help="'imagenet' (torchvision resnet50-19c8e357.pth URL), a local path, or 'none' (random init)")
    a.add_argument('--backbone_width', default=64, type=int, help='64 = the real ResNet-50; smaller for demo/tests')

    a = p.add_argument_group('SFC training (train_sfc)')
    a.add_argument('--sfc_batch_size', default=16, type=int, help='SFC/train_resnet50_SFC.py:86')
    a.add_argument('--sfc_num_epoches', default=6, type=int, help='SFC/train_resnet50_SFC.py:87')
    a.add_argument('--sfc_lr', default=0.1, type=float, help='backbone lr (SFC/train_resnet50_SFC.py:89)')
    a.add_argument('--sfc_new_layer_lr_mult', default=10.0, type=float, help='new layers 10x (:123-126)')
    a.add_argument('--sfc_weight_decay', default=1e-4, type=float, help='SFC/train_resnet50_SFC.py:91')
    a.add_argument('--sfc_momentum', default=1e-4, type=float,
                   help='effective SGD momentum: wd passed positionally as momentum (SIPE/tool/torchutils.py:14)')
    a.add_argument('--sfc_poly_power', default=0.9, type=float, help="the 'momentum=0.9' is the poly power (torchutils.py:26)")
    a.add_argument('--sfc_grad_clip', default=1.0, type=float, help='global grad-norm clip (:260)')
    a.add_argument('--sfc_crop_size', default=512, type=int, help='random crop, hard-coded 512 (:115)')
    a.add_argument('--sfc_micro_batch', default=10, type=int,
                   help='images per forward/backward inside a step (same gradients; bounds memory); 0 = whole batch')
    a.add_argument('--sfc_resize_long_aug', default=False, type=str2bool,
                   help="random resize-long; commented out in the authors' branch (SIPE had it on)")
    a.add_argument('--sfc_resize_long', default=[320, 640], nargs=2, type=int, help='SIPE range, inclusive (:114)')
    a.add_argument('--sfc_hor_flip', default=False, type=str2bool, help="random flip; off in the authors' branch (A1)")
    a.add_argument('--sfc_half_scale', default=0.5, type=float, help='second forward scale (:143, :170)')
    a.add_argument('--sfc_bank_samples', default=4, type=int, help='bank images appended per step (:158-168)')
    a.add_argument('--sfc_pdw_weight', default=1.6, type=float, help='L_PDW (lossGSC) weight (:225)')
    a.add_argument('--sfc_wdw_weight', default=0.8, type=float, help='L_WDW (cross-scale) weight (:254)')
    a.add_argument('--sfc_proto_bg_factor', default=0.3, type=float, help='bg scale in prototype seeds (resnet50_SFC.py:49)')
    a.add_argument('--sfc_dc_offset', default='396', type=str,
                   help="count offset of the DC weights: 396 = 660*4*3/20, the authors' VOC constant (:198); "
                        "'auto' = steps/epoch * bank images * 3 / classes of this run (the same expression for another dataset)")
    a.add_argument('--sfc_ibr', default=True, type=str2bool, help='ablation: Image Bank Re-sampling')
    a.add_argument('--sfc_pdw', default=True, type=str2bool, help='ablation: L_PDW (prototype consistency)')
    a.add_argument('--sfc_wdw', default=True, type=str2bool, help='ablation: L_WDW (cross-scale consistency)')
    a.add_argument('--sfc_dc_weights', default=True, type=str2bool, help='ablation: distribution-calibrating weights')
    a.add_argument('--sfc_select_on_gt', default=True, type=str2bool,
                   help="the authors' checkpoint choice on PIXEL GT of --sfc_val_list every 300 steps (the default, as "
                        "the authors on VOC; run_coco.sh passes False); False = final weights")
    a.add_argument('--sfc_val_list', default=None, type=str, help='GT list for --sfc_select_on_gt (default --eval_list)')
    a.add_argument('--sfc_val_freq', default=300, type=int, help='validate when (g-1)%%300==0 and g > --sfc_val_min_step (:94-96)')
    a.add_argument('--sfc_val_min_step', default=10, type=int, help='no validation up to this step (g > 10, :299)')
    a.add_argument('--sfc_print_freq', default=10, type=int, help=':94')
    a.add_argument('--sfc_ckpt_freq', default=100, type=int, help='steps between resume checkpoints')
    a.add_argument('--sfc_resume', default=True, type=str2bool, help='continue from ckpt/sfc_resume.pth if present')
    a.add_argument('--sfc_calibrate_bn', default=True, type=str2bool,
                   help='with --backbone_weights none: set BN statistics from training crops before step 0')
    a.add_argument('--sfc_zero_init_residual', default=True, type=str2bool,
                   help='with --backbone_weights none: start layer3/4 residual branches at zero (SkipInit)')

    a = p.add_argument_group('CAM inference (make_cam) and evaluation (eval_cam)')
    a.add_argument('--sfc_weights', default=None, type=str, help='checkpoint make_cam loads (default ckpt/res50_sfc.pth)')
    a.add_argument('--cam_scales', default=[1.0, 0.5, 1.5, 2.0], nargs='+', type=float, help='SFC/make_cam.py:118')
    a.add_argument('--cam_bg_offset', default=0.4, type=float, help="bg + 0.4 ('pad 0.4', make_cam.py:63, :74)")
    a.add_argument('--cam_fg_scale', default=2.0, type=float, help='fg x2, the side effect of the same line')
    a.add_argument('--cam_norm_eps', default=1e-5, type=float, help='max-normalisation eps (make_cam.py:61, :73)')
    a.add_argument('--cam_fold_bn', default=False, type=str2bool,
                   help="fold BatchNorm into the convs for make_cam/make_sem_seg (in float64): 4%% faster on CPU, off by "
                        "default: folding moved the classifier CAM 3.8e-4 from the authors' (docs/faithfulness.md §12)")
    a.add_argument('--cam_skip_existing', default=True, type=str2bool, help='skip images whose cam/<id>.npz is complete')
    a.add_argument('--cam_eval_source', default=['proto_cam'], nargs='+', choices=camio.CAM_SOURCES,
                   help='CAM(s) scored; the authors score proto_cam only (SFC/eval_cam.py:20)')
    a.add_argument('--cam_eval_fuse_weight', default=0.3, type=float,
                   help='fused = cam + w * proto_cam (the commented final_cam, SFC/make_cam.py:81)')
    a.add_argument('--cam_vis_count', default=0, type=int, help='eval_cam: CAM overlay PNGs written to vis/cam/ (0 = none)')
    a.add_argument('--cam_eval_sweep', default=False, type=str2bool,
                   help='also score the headline CAM at every background threshold (IRN style: a constant background '
                        'score) and offset (SFC style: background + offset) below: mIoU curves, the best values, '
                        'vis/eval_cam_sweep.png; the headline stays the authors\' offset')
    a.add_argument('--cam_sweep_thresholds', default=[round(0.05 * i, 2) for i in range(1, 20)], nargs='+', type=float,
                   help='constant background scores t for --cam_eval_sweep (0.05 ... 0.95)')
    a.add_argument('--cam_sweep_offsets', default=[round(0.1 * i, 1) for i in range(0, 16)], nargs='+', type=float,
                   help='background offsets o for --cam_eval_sweep (0.0 ... 1.5; the authors use 0.4)')

    a = p.add_argument_group('IR labels by dense CRF (cam_to_ir_label; SFC/cam2ir.py, SIPE/tool/imutils.py:156-170)')
    a.add_argument('--ir_proto_weight', default=0.7, type=float, help='F = cam + 0.7 proto_cam (cam2ir.py:26)')
    a.add_argument('--ir_bg_factor', default=0.5, type=float, help='background x0.5 in the second pass (cam2ir.py:35)')
    a.add_argument('--ir_crf_iters', default=12, type=int, help="12 in the authors' branch, 10 in SIPE (imutils.py:156)")
    a.add_argument('--ir_crf_gt_prob', default=0.7, type=float, help='unary_from_labels gt_prob')
    a.add_argument('--ir_crf_gauss_sxy', default=3, type=float, help='addPairwiseGaussian sxy')
    a.add_argument('--ir_crf_gauss_compat', default=3, type=float, help='addPairwiseGaussian compat')
    a.add_argument('--ir_crf_bi_sxy', default=50, type=float, help='addPairwiseBilateral sxy')
    a.add_argument('--ir_crf_bi_srgb', default=5, type=float, help='addPairwiseBilateral srgb')
    a.add_argument('--ir_crf_bi_compat', default=10, type=float, help='addPairwiseBilateral compat')
    a.add_argument('--ir_crf_workers', default=0, type=int,
                   help='processes running the dense CRF; 0 = this process\'s share of the cores (the usable cores '
                        'split over the torchrun ranks of the machine; the authors: cpu_count//2)')
    a.add_argument('--ir_skip_existing', default=True, type=str2bool, help='skip images whose ir_label PNG is complete')

    a = p.add_argument_group('IRN training (train_irn; SFC/train_irn.py)')
    a.add_argument('--irn_crop_size', default=512, type=int, help='SFC/train_irn.py:126')
    a.add_argument('--irn_batch_size', default=32, type=int, help=':127')
    a.add_argument('--irn_num_epoches', default=3, type=int, help=':128')
    a.add_argument('--irn_lr', default=0.1, type=float, help='edge branch lr (:129); displacement x10')
    a.add_argument('--irn_dp_lr_mult', default=10.0, type=float, help='displacement branch lr 1.0 (:36-37)')
    a.add_argument('--irn_weight_decay', default=1e-4, type=float, help=':130')
    a.add_argument('--irn_momentum', default=1e-4, type=float, help='the same positional-momentum quirk (:35-38)')
    a.add_argument('--irn_poly_power', default=0.9, type=float)
    a.add_argument('--irn_rescale', default=[0.5, 1.0], nargs=2, type=float,
                   help='random scale range: the authors pass (0.5, 1.0, 1.5) but only [0.5, 1.0) is used (train_irn.py:27)')
    a.add_argument('--irn_micro_batch', default=8, type=int,
                   help='images per forward/backward inside a batch (same gradients; bounds memory); 0 = whole batch')
    a.add_argument('--irn_hor_flip', default=True, type=str2bool, help='random horizontal flip (SFC/train_irn.py:27)')
    a.add_argument('--irn_radius', default=10, type=int, help='PathIndex radius for training (:15)')
    a.add_argument('--irn_print_freq', default=10, type=int)
    a.add_argument('--irn_ckpt_freq', default=50, type=int, help='steps between resume checkpoints')
    a.add_argument('--irn_resume', default=True, type=str2bool, help='continue from ckpt/irn_resume.pth if present')
    a.add_argument('--irn_calibrate_bn', default=True, type=str2bool,
                   help='with --backbone_weights none: set BN statistics from training crops')
    a.add_argument('--irn_dp_mean', default=True, type=str2bool, help='fill MeanShift running_mean after training (:89-110)')
    a.add_argument('--irn_dp_mean_list', default=None, type=str, help='images for the displacement mean (default --eval_list)')
    a.add_argument('--irn_weights', default=None, type=str, help='IRN checkpoint make_sem_seg loads (default ckpt/res50_irn.pth)')

    a = p.add_argument_group('Pseudo masks by random walk (make_sem_seg; SFC/make_seg_labels.py) and eval_sem_seg')
    a.add_argument('--sem_seg_proto_weight', default=0.3, type=float, help='F = cam + 0.3 proto_cam (make_seg_labels.py:45)')
    a.add_argument('--sem_seg_power', default=1.3, type=float, help='CAM power (:49)')
    a.add_argument('--sem_seg_double_power', default=True, type=str2bool,
                   help='second walk on the power applied twice (F^1.69), as the authors (:56-57)')
    a.add_argument('--sem_seg_bg_value', default=0.25, type=float, help='constant background plane of walk 1 (:54)')
    a.add_argument('--beta', default=10, type=int, help='affinity power (:87)')
    a.add_argument('--exp_times', default=8, type=int, help='T^(2^exp_times) = T^256 (:88)')
    a.add_argument('--sem_seg_radius', default=5, type=int, help='random-walk radius (:51, :59)')
    a.add_argument('--irn_crop_size_infer', default=512, type=int,
                   help='EdgeDisplacement pads images to this size (larger ones to a multiple of 32)')
    a.add_argument('--eval_masks', default='sem_seg', choices=('sem_seg', 'ir_label'),
                   help="masks eval_sem_seg scores: IRN's sem_seg, or the CRF ir_label (the authors' final COCO masks; 255 -> 0)")
    a.add_argument('--sem_seg_skip_existing', default=True, type=str2bool, help='skip images whose sem_seg PNG is complete')

    a = p.add_argument_group('Segmentation model: DeepLab-v2 on the pseudo masks (train_seg, make_seg, eval_seg; deeplab-pytorch)')
    a.add_argument('--seg_recipe', default='imagenet', choices=tuple(SEG_RECIPES),
                   help='imagenet: the paper\'s ImageNet init (batch 10, 30k it, scale 0.5-2, balanced CE); '
                        'deeplab_coco: deeplab-pytorch voc12.yaml exactly (COCO init, 5 x 2, 20k it, plain CE). '
                        'Flags below left unset take the recipe\'s value')
    a.add_argument('--seg_init', default=None, type=str,
                   help="imagenet (torchvision's ResNet URL), a local file (deeplab-pytorch checkpoint, whole or "
                        "backbone-only; an ImageNet ResNet in that layout; or a torchvision ResNet), or none")
    a.add_argument('--seg_depth', default=101, type=int, choices=(50, 101), help='ResNet depth (DeepLabV2_ResNet101_MSC)')
    a.add_argument('--seg_stride_in', default='auto', choices=('auto', '1x1', '3x3'),
                   help="conv holding a block's stride: 1x1 for Caffe/MSRA weights, 3x3 for torchvision's (auto)")
    a.add_argument('--seg_input_norm', default='auto', choices=('auto', 'caffe', 'torchvision'),
                   help='caffe: BGR 0-255 minus (104.008, 116.669, 122.675); torchvision: RGB mean/std; auto '
                        'follows --seg_init')
    a.add_argument('--seg_train_list', default=None, type=str, help='images DeepLab trains on (default --train_list)')
    a.add_argument('--seg_label_dir', default=None, type=str,
                   help='pseudo masks DeepLab trains on (default work_dir/sem_seg; run_coco.sh passes work_dir/ir_label); '
                        'never the GT')
    a.add_argument('--seg_batch_size', default=None, type=int, help='images per accumulation step (recipe: 10 / 5)')
    a.add_argument('--seg_iter_size', default=None, type=int,
                   help='accumulation steps per update, each loss normalised on its own and divided by this '
                        '(deeplab-pytorch ITER_SIZE; recipe: 1 / 2)')
    a.add_argument('--seg_iters', default=None, type=int, help='updates (recipe: 30000 / 20000)')
    a.add_argument('--seg_lr', default=2.5e-4, type=float, help='backbone lr (voc12.yaml SOLVER.LR)')
    a.add_argument('--seg_head_lr_mult', default=10.0, type=float, help='ASPP weights x10 (main.py get_params 10x)')
    a.add_argument('--seg_head_bias_lr_mult', default=20.0, type=float, help='ASPP biases x20, no weight decay (20x)')
    a.add_argument('--seg_momentum', default=0.9, type=float, help='real SGD momentum (voc12.yaml SOLVER.MOMENTUM)')
    a.add_argument('--seg_weight_decay', default=5e-4, type=float, help='voc12.yaml SOLVER.WEIGHT_DECAY')
    a.add_argument('--seg_poly_power', default=0.9, type=float, help='voc12.yaml SOLVER.POLY_POWER')
    a.add_argument('--seg_lr_decay_every', default=10, type=int, help='lr updated every 10 iterations (SOLVER.LR_DECAY)')
    a.add_argument('--seg_crop_size', default=321, type=int, help='voc12.yaml IMAGE.SIZE.TRAIN')
    a.add_argument('--seg_base_size', default=0, type=int, help='resize the long side to this before scaling; 0 = off '
                                                                    '(voc12.yaml IMAGE.SIZE.BASE: none)')
    a.add_argument('--seg_scales', default=None, type=float, nargs='+',
                   help='random scale: range [min, max] (uniform) or the set to choose from (choice)')
    a.add_argument('--seg_scale_mode', default=None, choices=('uniform', 'choice'))
    a.add_argument('--seg_hor_flip', default=True, type=str2bool, help='random flip, p = 0.5 (base.py)')
    a.add_argument('--seg_loss', default=None, choices=('balanced', 'ce'),
                   help='balanced: mean of background-pixel CE and foreground-pixel CE; ce: plain CE (ignore 255)')
    a.add_argument('--seg_msc_scales', default=[0.5, 0.75], type=float, nargs='+', help='MSC input scales (msc.py)')
    a.add_argument('--seg_aspp_rates', default=[6, 12, 18, 24], type=int, nargs='+', help='ASPP dilations')
    a.add_argument('--seg_micro_batch', default=5, type=int,
                   help='images per forward/backward inside an accumulation step (same gradients; bounds memory); '
                        '0 = the whole batch')
    a.add_argument('--seg_calibrate_bn', default=True, type=str2bool,
                   help='with --seg_init none: set BN statistics from training crops and start the residual '
                        'branches of layer4/5 at zero')
    a.add_argument('--seg_print_freq', default=10, type=int)
    a.add_argument('--seg_ckpt_freq', default=500, type=int, help='updates between resume checkpoints')
    a.add_argument('--seg_resume', default=True, type=str2bool, help='continue from ckpt/seg_resume.pth if present')
    a.add_argument('--seg_weights', default=None, type=str,
                   help='checkpoint make_seg loads (default ckpt/deeplab.pth; also a deeplab-pytorch checkpoint '
                        'such as deeplabv2_resnet101_msc-vocaug-20000.pth)')
    a.add_argument('--seg_infer_list', default=None, type=str,
                   help='images make_seg predicts (default meta/val.txt; COCO meta/val2014.txt; or the VOC test list)')
    a.add_argument('--seg_infer_root', default=None, type=str,
                   help='dataset root of --seg_infer_list (default the dataset root; the VOC2012 test devkit)')
    a.add_argument('--seg_eval_list', default=None, type=str, help='images with GT eval_seg scores '
                                                                    '(default --seg_infer_list)')
    a.add_argument('--seg_test_scales', default=[1.0], type=float, nargs='+',
                   help='extra test scales around MSC (logits averaged); 1.0 alone = deeplab-pytorch')
    a.add_argument('--seg_test_flip', default=False, type=str2bool, help='also average the flipped image (not in '
                                                                         'deeplab-pytorch)')
    a.add_argument('--seg_crf', default=True, type=str2bool, help='dense CRF after the network (main.py crf)')
    a.add_argument('--seg_crf_iters', default=10, type=int, help='voc12.yaml CRF.ITER_MAX')
    a.add_argument('--seg_crf_pos_w', default=3, type=float, help='CRF.POS_W')
    a.add_argument('--seg_crf_pos_xy_std', default=1, type=float, help='CRF.POS_XY_STD')
    a.add_argument('--seg_crf_bi_w', default=4, type=float, help='CRF.BI_W')
    a.add_argument('--seg_crf_bi_xy_std', default=67, type=float, help='CRF.BI_XY_STD')
    a.add_argument('--seg_crf_bi_rgb_std', default=3, type=float, help='CRF.BI_RGB_STD')
    a.add_argument('--seg_crf_workers', default=0, type=int,
                   help='processes running the dense CRF beside the network (same outputs for any number); 0 = this '
                        'process\'s share of the cores minus one, at least 1 (1 = inline, no pool)')
    a.add_argument('--seg_skip_existing', default=True, type=str2bool, help='skip images whose seg PNG is complete')
    a.add_argument('--seg_export_voc_test', default=False, type=str2bool,
                   help='also write the VOC evaluation server layout results/VOC2012/Segmentation/comp6_test_cls/ '
                        'and results.tar.gz under work_dir/voc_test_export/')

    a = p.add_argument_group('Steps (True runs the step)')
    for s in STEPS:
        a.add_argument(f'--{s}_pass', default=False, type=str2bool)
    for alias, target in PASS_ALIASES.items():
        a.add_argument(f'--{alias}_pass', default=False, type=str2bool, help=f'alias of --{target}_pass')
    return p


def finalize_args(args):
    """The one place that resolves paths below work_dir, the device and the defaults that depend on them."""
    from misc.torchutils import deterministic_environment, resolve_device
    if args.deterministic:  # before anything can start cuBLAS (the process group's NCCL included)
        deterministic_environment()
    for alias, target in PASS_ALIASES.items():
        if getattr(args, f'{alias}_pass'):
            setattr(args, f'{target}_pass', True)
    args.device = distributed.init(resolve_device(args.device))  # under torchrun: this rank's GPU
    share = distributed.cpu_share()  # the usable cores split over the ranks of this machine
    if args.num_workers is None:
        args.num_workers = max(1, share // 2)
    elif args.num_workers > share:  # processes x loader workers never exceed the usable cores
        args.num_workers_asked, args.num_workers = args.num_workers, share
    args.ir_crf_workers = args.ir_crf_workers or share
    args.seg_crf_workers = args.seg_crf_workers or max(1, share - 1)
    args.work_dir = os.path.abspath(args.work_dir)
    for k, v in camio.work_layout(args.work_dir).items():
        setattr(args, k, v)
        if not args.plan:  # a plan writes nothing
            os.makedirs(v, exist_ok=True)
    meta = args.meta_dir
    train, evaluate, seg_val = DEFAULT_LISTS[args.dataset]
    args.train_list = args.train_list or os.path.join(meta, train)
    args.infer_list = args.infer_list or os.path.join(meta, train)
    args.eval_list = args.eval_list or os.path.join(meta, evaluate)
    args.sfc_val_list = args.sfc_val_list or args.eval_list
    args.cls_labels = args.cls_labels or os.path.join(meta, 'cls_labels.npz')
    args.sfc_weights = args.sfc_weights or os.path.join(args.ckpt_dir, camio.SFC_WEIGHTS)
    args.irn_weights = args.irn_weights or os.path.join(args.ckpt_dir, camio.IRN_WEIGHTS)
    args.irn_dp_mean_list = args.irn_dp_mean_list or args.eval_list
    for k, v in SEG_RECIPES[args.seg_recipe].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.seg_train_list = args.seg_train_list or args.train_list
    args.seg_label_dir = os.path.abspath(args.seg_label_dir) if args.seg_label_dir else args.sem_seg_dir
    args.seg_weights = args.seg_weights or os.path.join(args.ckpt_dir, camio.SEG_WEIGHTS)
    args.seg_infer_list = args.seg_infer_list or os.path.join(meta, seg_val)
    args.seg_eval_list = args.seg_eval_list or args.seg_infer_list
    root_flag = {'voc12': 'voc12_root', 'coco14': 'coco14_root'}[args.dataset]
    args.dataset_root = getattr(args, root_flag, None)
    args.seg_infer_root = args.seg_infer_root or args.dataset_root
    if any(getattr(args, f'{s}_pass') for s in STEPS) and not args.dataset_root:
        raise BadInput(f'--{root_flag} is required')
    if args.sfc_dc_offset != 'auto':
        try:
            float(args.sfc_dc_offset)
        except ValueError:
            raise BadInput(f"--sfc_dc_offset must be a number or 'auto', got {args.sfc_dc_offset!r}")
    return args


# which lists each step reads images / GT of
_LIST_USE = {'train_sfc': ('train_list', 'sfc_val_list'), 'make_cam': ('infer_list',), 'eval_cam': ('eval_list',),
             'cam_to_ir_label': ('infer_list',), 'train_irn': ('train_list',), 'make_sem_seg': ('infer_list',),
             'eval_sem_seg': ('eval_list',), 'train_seg': ('seg_train_list',), 'make_seg': ('seg_infer_list',),
             'eval_seg': ('seg_eval_list',)}
_GT_USE = {'eval_cam': ('eval_list',), 'eval_sem_seg': ('eval_list',), 'train_sfc': ('sfc_val_list',),
           'eval_seg': ('seg_eval_list',)}
# steps that read the image-level labels (--cls_labels); the segmentation model's steps never do
_LABEL_USE = ('train_sfc', 'make_cam', 'eval_cam', 'make_sem_seg')


def quick_check(args, steps):
    """Existence of every image, label and GT mask the selected steps will read; stops with all problems."""
    from misc.check_data import check, report
    from misc.dataset import get_dataset
    lists, gt = [], []
    for s in steps:
        for k in _LIST_USE[s]:
            if k == 'sfc_val_list' and not args.sfc_select_on_gt:
                continue
            if k == 'seg_infer_list' and os.path.abspath(args.seg_infer_root) != os.path.abspath(args.dataset_root):
                continue  # another root (the VOC test devkit): make_seg checks its images itself
            lists.append(getattr(args, k))
        for k in _GT_USE.get(s, ()):
            if k != 'sfc_val_list' or args.sfc_select_on_gt:
                gt.append(getattr(args, k))
    labels = args.cls_labels if any(s in _LABEL_USE for s in steps) else None
    problems, summary = check(get_dataset(args), args.dataset_root, list(dict.fromkeys(lists)),
                              list(dict.fromkeys(gt)), labels)
    if problems:
        report(problems, summary)
        raise BadInput(f'data check failed with {len(problems)} problems (listed above); fix them, or pass '
                       f'--check_data False to let the steps fail on the first one')
    print(f'  data check: OK ({", ".join(f"{os.path.basename(p)} {n}" for p, n, _ in summary)})')


def print_summary(metrics_dir):
    """One table of every metric written so far in this work directory."""
    rows = []
    cam = os.path.join(metrics_dir, 'eval_cam.json')
    if os.path.isfile(cam):
        m = camio.load_json(cam)
        for src, r in m.get('sources', {m.get('source', 'cam'): m}).items():
            rows.append([f'CAM mIoU ({src})', f'{r["miou"]:.4f}', f'{r["n_images"]} images'])
    sem = os.path.join(metrics_dir, 'eval_sem_seg.json')
    if os.path.isfile(sem):
        m = camio.load_json(sem)
        if 'ir_label' in m:
            ir = m['ir_label']
            if 'miou_as_mask' in ir:
                rows.append(['IR labels as masks mIoU (255 -> bg)', f'{ir["miou_as_mask"]:.4f}', f'{m["n_images"]} images'])
            rows.append(['IR label precision', f'{ir["precision"]:.4f}', 'confident pixels'])
            rows.append(['IR label coverage', f'{ir["coverage"]:.4f}', 'share of non-void pixels'])
        rows.append([f'pseudo-mask mIoU ({m.get("masks", "sem_seg")})', f'{m["miou"]:.4f}', f'{m["n_images"]} images'])
    seg = os.path.join(metrics_dir, 'eval_seg.json')
    if os.path.isfile(seg):
        m = camio.load_json(seg)
        on = f'{m["n_images"]} images of {os.path.basename(m.get("eval_list", ""))}'
        rows.append([f'segmentation model mIoU{" (CRF)" if m.get("crf") else ""}', f'{m["miou"]:.4f}', on])
        if 'miou_no_crf' in m:
            rows.append(['segmentation model mIoU (no CRF)', f'{m["miou_no_crf"]:.4f}', on])
    if rows:
        print('summary (' + metrics_dir + ')')
        print(format_table(['metric', 'value', 'on'], rows))


def guard(args, steps, write=False):
    """Provenance (misc/provenance.py), decided by rank 0 for every rank: --redo first (when write is False: before
    the first step), then each step's record checked (and, with write, written before the step runs). Stops every
    rank with the same one line when outputs were made otherwise."""
    from misc import provenance
    error = None  # (exception class, message), raised on every rank
    if distributed.is_main():
        try:
            if not write and args.redo:
                names = [x for x in args.redo.replace(' ', ',').split(',') if x]
                removed = provenance.redo(args, names)
                print(f'  --redo: removed the outputs of {", ".join(removed)}')
            for s in steps:
                provenance.check(args, s, write=write)
        except (provenance.StaleOutput, BadInput) as e:
            error = (type(e), str(e))
    error = distributed.broadcast(error)
    if error:
        raise error[0](error[1])


def main(argv=None):
    args = finalize_args(get_parser().parse_args(argv))
    steps = [s for s in STEPS if getattr(args, f'{s}_pass')]
    results, timings = {}, []
    main_rank = distributed.is_main()
    if args.plan:
        from misc import plan
        print(environment_line(args.device))
        print(settings_line(args))
        return {'plan': plan.run(args, steps)}
    log = Tee(os.path.join(args.work_dir, 'run.log')) if args.log and main_rank else None
    quiet = None if main_rank else contextlib.redirect_stdout(open(os.devnull, 'w'))  # rank 0 speaks for all
    if log:
        log.__enter__()
    if quiet:
        quiet.__enter__()
    try:
        distributed.check_same_args(args)
        if main_rank:
            camio.save_json(os.path.join(args.work_dir, 'args.json'), vars(args))
        print(f'work dir {args.work_dir}, device {args.device}, steps: {", ".join(steps) or "none"}'
              + (f'; {distributed.world()} processes' if distributed.world() > 1 else ''))
        print(environment_line(args.device))
        print(settings_line(args))
        if args.check_data and steps:
            quick_check(args, steps)
        if args.deterministic:
            from misc.torchutils import setup_determinism
            setup_determinism(args.device)
        guard(args, steps)
        for s in steps:
            t0 = time.perf_counter()
            print(f'=== {s} ===')
            guard(args, [s], write=True)
            if s not in EVAL_STEPS or main_rank:
                results[s] = importlib.import_module(f'step.{s}').run(args)
            distributed.barrier()  # every rank's outputs are on disk before the next step reads them
            timings.append([s, format_seconds(time.perf_counter() - t0)])
            print(f'=== {s} done in {timings[-1][1]} ===')
        if timings:
            print(format_table(['step', 'time'], timings))
        if any(s.startswith('eval') for s in steps):
            print_summary(args.metrics_dir)
    finally:
        if quiet:
            quiet.__exit__(None, None, None)
        if log:
            log.__exit__(None, None, None)
    return results


if __name__ == '__main__':
    if int(os.environ.get('RANK', 0)) > 0:  # under torchrun rank 0 speaks for all (tqdm reads this at import)
        os.environ.setdefault('TQDM_DISABLE', '1')
    from misc.errors import cli
    cli(main, sys.argv[1:])
