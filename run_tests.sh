#!/usr/bin/env bash
# Sets up .venv if needed and runs the test suite (CPU only, no downloads). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
. ./setup_env.sh
"$PY" -m pytest -q tests "$@"
