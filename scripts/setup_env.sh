# Sourced by run_train.sh and run_tests.sh: create .venv once and install the project.
# Torch is installed first and on its own, as the CPU build (TORCH_SPEC overrides, e.g. on
# a GPU cluster); pyproject's torch range is then already satisfied and pulls nothing.
# Re-installs only when pyproject.toml changes.
set -euo pipefail
VENV="${TITANS_VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "[setup] installing $TORCH_SPEC and titans_plugin into $VENV"
    python -m pip install -q --upgrade pip
    python -m pip install -q "$TORCH_SPEC"
    python -m pip install -q -e ".[test]"
    python - <<'PY'
import torch, torchtitan, titans_plugin  # noqa: F401
release = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
assert release >= (2, 11), f"torch {torch.__version__} is older than 2.11"
print(f"[setup] torch {torch.__version__}, torchtitan ok, titans_plugin {titans_plugin.__version__}")
PY
    touch "$stamp"
fi
