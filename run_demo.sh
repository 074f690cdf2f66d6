#!/usr/bin/env bash
# Demo: the whole pipeline (train_sfc, make_cam, eval_cam, cam_to_ir_label, train_irn, make_sem_seg, eval_sem_seg,
# train_seg, make_seg, eval_seg) on generated VOC-format data, on CPU, in under 10 minutes on 2 cores.
# Sets up .venv if needed, generates the data, runs every step, prints per-class tables and a summary.
# Usage: bash run_demo.sh [WORK_DIR]   (default work/demo; a re-run resumes / skips finished work)
set -euo pipefail
cd "$(dirname "$0")"
# glibc: keep large CPU buffers in the heap instead of mmap/unmap per forward (~10-15% faster on CPU)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-17179869184} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184}
. ./setup_env.sh

WORK_DIR=${1:-${WORK_DIR:-work/demo}}
DATA=$WORK_DIR/VOC2012
META=$WORK_DIR/meta
DEVICE=${DEVICE:-cpu}
NPROC=${NPROC:-1}   # NPROC=2: every step through torchrun with 2 processes (the same results; see README)
# The real pipeline starts its three networks from ImageNet weights, which cannot be fetched here. The demo
# starts them from this project's stand-in (weights/standin/, made by `python -m tools.pretrain_backbone`: a
# ResNet-50 and a ResNet-101 at width 8 pretrained on generated shapes/colours/textures, no VOC classes, no
# masks), through the same --backbone_weights / --seg_init route as the ImageNet files.
STANDIN=weights/standin

# Demo-size settings, all explicit flags (the networks are 8x narrower and the images ~4x smaller per side than
# VOC's): SFC with real SGD momentum 0.9 (the authors' effective momentum is 1e-4) and the DC-weight offset derived
# from this data ('auto'), final weights (no GT selection); IRN at lr 0.03 with momentum 0.9, trained without the
# down-scaling of [0.5, 1) (at this size it erases the 8-pixel textures), radius 5 and a walk of T^16 (the
# authors' radius 10 and T^256 are for VOC's ~125x94 stride-4 maps, the demo's are ~25x25: 1/19 of the area);
# DeepLab for 200 updates at 10x the recipe's lr. These demo-size values were chosen on the demo's val set.
if [ ! -f "$DATA/ImageSets/Segmentation/val.txt" ]; then
  "$PY" -m voc12.synthetic --out_root "$DATA" --n_train 200 --n_val 100 --n_aug 1000 --seed 0
fi
if [ ! -f "$META/cls_labels.npz" ]; then
  "$PY" -m voc12.make_cls_labels --voc12_root "$DATA" --out_dir "$META"
fi
COMMON=(--voc12_root "$DATA" --work_dir "$WORK_DIR" --device "$DEVICE" --seed 10
        --backbone_weights "$STANDIN/resnet50_w8.pth" --backbone_width 8 --eval_list "$META/val.txt")

# 1. SFC on train_aug (1 200 images, 600 steps of 16 + 4 bank images)
sfc_run "${COMMON[@]}" --num_workers 1 --train_list "$META/train_aug.txt" \
  --sfc_crop_size 96 --sfc_batch_size 16 --sfc_num_epoches 8 --sfc_lr 0.1 --sfc_momentum 0.9 \
  --sfc_dc_offset auto --sfc_select_on_gt False \
  --train_sfc_pass True

# 2. CAMs, IR labels, IRN and pseudo masks on train+val (300 images); everything scored on val
sfc_run "${COMMON[@]}" --num_workers 2 \
  --train_list "$META/trainval.txt" --infer_list "$META/trainval.txt" \
  --cam_scales 1.0 0.5 1.5 2.0 --cam_eval_source proto_cam cam fused --cam_vis_count 8 \
  --irn_crop_size 128 --irn_batch_size 16 --irn_num_epoches 12 --irn_lr 0.03 --irn_momentum 0.9 \
  --irn_rescale 1.0 1.0 --irn_radius 5 --exp_times 4 \
  --make_cam_pass True --eval_cam_pass True --cam_to_ir_label_pass True \
  --train_irn_pass True --make_sem_seg_pass True --eval_sem_seg_pass True

# 3. DeepLab-v2 (ResNet-101, width 8) on the pseudo masks of train (200 images), predictions + CRF on val
sfc_run "${COMMON[@]}" --num_workers 2 \
  --seg_init "$STANDIN/resnet101_w8.pth" --seg_train_list "$META/train.txt" --seg_infer_list "$META/val.txt" \
  --seg_crop_size 96 --seg_batch_size 10 --seg_iters 200 --seg_lr 2.5e-3 --seg_print_freq 50 \
  --train_seg_pass True --make_seg_pass True --eval_seg_pass True

# 4. pictures of 12 val images: full-size strips, palette label PNGs and one contact sheet
"$PY" -m misc.visualize --work_dir "$WORK_DIR" --list "$META/val.txt" --max_images 12

echo
echo "contact sheet (image | GT | CAM seeds | IR label | pseudo mask | DeepLab | per-class CAM): $WORK_DIR/vis/val/contact_sheet.png"
echo "per-class charts: $WORK_DIR/vis/eval_*_per_class.png   pseudo masks: $WORK_DIR/sem_seg/   DeepLab: $WORK_DIR/seg/"
echo "metrics: $WORK_DIR/metrics/*.json   log: $WORK_DIR/run.log"
