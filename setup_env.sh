#!/usr/bin/env bash
# Creates .venv (Python 3) and installs requirements.txt into it; re-installs only when requirements.txt
# changes. Source it (`. setup_env.sh`) to get the environment activated.
set -e
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_venv="${SFC_VENV:-$_here/.venv}"
_py="${PYTHON:-python3}"
if [ ! -x "$_venv/bin/python" ]; then
  echo "[setup] creating $_venv"
  "$_py" -m venv "$_venv"
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
