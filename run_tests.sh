#!/usr/bin/env bash
# The tests, on both torchtitan stacks. On a fresh machine: sets up each stack's virtual
# environment the way run_train.sh does (scripts/setup_env.sh), then
#   0.2.2 (.venv: torch 2.13.0 CPU, torchtitan 0.2.2): ruff check, ruff format --check,
#         mypy, the unit tests (tests/) and the torchrun tests (integration_tests/torchtitan022)
#         (the GPU acceptance script's dry run is left to 0.3.0: one stack is enough for it)
#   0.3.0 (.venv-tt030: torch 2.14.1, torchtitan 0.3.0): the unit tests but the Triton
#         interpreter's and the ahead-of-time compile's (they depend on triton, not on
#         torchtitan), the 0.3 adapter's tests, its torchrun tests and the GPU acceptance
#         script's dry run (the stack a GPU machine runs today)
# Extra arguments go to pytest in both, e.g. the development loop:
#   ./run_tests.sh -m "not slow"               # no torchrun, interpreter or compile tests
#   STACKS=022 ./run_tests.sh -m "not slow"    # one stack
set -euo pipefail
cd "$(dirname "$0")"
STACKS="${STACKS:-022 030}"
PYTEST=(python -m pytest -q -p no:cacheprovider --durations=20)
for stack in $STACKS; do
    echo "=== torchtitan stack $stack ==="
    start=$SECONDS
    (
        export TT="$stack" TITANS_EXTRAS=eval
        source scripts/setup_env.sh
        if [ "$stack" = 022 ]; then
            ruff check .
            ruff format --check .
            mypy
            # pytest exits 5 when it collects no test: a failure here too (set -e)
            "${PYTEST[@]}" tests integration_tests/torchtitan022 --ignore=tests/torchtitan030 \
                --ignore=tests/test_gpu_acceptance.py "$@"
        else
            "${PYTEST[@]}" tests integration_tests/torchtitan030 --ignore=tests/torchtitan022 \
                --ignore=tests/test_triton_kernels.py --ignore=tests/test_kernel_compile.py "$@"
        fi
    )
    echo "=== torchtitan stack $stack: passed in $((SECONDS - start)) s ==="
done
