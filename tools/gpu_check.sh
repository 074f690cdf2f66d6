#!/usr/bin/env bash
# One GPU check in about 5 minutes of GPU time (an H100/H200-class GPU):
#   1. tools/benchmark.py --device cuda: images/s and peak GPU memory (torch.cuda.max_memory_allocated) of every
#      network stage at the authors' sizes, in IEEE float32, TF32, bf16 and fp16 (--amp), channels-last (the CUDA
#      default); then the SFC step and make_cam again in NCHW, to check that default;
#   2. tools/amp_check.py on generated data: CAM labels of float32 against bf16 / fp16 (>= 99.9 % agreement),
#      eval_cam mIoU within 0.1 point, and 200 SFC training steps of the demo recipe in both precisions.
# Reports (7 files: benchmark.json/.txt, benchmark_nchw.json/.txt, amp_bf16.txt, amp_fp16.txt, summary.txt) go to
# $OUT (default $WORK); checkpoints, CAMs, amp_check's JSON and the generated data to $WORK (default work/gpu_check).
# Usage: bash tools/gpu_check.sh                       (the CUDA build of torch must be in the environment)
#        PYTHON=python3 bash tools/gpu_check.sh        (an interpreter that already holds torch etc., as it is:
#                                                       e.g. a machine without internet; without pydensecrf the
#                                                       two CRF stages of the benchmark report a failure, the rest runs)
set -euo pipefail
cd "$(dirname "$0")/.."
. ./setup_env.sh
WORK=${WORK:-work/gpu_check}
OUT=${OUT:-$WORK}
mkdir -p "$WORK" "$OUT"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device: this check needs a GPU"; print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$OUT/summary.txt"
t0=$(date +%s)
timeout 120 "$PY" tools/benchmark.py --device cuda --amp none tf32 bf16 fp16 --repeats 2 \
  --stages train_step make_cam train_irn_step make_sem_seg train_seg_step make_seg --json "$OUT/benchmark.json" \
  | tee "$OUT/benchmark.txt" || echo "benchmark stopped at its time limit (partial results above)" | tee -a "$OUT/summary.txt"
timeout 50 "$PY" tools/benchmark.py --device cuda --amp none bf16 --repeats 2 --channels_last False \
  --stages train_step make_cam --json "$OUT/benchmark_nchw.json" \
  | tee "$OUT/benchmark_nchw.txt" || echo "NCHW benchmark stopped at its time limit" | tee -a "$OUT/summary.txt"
for amp in bf16 fp16; do
  # one work dir for both: the float32 run (training curve, checkpoint) is made once and shared
  timeout 65 "$PY" -m tools.amp_check --device cuda --amp "$amp" --steps 200 --num_workers 4 --work_dir "$WORK/amp" \
    --data_dir "$WORK/data" | tee "$OUT/amp_$amp.txt" || echo "amp_check $amp stopped at its time limit" | tee -a "$OUT/summary.txt"
  mv "$WORK/amp/amp_check.json" "$WORK/amp_$amp.json" 2>/dev/null || true
done
echo "gpu_check: $(( $(date +%s) - t0 )) s; reports in $OUT" | tee -a "$OUT/summary.txt"
