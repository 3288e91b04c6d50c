"""The main job's config, through torchrun: it trains, validates on the held-out stories,
logs memory statistics, and saves a checkpoint that loads back into a freshly built model."""

import os

import pytest

from devtools.paths import REPO
from devtools.run_checks import (
    assert_checkpoint_loads,
    assert_loss_falls,
    assert_tensorboard_has_memory_statistics,
    assert_validates,
)
from devtools.torchrun import FAST, run_torchrun
from titans_plugin.torchtitan022.build import build_model, load_dcp_checkpoint, load_job_config, train_args

CONFIG = "train_configs/debug_mac.toml"
STEPS = 12
VALIDATE_EVERY = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default_run")
    validation = ["--validation.enable", "--validation.freq", str(VALIDATE_EVERY), "--validation.steps", "2"]
    steps = ["--training.steps", str(STEPS), "--checkpoint.interval", str(STEPS)]
    rc, log = run_torchrun(CONFIG, [*FAST, *validation, *steps, "--job.dump_folder", str(out)])
    assert rc == 0, log[-4000:]
    return out, log


def test_loss_is_finite_and_falls(run):
    assert_loss_falls(run[1], STEPS)


def test_validation_runs_on_its_schedule_with_a_finite_loss(run):
    assert_validates(run[1], VALIDATE_EVERY, STEPS)


def test_tensorboard_has_memory_statistics(run):
    assert_tensorboard_has_memory_statistics(run[0])


def test_checkpoint_loads_into_a_fresh_model(run):
    args = train_args(load_job_config(f"{REPO}/{CONFIG}", *FAST))
    assert_checkpoint_loads(os.path.join(run[0], "checkpoint", f"step-{STEPS}"), args, build_model, load_dcp_checkpoint)
