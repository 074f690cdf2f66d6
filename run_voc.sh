#!/usr/bin/env bash
# SFC on PASCAL VOC 2012: the authors' pipeline (SPEC Part B) with this project's defaults (SPEC Part A).
# Edit the variables below; every hyperparameter is a flag of run_sample.py with the authors' default.
# Re-running is safe: training resumes from work_dir/ckpt/sfc_resume.pth, make_cam skips finished images.
set -euo pipefail
cd "$(dirname "$0")"

VOC12_ROOT=${VOC12_ROOT:-data/VOCdevkit/VOC2012}   # JPEGImages/, Annotations/, SegmentationClass/, [SegmentationClassAug/]
WORK_DIR=${WORK_DIR:-work/voc}
DEVICE=${DEVICE:-auto}                             # auto | cpu | cuda (inference uses every visible GPU)
NUM_WORKERS=${NUM_WORKERS:-8}                      # SFC/train_resnet50_SFC.py:90
BACKBONE_WEIGHTS=${BACKBONE_WEIGHTS:-imagenet}     # imagenet (torchvision URL) | /path/resnet50-19c8e357.pth
SEED=10                                            # SFC/train_resnet50_SFC.py:99

# --- SFC training (SFC/train_resnet50_SFC.py, SIPE/tool/torchutils.py) ---
SFC_BATCH_SIZE=16          # loader batch; +4 bank images per step
SFC_NUM_EPOCHES=6          # 661 steps/epoch on train_aug -> 3966 steps
SFC_LR=0.1                 # backbone; new layers x10
SFC_WEIGHT_DECAY=1e-4
SFC_MOMENTUM=1e-4          # effective momentum of the authors' PolyOptimizerSGD (wd passed as momentum)
SFC_POLY_POWER=0.9
SFC_CROP_SIZE=512
SFC_BANK_SAMPLES=4
SFC_PDW_WEIGHT=1.6         # L_PDW (lossGSC)
SFC_WDW_WEIGHT=0.8         # L_WDW (cross-scale consistency)
SFC_DC_OFFSET=396          # 660*4*3/20, the authors' constant
SFC_SELECT_ON_GT=True      # authors' best.pth protocol: validates on train PIXEL GT every 300 steps
SFC_VAL_FREQ=300

# --- make_cam / eval_cam (SFC/make_cam.py, SFC/eval_cam.py) ---
CAM_SCALES="1.0 0.5 1.5 2.0"
CAM_BG_OFFSET=0.4          # bg + 0.4, fg x 2 (the "pad 0.4" line)
CAM_EVAL_SOURCE="proto_cam cam fused"   # the authors score proto_cam (first = headline)

META=$WORK_DIR/meta
if [ ! -f "$META/cls_labels.npz" ]; then
  python -m voc12.make_cls_labels --voc12_root "$VOC12_ROOT" --out_dir "$META"
fi
TRAIN_LIST=$META/train_aug.txt
[ -f "$TRAIN_LIST" ] || { echo "no SegmentationClassAug/: training on VOC train only"; TRAIN_LIST=$META/train.txt; }

python run_sample.py \
  --voc12_root "$VOC12_ROOT" --work_dir "$WORK_DIR" --device "$DEVICE" --num_workers "$NUM_WORKERS" --seed $SEED \
  --train_list "$TRAIN_LIST" --infer_list "$TRAIN_LIST" --eval_list "$META/train.txt" \
  --backbone_weights "$BACKBONE_WEIGHTS" \
  --sfc_batch_size $SFC_BATCH_SIZE --sfc_num_epoches $SFC_NUM_EPOCHES --sfc_lr $SFC_LR \
  --sfc_weight_decay $SFC_WEIGHT_DECAY --sfc_momentum $SFC_MOMENTUM --sfc_poly_power $SFC_POLY_POWER \
  --sfc_crop_size $SFC_CROP_SIZE --sfc_bank_samples $SFC_BANK_SAMPLES \
  --sfc_pdw_weight $SFC_PDW_WEIGHT --sfc_wdw_weight $SFC_WDW_WEIGHT --sfc_dc_offset $SFC_DC_OFFSET \
  --sfc_select_on_gt $SFC_SELECT_ON_GT --sfc_val_freq $SFC_VAL_FREQ \
  --cam_scales $CAM_SCALES --cam_bg_offset $CAM_BG_OFFSET --cam_eval_source $CAM_EVAL_SOURCE \
  --train_sfc_pass True --make_cam_pass True --eval_cam_pass True
