#!/usr/bin/env bash
# SFC on PASCAL VOC 2012: the authors' pipeline with their defaults (docs/faithfulness.md):
# SFC training, CAMs, CAM evaluation, IR labels, IRN, pseudo masks, pseudo-mask evaluation, then DeepLab-v2
# trained on the pseudo masks and scored on VOC val (docs/deeplab.md). CAMs, IR labels, IRN and pseudo masks cover
# train_aug (the masks DeepLab trains on); their evaluation uses VOC train (GT).
# Every setting below is a variable with the authors' default that the environment can set (SFC_LR=0.05 bash
# run_voc.sh; SEED too), and extra arguments go to run_sample.py and win over both (bash run_voc.sh --sfc_lr 0.05).
# Re-running is safe: training resumes from its checkpoint, inference steps skip finished images. Partial runs:
#   bash run_voc.sh --train_sfc_pass False --train_irn_pass False --train_seg_pass False   # inference and evaluation
#       only, from the checkpoints in $WORK_DIR/ckpt or given ones (--sfc_weights, --irn_weights, --seg_weights)
#   bash run_voc.sh --train_irn_pass False --make_sem_seg_pass False --eval_sem_seg_pass False \
#       --train_seg_pass False --make_seg_pass False --eval_seg_pass False            # SFC and its CAMs only
#   VOC12_TEST_ROOT=/data/VOC2012_test bash run_voc.sh ...                            # also the VOC test export
#   NPROC=4 bash run_voc.sh                                                           # 4 GPUs (torchrun)
# Loader workers: NUM_WORKERS per process (the authors' 8), at most the cores / NPROC.
set -euo pipefail
cd "$(dirname "$0")"
# glibc: keep large CPU buffers in the heap instead of mmap/unmap per forward (~10-15% faster on CPU)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-17179869184} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184}
. ./setup_env.sh   # $PY: PYTHON=..., the active venv/conda env, or the project's .venv (created on first use)

VOC12_ROOT=${VOC12_ROOT:-data/VOCdevkit/VOC2012} # JPEGImages/, Annotations/, SegmentationClass/, [SegmentationClassAug/]
WORK_DIR=${WORK_DIR:-work/voc}
DEVICE=${DEVICE:-auto}                      # auto | cpu | cuda
NPROC=${NPROC:-1}                           # processes through torchrun (one per GPU); TORCHRUN_ARGS for more machines
NUM_WORKERS=${NUM_WORKERS:-8}               # SFC/train_resnet50_SFC.py:90 (run_sample caps it at cores / processes)
BACKBONE_WEIGHTS=${BACKBONE_WEIGHTS:-imagenet} # imagenet (torchvision URL) | /path/resnet50-19c8e357.pth
SEED=${SEED:-10}                            # SFC/train_resnet50_SFC.py:99

# --- SFC training (SFC/train_resnet50_SFC.py, SIPE/tool/torchutils.py) ---
SFC_BATCH_SIZE=${SFC_BATCH_SIZE:-16}        # loader batch; +4 bank images per step
SFC_NUM_EPOCHES=${SFC_NUM_EPOCHES:-6}       # 661 steps/epoch on train_aug -> 3966 steps
SFC_LR=${SFC_LR:-0.1}                       # backbone; new layers x10
SFC_WEIGHT_DECAY=${SFC_WEIGHT_DECAY:-1e-4}
SFC_MOMENTUM=${SFC_MOMENTUM:-1e-4}          # effective momentum of the authors' PolyOptimizerSGD (wd passed as momentum)
SFC_POLY_POWER=${SFC_POLY_POWER:-0.9}
SFC_CROP_SIZE=${SFC_CROP_SIZE:-512}
SFC_BANK_SAMPLES=${SFC_BANK_SAMPLES:-4}
SFC_PDW_WEIGHT=${SFC_PDW_WEIGHT:-1.6}       # L_PDW (lossGSC)
SFC_WDW_WEIGHT=${SFC_WDW_WEIGHT:-0.8}       # L_WDW (cross-scale consistency)
SFC_DC_OFFSET=${SFC_DC_OFFSET:-396}         # 660*4*3/20, the authors' constant
SFC_SELECT_ON_GT=${SFC_SELECT_ON_GT:-True}  # authors' best.pth protocol: validates on train PIXEL GT every 300 steps
SFC_VAL_FREQ=${SFC_VAL_FREQ:-300}

