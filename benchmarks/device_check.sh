#!/usr/bin/env bash
# The accelerator check (benchmarks/device_check.py): one table, at most ~8 minutes on one H100/H200.
#   benchmarks/device_check.sh                 # on the GPU machine
#   benchmarks/device_check.sh --tiny          # the same rows at tiny sizes on the CPU
# Extra arguments go to device_check.py (--json FILE, --only ROWS).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 benchmarks/device_check.py "$@"
