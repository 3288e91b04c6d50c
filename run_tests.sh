#!/usr/bin/env bash
# The tests. On a fresh machine: sets up .venv the same way as run_train.sh, then runs the
# linter (ruff check and format check), the unit tests (tests/) and the torchrun
# integration tests (integration_tests/).
# Extra arguments go to pytest (e.g. ./run_tests.sh -k streaming).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
ruff check .
ruff format --check .
# pytest exits 5 when it collects no test: that is a failure here too.
python -m pytest -q -p no:cacheprovider --durations=30 "$@"
