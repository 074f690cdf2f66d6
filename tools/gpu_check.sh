#!/usr/bin/env bash
# The first GPU run: what a full run needs to know, in at most 7 minutes of wall time (start-up included), each part
# under its own limit (the limits below add up to the budget; a part cut by its limit keeps what it measured). The
# limits come from the parts' times on an H200 (docs/benchmarks.md); parts, in order of value:
#   setup         the interpreter (the machine's own python3 by default, or PYTHON=), pydensecrf from carried wheels
#                 when the machine lacks it, and summary.txt's first lines: torch, CUDA, cuDNN, the GPU, its memory;
#   device_check  tools/device_check.py: the ten steps on a small generated set on the CPU (the reference) and on
#                 CUDA, stage by stage (CAM arrays, labels, masks, mIoUs, first losses) within stated bounds, and
#                 train_sfc + make_cam through `torchrun --nproc_per_node 1` (the several-GPU path); 2 min on an H200;
#   benchmark     tools/benchmark.py: time, images/s and peak GPU memory of every network stage at the recipes'
#                 full sizes and batches in TF32 and bf16 (one process per precision; IEEE float32 is what the plan
#                 below measures); about 75 s per precision;
#   plan          tools/full_plan.py: run_voc.sh --plan True at full size (the time of a full VOC run); 75 s.
#                 The COCO plan takes 90 s more: PARTS=plan PLAN_DATASET=coco (or both) in a second run.
# Reports (summary.txt, setup.txt, device_check.txt, device_check.json, benchmark.txt, benchmark.json, plan.txt) go
# to $OUT (default $WORK); data, checkpoints and logs to $WORK (default work/gpu_check).
# Usage:
#   bash tools/gpu_check.sh                                   every part
#   PARTS=device_check,benchmark bash tools/gpu_check.sh      some parts (a rerun of the ones that failed)
#   DC_PARTS="chain torchrun" AMPS="none bf16" BENCH_ARGS="--stages train_seg_step" PLAN_DATASET=coco ...
#                                                             narrower parts (device_check --parts, precisions,
#                                                             more benchmark flags, the plan's dataset)
#   bash tools/gpu_check.sh --limits                          the parts, their limits and the budget
# The GPU machine may lack pydensecrf (a compiled package) and have no internet: build a wheel for its Python here
# (docs/benchmarks.md, "A GPU machine without pydensecrf") and put it in ./.whl (or WHEELS=dir); without one the CRF
# steps are reported as not run and the rest is measured. GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 runs the script's
# logic on the CPU at tiny sizes (its test).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=420                         # seconds of wall time for the whole check
START_S=10                         # the script's own start and summary lines, outside the parts
LIMITS=${GPU_CHECK_LIMITS:-"setup:15 device_check:125 benchmark:160 plan:100"}   # seconds; sum + START_S <= BUDGET
if [ "${1:-}" = "--limits" ]; then
  echo "budget $BUDGET"; echo "start $START_S"
  for p in $LIMITS; do echo "${p%%:*} ${p#*:}"; done
  exit 0
fi
limit_of() { for p in $LIMITS; do [ "${p%%:*}" = "$1" ] && echo "${p#*:}"; done; }

PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TINY=${GPU_CHECK_TINY:-0}
PARTS=${PARTS:-device_check,benchmark,plan}
WORK=${WORK:-work/gpu_check}
OUT=${OUT:-$WORK}
WHEELS=${WHEELS:-.whl}
mkdir -p "$WORK" "$OUT"
WORK=$(cd "$WORK" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
t0=$(date +%s)
failed=0

# part NAME REPORT CMD...: CMD under the part's limit, stdout to REPORT (and the screen), stderr kept in $WORK;
# summary.txt says how it ended
part() {
  local name=$1 report=$2; shift 2
  local limit start err rc
  limit=$(limit_of "$name")
  start=$(date +%s) err="$WORK/$name.stderr"
  timeout --kill-after=5 "$limit" "$@" > >(tee "$report") 2> >(tee "$err" >&2)
  rc=$?
  sleep 1  # let the tee processes finish writing
  if [ $rc -eq 0 ]; then
    echo "$name: done in $(( $(date +%s) - start )) s" >> "$SUMMARY"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    failed=1
    echo "$name: STOPPED at its time limit of $limit s (what it measured before is in $(basename "$report"))" >> "$SUMMARY"
  else
    failed=1
    { echo "$name: FAILED with exit status $rc after $(( $(date +%s) - start )) s; last lines of its stderr:"
      tail -n 12 "$err" | sed 's/^/    /'; } >> "$SUMMARY"
  fi
}
on() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --- setup ----------------------------------------------------------------------------------------------------
setup() {
  if ! "$PY" -c 'import torch, numpy, cv2, PIL, imageio, tqdm' 2>/dev/null; then
    echo "setup: $PY lacks torch/numpy/opencv/pillow/imageio/tqdm: give an interpreter that has them (PYTHON=...)" >&2
    return 1
  fi
  if ! "$PY" -c 'import pydensecrf.densecrf' 2>/dev/null; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "$WHEELS"/*.whl >&2 || return 1
      echo "setup: installed the carried wheels of $WHEELS into $WORK/site: $(cd "$WHEELS" && ls ./*.whl | tr '\n' ' ')"
    else
      echo "setup: pydensecrf is missing and no wheel was carried ($WHEELS): the CRF steps are not measured"
    fi
  else
    echo "setup: $PY has every package the check needs"
  fi
}
export -f setup
export PY WHEELS WORK
part setup "$OUT/setup.txt" bash -c setup
if [ -d "$WORK/site" ]; then export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"; fi
export PYTHON="$PY"   # for the recipes that tools/full_plan.py runs: this interpreter, as it is
cat "$OUT/setup.txt" >> "$SUMMARY"
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA device: this check needs a GPU (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1))" \
    | tee -a "$SUMMARY" >&2
  exit 1
fi
"$PY" -c "from misc.torchutils import environment_line; print(environment_line('$DEVICE'))" 2>&1 | tee -a "$SUMMARY"
if [ "$DEVICE" = cuda ]; then
  "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")' | tee -a "$SUMMARY"
fi

# --- the parts ------------------------------------------------------------------------------------------------
if [ "$TINY" = 1 ]; then   # the script's logic at tiny sizes (its test, on the CPU)
  DC_PARTS="reference fixed"
  BENCH_SIZES=(--width 8 --crop 96 --batch 2 --bank 2 --irn_batch 2 --irn_micro_batch 1 --seg_batch 2 --seg_crop 65
               --seg_micro_batch 1 --width_px 80 --height 60 --scales 1.0 --threads 1)
  read -r -a AMPS <<< "${AMPS:-none}"
else
  DC_PARTS=${DC_PARTS:-"reference chain fixed torchrun"}   # tools/device_check.py --parts
  BENCH_SIZES=()          # the recipes' sizes: tools/benchmark.py's defaults
  read -r -a AMPS <<< "${AMPS:-tf32 bf16}"
fi
# shellcheck disable=SC2206
BENCH_EXTRA=(${BENCH_ARGS:-})   # more benchmark flags (e.g. --stages train_step)
N_AMP=${#AMPS[@]}
on device_check && part device_check "$OUT/device_check.txt" "$PY" -m tools.device_check --device "$DEVICE" \
  --work_dir "$WORK/device_check" --parts $DC_PARTS $([ "$TINY" = 1 ] && echo --tiny)
cp "$WORK/device_check/device_check.json" "$OUT/" 2>/dev/null
# each precision's process gets its share of the part's limit, so that one slow precision leaves the others theirs
on benchmark && part benchmark "$OUT/benchmark.txt" "$PY" tools/benchmark.py --device "$DEVICE" --amp "${AMPS[@]}" \
  --one_process True --repeats 2 --timeout $(( ($(limit_of benchmark) - 5) / N_AMP )) \
  --stages train_step make_cam train_irn_step make_sem_seg train_seg_step make_seg --make_seg_crf False \
  "${BENCH_SIZES[@]}" \
  "${BENCH_EXTRA[@]}" --json "$OUT/benchmark.json"
on plan && part plan "$OUT/plan.txt" "$PY" -m tools.full_plan --device "$DEVICE" --data_dir "$WORK/full_plan" \
  --dataset "${PLAN_DATASET:-voc}"

echo "gpu_check: $(( $(date +%s) - t0 )) s in all; reports in $OUT" | tee -a "$SUMMARY"
cat "$SUMMARY"
exit $failed
