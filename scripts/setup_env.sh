# Sourced by run_train.sh and run_tests.sh: create a virtual environment for one torchtitan
# stack once, install the project into it, and activate it.
#   TT=022 (default)  .venv        torch 2.13.0 CPU build, torchtitan 0.2.2
#   TT=030            .venv-tt030  torch 2.14.1 (the CUDA build; runs on CPU), torchtitan 0.3.0
# Torch is installed first and on its own (TORCH_SPEC overrides it, e.g. on a GPU cluster);
# the project's torch range is then already satisfied and pulls nothing. Re-installs only
# when pyproject.toml or the extras change. TITANS_EXTRAS adds extras (run_tests.sh: eval,
# for lm-evaluation-harness; training never needs it).
set -euo pipefail
TT="${TT:-022}"
case "$TT" in
    022) VENV="${TITANS_VENV:-.venv}"; TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"; EXTRA="torchtitan-0.2" ;;
    030) VENV="${TITANS_VENV:-.venv-tt030}"; TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"; EXTRA="torchtitan-0.3" ;;
    *) echo "TT must be 022 or 030, got '$TT'" >&2; exit 2 ;;
esac
EXTRAS="$EXTRA,test${TITANS_EXTRAS:+,$TITANS_EXTRAS}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.installed-$( (cat pyproject.toml; echo "$EXTRAS") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "[setup] installing $TORCH_SPEC and titans_plugin[$EXTRAS] into $VENV"
    python -m pip install -q --upgrade pip
    python -m pip install -q "$TORCH_SPEC"
    python -m pip install -q -e ".[$EXTRAS]"
    python - <<'PY'
import torch, torchtitan, titans_plugin  # noqa: F401
from importlib.metadata import version
release = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
assert release >= (2, 11), f"torch {torch.__version__} is older than 2.11"
print(f"[setup] torch {torch.__version__}, torchtitan {version('torchtitan')}, titans_plugin {titans_plugin.__version__}")
PY
    touch "$stamp"
fi
