#!/usr/bin/env bash
# The paper's SFC ablation (plain CAM, +IBR, +L_PDW, +L_WDW, DC weights, L_WDW alone) in one table:
# python -m tools.ablation. Default: the demo's generated data and SFC recipe (stand-in backbone, width 8),
# seed 10, about 20 minutes on 2 CPU cores (six SFC trainings of the demo's 450 steps, their CAMs and scores); rows
# already trained are reused.
#   bash run_ablation.sh --seeds 10 11 12 --rows plain sfc          # SFC against the plain CAM over 3 seeds
#   bash run_ablation.sh --voc12_root DATA --meta_dir META --recipe none -- --backbone_weights imagenet ...
set -euo pipefail
cd "$(dirname "$0")"
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-17179869184} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184}
. ./setup_env.sh
"$PY" -m tools.ablation "$@"
