#!/usr/bin/env bash
# The main job. On a fresh machine: sets up .venv, then trains CONFIG_FILE (default: a
# small MAC hybrid on the embedded corpus, CPU, ~400 steps in under ten minutes).
#   NGPU=2 ./run_train.sh                                   # FSDP over 2 processes
#   CONFIG_FILE=train_configs/debug_mag.toml ./run_train.sh --training.steps 50
#   TT=030 ./run_train.sh                                   # the same job on torchtitan 0.3.0
# Like torchtitan's launcher: NGPU and CONFIG_FILE from the environment, extra arguments
# go to torchtitan as overrides (in the installed torchtitan's spelling).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
NGPU="${NGPU:-1}"
CONFIG_FILE="${CONFIG_FILE:-train_configs/debug_mac.toml}"
LOG_RANK="${LOG_RANK:-0}"
if [ "${TT:-022}" = 030 ]; then  # the config function that trains the same TOML
    name="$(basename "$CONFIG_FILE" .toml)"
    CONFIG_ARGS=(--module titans_plugin --config "titans_$name")
else
    CONFIG_ARGS=(--job.config_file "$CONFIG_FILE")
fi
exec torchrun --nproc_per_node="$NGPU" --rdzv_backend c10d --rdzv_endpoint="localhost:0" \
    --local-ranks-filter "$LOG_RANK" --role rank --tee 3 \
    -m torchtitan.train "${CONFIG_ARGS[@]}" "$@"