# --- make_cam / eval_cam (SFC/make_cam.py, SFC/eval_cam.py) ---
CAM_SCALES="${CAM_SCALES:-1.0 0.5 1.5 2.0}"
CAM_BG_OFFSET=${CAM_BG_OFFSET:-0.4}         # bg + 0.4, fg x 2 (the "pad 0.4" line)
CAM_EVAL_SOURCE="${CAM_EVAL_SOURCE:-proto_cam cam fused}" # the authors score proto_cam (first = headline)

# --- cam_to_ir_label (SFC/cam2ir.py; CRF of SIPE/tool/imutils.py) ---
IR_PROTO_WEIGHT=${IR_PROTO_WEIGHT:-0.7}     # F = cam + 0.7 proto_cam
IR_BG_FACTOR=${IR_BG_FACTOR:-0.5}           # background x0.5 in the second CRF pass
IR_CRF_ITERS=${IR_CRF_ITERS:-12}            # authors' branch (SIPE: 10)

# --- train_irn (SFC/train_irn.py) ---
IRN_CROP_SIZE=${IRN_CROP_SIZE:-512}
IRN_BATCH_SIZE=${IRN_BATCH_SIZE:-32}
IRN_NUM_EPOCHES=${IRN_NUM_EPOCHES:-3}
IRN_LR=${IRN_LR:-0.1}                       # edge branch; displacement branch x10
IRN_MOMENTUM=${IRN_MOMENTUM:-1e-4}          # the same positional-momentum quirk
IRN_RESCALE="${IRN_RESCALE:-0.5 1.0}"       # the authors pass (0.5, 1.0, 1.5); only [0.5, 1.0) is used

# --- make_sem_seg (SFC/make_seg_labels.py) ---
SEM_SEG_PROTO_WEIGHT=${SEM_SEG_PROTO_WEIGHT:-0.3} # F = cam + 0.3 proto_cam
SEM_SEG_POWER=${SEM_SEG_POWER:-1.3}         # applied twice for the second walk (F^1.69)
SEM_SEG_BG_VALUE=${SEM_SEG_BG_VALUE:-0.25}
BETA=${BETA:-10}
EXP_TIMES=${EXP_TIMES:-8}                   # T^256

# --- segmentation model: DeepLab-v2 ResNet-101 on the pseudo masks (docs/deeplab.md; the paper's last stage) ---
SEG_RECIPE=${SEG_RECIPE:-imagenet}          # imagenet: the paper's ImageNet init | deeplab_coco: deeplab-pytorch voc12.yaml (pass SEG_INIT)
# the recipe's own values (run_sample.py SEG_RECIPES; docs/deeplab.md): left empty, the recipe decides; set, they win
SEG_INIT=${SEG_INIT:-}                      # recipe: imagenet (torchvision resnet101 URL) / none given | a .pth | none
SEG_BATCH_SIZE=${SEG_BATCH_SIZE:-}          # recipe: 10 / 5 (x ITER_SIZE 2)
SEG_ITERS=${SEG_ITERS:-}                    # recipe: 30000 / 20000
SEG_LOSS=${SEG_LOSS:-}                      # recipe: balanced (background and foreground CE averaged) / ce
SEG_LR=${SEG_LR:-2.5e-4}                    # backbone; ASPP weights x10, biases x20
SEG_CROP_SIZE=${SEG_CROP_SIZE:-321}
SEG_MICRO_BATCH=${SEG_MICRO_BATCH:-5}       # images per forward/backward (same gradients): 9.6 GB on CPU; 0 = all 10 (16.8 GB)
VOC12_TEST_ROOT=${VOC12_TEST_ROOT:-}        # VOC2012 test devkit (JPEGImages/, ImageSets/Segmentation/test.txt): server export

# --- pictures (python -m misc.visualize): CAM overlays per class, IR labels, pseudo masks, a contact sheet ---
VIS_IMAGES=${VIS_IMAGES:-16}                # first N images of the evaluation list, drawn into $WORK_DIR/vis/; 0 = none

META=$WORK_DIR/meta
PLAN=False                                  # bash run_voc.sh --plan True: what each step would cost, measured here; nothing is run or written
case " $* " in *" --plan True "*) PLAN=True ;; esac
if [ ! -f "$META/cls_labels.npz" ]; then
  if [ "$PLAN" = True ]; then  # the lists the plan counts, built in a temporary folder
    META=$(mktemp -d); trap 'rm -rf "$META"' EXIT
    "$PY" -m voc12.make_cls_labels --voc12_root "$VOC12_ROOT" --out_dir "$META" > /dev/null
  else
    "$PY" -m voc12.make_cls_labels --voc12_root "$VOC12_ROOT" --out_dir "$META"
  fi
