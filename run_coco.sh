#!/usr/bin/env bash
# SFC on MS COCO 2014 with the authors' intent (docs/faithfulness §9): SFC training on train2014, CAMs, CAM evaluation,
# then dense-CRF labels (cam_to_ir_label) as the final pseudo masks, scored against the GT PNGs, and DeepLab-v2
# trained on them, scored on val2014 (81 classes). The IRN
# stage is optional (USE_IRN=True), as the authors skipped it for cost. Every setting below is a variable the
# environment can set (SEED=16 bash run_coco.sh), and extra arguments go to run_sample.py and win over both
# (bash run_coco.sh --seg_iters 50000). Re-running resumes / skips finished work. Partial runs as in run_voc.sh
# (e.g. --train_sfc_pass False --train_seg_pass False: inference and evaluation only).
set -euo pipefail
cd "$(dirname "$0")"
# glibc: keep large CPU buffers in the heap instead of mmap/unmap per forward (~10-15% faster on CPU)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-17179869184} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184}
. ./setup_env.sh   # $PY: PYTHON=..., the active venv/conda env, or the project's .venv (created on first use)

COCO14_ROOT=${COCO14_ROOT:-data/coco2014}   # train2014/, val2014/, annotations/instances_{train,val}2014.json
WORK_DIR=${WORK_DIR:-work/coco}
DEVICE=${DEVICE:-auto}
NPROC=${NPROC:-1}                           # processes through torchrun (one per GPU); TORCHRUN_ARGS for more machines
NUM_WORKERS=${NUM_WORKERS:-8}               # run_sample caps it at cores / processes
BACKBONE_WEIGHTS=${BACKBONE_WEIGHTS:-imagenet}
USE_IRN=${USE_IRN:-False}                   # True: IRN + random walk instead of the CRF labels
SEED=${SEED:-15}                            # SIPE/train_resnet50_SIPE.py COCO branch

# --- SFC training: SIPE's COCO settings (5 epochs, no in-training validation, no best.pth) ---
SFC_BATCH_SIZE=${SFC_BATCH_SIZE:-16}
SFC_NUM_EPOCHES=${SFC_NUM_EPOCHES:-5}
SFC_LR=${SFC_LR:-0.1}
SFC_MOMENTUM=${SFC_MOMENTUM:-1e-4}          # the authors' effective momentum
SFC_DC_OFFSET=${SFC_DC_OFFSET:-auto}        # steps/epoch x 4 bank images x 3 / 80 classes (docs/faithfulness §3.7)
SFC_SELECT_ON_GT=${SFC_SELECT_ON_GT:-False} # the authors never validated on COCO

# --- CAMs and CRF labels (as VOC) ---
CAM_SCALES="${CAM_SCALES:-1.0 0.5 1.5 2.0}"
IR_PROTO_WEIGHT=${IR_PROTO_WEIGHT:-0.7}
IR_BG_FACTOR=${IR_BG_FACTOR:-0.5}
IR_CRF_ITERS=${IR_CRF_ITERS:-12}

# --- segmentation model: DeepLab-v2 ResNet-101, ImageNet init, on the final masks (LPCAM #3/#4 settings) ---
SEG_INIT=${SEG_INIT:-imagenet}              # imagenet (torchvision resnet101 URL) | a .pth | none
SEG_BATCH_SIZE=${SEG_BATCH_SIZE:-10}
SEG_ITERS=${SEG_ITERS:-100000}
SEG_LR=${SEG_LR:-2e-4}
SEG_LOSS=${SEG_LOSS:-balanced}
SEG_MICRO_BATCH=${SEG_MICRO_BATCH:-5}

# --- pictures (python -m misc.visualize): CAM overlays per class, IR labels, pseudo masks, a contact sheet ---
VIS_IMAGES=${VIS_IMAGES:-16}                # first N images of the evaluation list, drawn into $WORK_DIR/vis/; 0 = none

META=$WORK_DIR/meta
PLAN=False                                  # bash run_coco.sh --plan True: what each step would cost, measured here; nothing is run or written
case " $* " in *" --plan True "*) PLAN=True ;; esac
if [ ! -f "$META/cls_labels.npz" ]; then
  if [ "$PLAN" = True ]; then
    echo "the plan counts the images of $META/train2014.txt: build the lists first (they also write the GT PNGs):" >&2
    echo "  $PY -m coco14.make_cls_labels --coco14_root $COCO14_ROOT --out_dir $META" >&2
    exit 2
  fi
  "$PY" -m coco14.make_cls_labels --coco14_root "$COCO14_ROOT" --out_dir "$META"
fi
TRAIN_LIST=$META/train2014.txt

if [ "$USE_IRN" = "True" ]; then
  REFINE=(--train_irn_pass True --make_sem_seg_pass True --eval_masks sem_seg --seg_label_dir "$WORK_DIR/sem_seg")
else
  REFINE=(--eval_masks ir_label --seg_label_dir "$WORK_DIR/ir_label")   # 255 (unconfident) is ignored in training
fi

sfc_run --dataset coco14 \
  --coco14_root "$COCO14_ROOT" --work_dir "$WORK_DIR" --device "$DEVICE" --num_workers "$NUM_WORKERS" --seed $SEED \
  --train_list "$TRAIN_LIST" --infer_list "$TRAIN_LIST" --eval_list "$TRAIN_LIST" \
  --backbone_weights "$BACKBONE_WEIGHTS" \
  --sfc_batch_size $SFC_BATCH_SIZE --sfc_num_epoches $SFC_NUM_EPOCHES --sfc_lr $SFC_LR --sfc_momentum $SFC_MOMENTUM \
  --sfc_dc_offset $SFC_DC_OFFSET --sfc_select_on_gt $SFC_SELECT_ON_GT \
  --cam_scales $CAM_SCALES --cam_eval_source proto_cam cam fused \
  --ir_proto_weight $IR_PROTO_WEIGHT --ir_bg_factor $IR_BG_FACTOR --ir_crf_iters $IR_CRF_ITERS \
  --train_sfc_pass True --make_cam_pass True --eval_cam_pass True --cam_to_ir_label_pass True \
  --seg_init "$SEG_INIT" --seg_batch_size $SEG_BATCH_SIZE --seg_iters $SEG_ITERS --seg_lr $SEG_LR \
  --seg_loss $SEG_LOSS --seg_micro_batch $SEG_MICRO_BATCH --seg_train_list "$TRAIN_LIST" --seg_infer_list "$META/val2014.txt" \
  "${REFINE[@]}" --eval_sem_seg_pass True --train_seg_pass True --make_seg_pass True --eval_seg_pass True \
  "$@"

if [ "$VIS_IMAGES" -gt 0 ] && [ "$PLAN" = False ]; then
  "$PY" -m misc.visualize --work_dir "$WORK_DIR" --list "$TRAIN_LIST" --max_images "$VIS_IMAGES"
fi
