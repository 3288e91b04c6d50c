"""torchtitan 0.3.0, the main job's config function through torchrun: it trains with a
falling loss, validates on the held-out stories, logs the memory's statistics to
TensorBoard, and saves a DCP checkpoint that loads back into a freshly built model."""

import os

import pytest

from devtools.run_checks import (
    assert_checkpoint_loads,
    assert_loss_falls,
    assert_tensorboard_has_memory_statistics,
    assert_validates,
)
from devtools.torchrun import run_torchrun
from titans_plugin.torchtitan030.build import build_model, load_dcp_checkpoint, load_job_config, train_args

STEPS = 12
VALIDATE_EVERY = 6
FAST = ["--training.seq_len", "256", "--training.local_batch_size", "4", "--metrics.log_freq", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default_run")
    validation = ["--validation.enable", "--validation.freq", str(VALIDATE_EVERY), "--validation.steps", "2"]
    steps = ["--training.steps", str(STEPS), "--checkpoint.interval", str(STEPS), "--lr_scheduler.warmup_steps", "2"]
    rc, log = run_torchrun("train_configs/debug_mac.toml", [*FAST, *validation, *steps, "--job.dump_folder", str(out)])
    assert rc == 0, log[-4000:]
    return out, log


def test_loss_is_finite_and_falls(run):
    assert_loss_falls(run[1], STEPS)


def test_validation_runs_on_its_schedule_with_a_finite_loss(run):
    assert_validates(run[1], VALIDATE_EVERY, STEPS)


def test_tensorboard_has_memory_statistics(run):
    assert_tensorboard_has_memory_statistics(run[0])


def test_checkpoint_loads_into_a_fresh_model(run):
    args = train_args(load_job_config("titans_plugin:titans_debug_mac", *FAST))
    assert_checkpoint_loads(os.path.join(run[0], "checkpoint", f"step-{STEPS}"), args, build_model, load_dcp_checkpoint)
