"""The main job's config, through torchrun: it trains, validates on the held-out stories,
logs memory statistics, and saves a checkpoint that loads back into a freshly built model."""

from devtools.debug_run import CONFIG, STEPS, VALIDATE_EVERY, checkpoint_of
from devtools.paths import REPO
from devtools.run_checks import (
    assert_checkpoint_loads,
    assert_loss_falls,
    assert_tensorboard_has_memory_statistics,
    assert_validates,
)
from devtools.torchrun import FAST
from titans_plugin.torchtitan022.build import build_model, load_dcp_checkpoint, load_job_config, train_args


def test_loss_is_finite_and_falls(debug_mac_run):
    assert_loss_falls(debug_mac_run[1], STEPS)


def test_validation_runs_on_its_schedule_with_a_finite_loss(debug_mac_run):
    assert_validates(debug_mac_run[1], VALIDATE_EVERY, STEPS)


def test_tensorboard_has_memory_statistics(debug_mac_run):
    assert_tensorboard_has_memory_statistics(debug_mac_run[0])


def test_checkpoint_loads_into_a_fresh_model(debug_mac_run):
    args = train_args(load_job_config(f"{REPO}/{CONFIG}", *FAST))
    assert_checkpoint_loads(checkpoint_of(str(debug_mac_run[0])), args, build_model, load_dcp_checkpoint)
