"""The main job's config trained briefly through torchrun (FAST sizes), shared by the
torchrun tests that check the run itself and those that evaluate its checkpoint."""

import os

from devtools.torchrun import FAST, run_torchrun

CONFIG = "train_configs/debug_mac.toml"
STEPS = 12
VALIDATE_EVERY = 6


def train_debug_mac(out: str) -> str:
    """Train into dump folder `out` (validating every VALIDATE_EVERY steps, a checkpoint at
    STEPS); the log. Raises with the log's tail if the run fails."""
    validation = ["--validation.enable", "--validation.freq", str(VALIDATE_EVERY), "--validation.steps", "2"]
    steps = ["--training.steps", str(STEPS), "--checkpoint.interval", str(STEPS)]
    rc, log = run_torchrun(CONFIG, [*FAST, *validation, *steps, "--job.dump_folder", out])
    assert rc == 0, log[-4000:]
    return log


def checkpoint_of(out: str) -> str:
    return os.path.join(out, "checkpoint", f"step-{STEPS}")
