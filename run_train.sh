#!/usr/bin/env bash
# The main job. On a fresh machine: sets up .venv, then trains CONFIG_FILE (default: a
# small MAC hybrid on the embedded corpus, CPU, ~400 steps in under ten minutes).
#   NGPU=2 ./run_train.sh                                   # FSDP over 2 processes
#   CONFIG_FILE=train_configs/debug_mag.toml ./run_train.sh --training.steps 50
# Like torchtitan's launcher: NGPU and CONFIG_FILE from the environment, extra arguments
# go to torchtitan as overrides.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
NGPU="${NGPU:-1}"
CONFIG_FILE="${CONFIG_FILE:-train_configs/debug_mac.toml}"
LOG_RANK="${LOG_RANK:-0}"
exec torchrun --nproc_per_node="$NGPU" --rdzv_backend c10d --rdzv_endpoint="localhost:0" \
    --local-ranks-filter "$LOG_RANK" --role rank --tee 3 \
    -m torchtitan.train --job.config_file "$CONFIG_FILE" "$@"
