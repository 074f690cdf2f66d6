#!/usr/bin/env bash
# Sets up .venv if needed and runs the test suite (CPU only, no downloads). Extra args go to pytest.
# The tests run in one pytest process per usable core (pytest-xdist), each with one thread: the networks here are
# small, so a second thread gains a process little, while a second process nearly halves the suite's time.
# `bash run_tests.sh -n 0` runs them in this one process instead, with torch's default threads.
set -euo pipefail
cd "$(dirname "$0")"
. ./setup_env.sh
if [[ " $* " == *" -n 0 "* ]]; then
  "$PY" -m pytest -q tests "$@"
elif ! "$PY" -c 'import xdist' 2>/dev/null; then
  echo "[tests] pytest-xdist is not installed in $PY's environment: one process (pip install -r requirements.txt)"
  "$PY" -m pytest -q tests "$@"
else
  cores=$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')
  OMP_NUM_THREADS=1 "$PY" -m pytest -q -n "$cores" tests "$@"
fi
