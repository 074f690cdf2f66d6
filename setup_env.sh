#!/usr/bin/env bash
# Sourced by every recipe (`. ./setup_env.sh`): picks the Python the project runs with and exports it as $PY.
#   PYTHON=/path/to/python    that interpreter, as it is (its environment must hold requirements.txt)
#   an activated venv / conda environment that holds the requirements: used as it is
#   otherwise the project's .venv, created on first use and re-filled when requirements.txt changes
# Also defines sfc_run: run_sample.py, through torchrun when NPROC > 1 (one process per GPU, or per share of the
# CPU cores), with TORCHRUN_ARGS for several machines (e.g. "--nnodes 2 --node_rank 0 --master_addr HOST
# --master_port 29500"); a plain single process otherwise.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_needs='import torch, numpy, cv2, PIL, imageio, tqdm, pydensecrf, matplotlib'
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && python -c "$_needs" >/dev/null 2>&1; then
  PY="$(command -v python)"
else
  if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ]; then
    echo "[setup] the active environment (${VIRTUAL_ENV:-$CONDA_PREFIX}) lacks the requirements: using $_here/.venv"
  fi
  _venv="${SFC_VENV:-$_here/.venv}"
  if [ ! -x "$_venv/bin/python" ]; then
    echo "[setup] creating $_venv"
    python3 -m venv "$_venv"
  fi
  _stamp="$_venv/.requirements.sha256"
  _want="$(sha256sum "$_here/requirements.txt" | cut -d' ' -f1)"
  if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ]; then
    echo "[setup] installing requirements (first time: about 2 minutes)"
    "$_venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$_venv/bin/python" -m pip install -q -r "$_here/requirements.txt"
    echo "$_want" > "$_stamp"
  fi
  . "$_venv/bin/activate"
  PY="$_venv/bin/python"
fi
export PY

sfc_run() {
  if [ "${NPROC:-1}" -gt 1 ] || [ -n "${TORCHRUN_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    "$PY" -m torch.distributed.run ${TORCHRUN_ARGS:---standalone} --nproc_per_node "${NPROC:-1}" run_sample.py "$@"
  else
    "$PY" run_sample.py "$@"
  fi
}
