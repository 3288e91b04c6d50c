#!/usr/bin/env bash
# The benchmarks' own environment: our package plus the implementations we compare with
# (titans-pytorch 0.5.5). Kept apart so none of them becomes a dependency of the plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "${TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/pip" install -q titans-pytorch==0.5.5 matplotlib
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/pip" install -q tomlkit==0.15.2
echo "bench environment ready: $VENV"
