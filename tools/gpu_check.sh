#!/usr/bin/env bash
# The first GPU run, within 10 minutes on an H100/H200-class GPU (limits 260 + 80 + 60 + 90 + 2 x 50 s), telling what
# a full run needs to know:
#   0. summary.txt: torch, CUDA, cuDNN, the GPU's name, compute capability, memory and bf16 support, the cores, and
#      whether pydensecrf imports;
#   1. tools/benchmark.py --device cuda: time, images/s and peak GPU memory (torch.cuda.max_memory_allocated) of
#      every network stage at the authors' sizes in IEEE float32, TF32, bf16 and fp16 (--amp), channels-last (the
#      CUDA default), each run in its own process under its own time limit (tools/benchmark.py GPU_LIMITS);
#   2. the SFC step and make_cam again in NCHW (is channels-last, the CUDA default, faster?);
#   3. make_seg's CRF beside the GPU with 1 and 8 CRF processes (images/s of the CPU side);
#   4. tools/full_plan.py: run_voc.sh and run_coco.sh --plan True at full size on this GPU (the time of a full run);
#   5. tools/amp_check.py on generated data: CAM labels of float32 against bf16 / fp16 (>= 99.9 % agreement), eval_cam
#      mIoU within 0.1 point, and 200 SFC training steps of the demo recipe in both precisions.
# A part that fails is reported with its exit status and the last lines of its stderr (summary.txt and its own
# report), a part that passes its time limit as such; the other parts still run.
# Reports (7 files: summary.txt, benchmark.txt, benchmark_nchw.txt, benchmark_crf.txt, plan.txt, amp_bf16.txt,
# amp_fp16.txt) go to $OUT (default $WORK); the JSON of each report, checkpoints, CAMs and the data to $WORK.
# Usage: bash tools/gpu_check.sh                       (the CUDA build of torch must be in the environment)
#        PYTHON=python3 bash tools/gpu_check.sh        (an interpreter that already holds torch etc., as it is: e.g. a
#                                                       machine without internet; without pydensecrf the CRF parts
#                                                       report a failure, the rest runs)
set -uo pipefail
cd "$(dirname "$0")/.."
. ./setup_env.sh
WORK=${WORK:-work/gpu_check}
OUT=${OUT:-$WORK}
mkdir -p "$WORK" "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA device: this check needs a GPU" | tee -a "$SUMMARY" >&2
  exit 1
fi
"$PY" -c 'from misc.torchutils import environment_line; print(environment_line("cuda"))' 2>&1 | tee -a "$SUMMARY"
t0=$(date +%s)

# part NAME LIMIT REPORT CMD...: run CMD with its stdout in REPORT, its stderr kept; say how it ended in summary.txt
part() {
  local name=$1 limit=$2 report=$3; shift 3
  local start=$(date +%s) err="$WORK/$name.stderr"
  timeout "$limit" "$@" > >(tee "$report") 2> >(tee "$err" >&2)
  local rc=$?
  sleep 1  # let the tee processes finish writing
  if [ $rc -eq 0 ]; then
    echo "$name: done in $(( $(date +%s) - start )) s" >> "$SUMMARY"
  elif [ $rc -eq 124 ]; then
    echo "$name: stopped at its time limit of $limit s (partial results in $(basename "$report"))" >> "$SUMMARY"
  else
    { echo "$name: FAILED with exit status $rc after $(( $(date +%s) - start )) s; last lines of its stderr:"
      tail -n 15 "$err" | sed 's/^/    /'; } >> "$SUMMARY"
  fi
}

# every stage in its own process under its own limit (benchmark.py GPU_LIMITS): 6 stages x 4 precisions + 1
part benchmark 260 "$OUT/benchmark.txt" "$PY" tools/benchmark.py --device cuda --amp none tf32 bf16 fp16 --repeats 2 \
  --stages train_step make_cam train_irn_step make_sem_seg train_seg_step make_seg --json "$WORK/benchmark.json"
part benchmark_nchw 80 "$OUT/benchmark_nchw.txt" "$PY" tools/benchmark.py --device cuda --amp none bf16 --repeats 2 \
  --channels_last False --stages train_step make_cam --json "$WORK/benchmark_nchw.json"
part benchmark_crf 60 "$OUT/benchmark_crf.txt" "$PY" tools/benchmark.py --device cuda --repeats 1 \
  --stages make_seg_crf --crf_workers 1 8 --crf_images 24
part plan 90 "$OUT/plan.txt" "$PY" -m tools.full_plan --device cuda --data_dir "$WORK/full_plan"
for amp in bf16 fp16; do
  # one work dir for both: the float32 run (training curve, checkpoint) is made once and shared
  part "amp_$amp" 50 "$OUT/amp_$amp.txt" "$PY" -m tools.amp_check --device cuda --amp "$amp" --steps 200 \
    --num_workers 4 --work_dir "$WORK/amp" --data_dir "$WORK/data"
  mv "$WORK/amp/amp_check.json" "$WORK/amp_$amp.json" 2>/dev/null || true
done
echo "gpu_check: $(( $(date +%s) - t0 )) s; reports in $OUT" | tee -a "$SUMMARY"
cat "$SUMMARY"