fi
SEG_OWN=()   # the recipe's values that were set
for pair in SEG_INIT:seg_init SEG_BATCH_SIZE:seg_batch_size SEG_ITERS:seg_iters SEG_LOSS:seg_loss; do
  name=${pair%%:*}
  [ -z "${!name}" ] || SEG_OWN+=("--${pair#*:}" "${!name}")
done
TRAIN_LIST=$META/train_aug.txt
[ -f "$TRAIN_LIST" ] || { echo "no SegmentationClassAug/: training on VOC train only"; TRAIN_LIST=$META/train.txt; }

sfc_run \
  --voc12_root "$VOC12_ROOT" --work_dir "$WORK_DIR" --device "$DEVICE" --num_workers "$NUM_WORKERS" --seed $SEED \
  --train_list "$TRAIN_LIST" --infer_list "$TRAIN_LIST" --eval_list "$META/train.txt" \
  --backbone_weights "$BACKBONE_WEIGHTS" \
  --sfc_batch_size $SFC_BATCH_SIZE --sfc_num_epoches $SFC_NUM_EPOCHES --sfc_lr $SFC_LR \
  --sfc_weight_decay $SFC_WEIGHT_DECAY --sfc_momentum $SFC_MOMENTUM --sfc_poly_power $SFC_POLY_POWER \
  --sfc_crop_size $SFC_CROP_SIZE --sfc_bank_samples $SFC_BANK_SAMPLES \
  --sfc_pdw_weight $SFC_PDW_WEIGHT --sfc_wdw_weight $SFC_WDW_WEIGHT --sfc_dc_offset $SFC_DC_OFFSET \
  --sfc_select_on_gt $SFC_SELECT_ON_GT --sfc_val_freq $SFC_VAL_FREQ \
  --cam_scales $CAM_SCALES --cam_bg_offset $CAM_BG_OFFSET --cam_eval_source $CAM_EVAL_SOURCE \
  --ir_proto_weight $IR_PROTO_WEIGHT --ir_bg_factor $IR_BG_FACTOR --ir_crf_iters $IR_CRF_ITERS \
  --irn_crop_size $IRN_CROP_SIZE --irn_batch_size $IRN_BATCH_SIZE --irn_num_epoches $IRN_NUM_EPOCHES \
  --irn_lr $IRN_LR --irn_momentum $IRN_MOMENTUM --irn_rescale $IRN_RESCALE \
  --sem_seg_proto_weight $SEM_SEG_PROTO_WEIGHT --sem_seg_power $SEM_SEG_POWER --sem_seg_bg_value $SEM_SEG_BG_VALUE \
  --beta $BETA --exp_times $EXP_TIMES \
  --seg_recipe $SEG_RECIPE "${SEG_OWN[@]}" \
  --seg_lr $SEG_LR --seg_crop_size $SEG_CROP_SIZE --seg_micro_batch $SEG_MICRO_BATCH \
  --seg_train_list "$TRAIN_LIST" --seg_infer_list "$META/val.txt" \
  --train_sfc_pass True --make_cam_pass True --eval_cam_pass True --cam_to_ir_label_pass True \
  --train_irn_pass True --make_sem_seg_pass True --eval_sem_seg_pass True \
  --train_seg_pass True --make_seg_pass True --eval_seg_pass True --cls_labels "$META/cls_labels.npz" \
  "$@"

if [ -n "$VOC12_TEST_ROOT" ]; then   # predictions on the VOC test set, in the evaluation server's layout
  sfc_run --voc12_root "$VOC12_ROOT" --work_dir "$WORK_DIR" --device "$DEVICE" --num_workers "$NUM_WORKERS" \
    --seg_infer_root "$VOC12_TEST_ROOT" --seg_infer_list "$VOC12_TEST_ROOT/ImageSets/Segmentation/test.txt" \
    --seg_export_voc_test True --make_seg_pass True "$@"
fi

if [ "$VIS_IMAGES" -gt 0 ] && [ "$PLAN" = False ]; then
  "$PY" -m misc.visualize --work_dir "$WORK_DIR" --list "$META/train.txt" --max_images "$VIS_IMAGES"
fi
