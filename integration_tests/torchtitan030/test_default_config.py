"""torchtitan 0.3.0, the main job's config function through torchrun: it trains with a
falling loss, validates on the held-out stories, logs the memory's statistics to
TensorBoard, and saves a DCP checkpoint that loads back into a freshly built model."""

import glob
import math
import os
import re

import pytest
import torch

from devtools.torchrun import losses, run_torchrun
from titans_plugin.torchtitan030.build import build_model, load_dcp_checkpoint, load_job_config, train_args

STEPS = 12
VALIDATE_EVERY = 6
VAL_RE = re.compile(r"validate step:\s*(\d+)\s+\S*loss:\s*([-\w.]+)")
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
    _, log = run
    curve = losses(log)
    assert sorted(curve) == list(range(1, STEPS + 1)), curve
    assert all(math.isfinite(v) for v in curve.values())
    assert sum(curve[s] for s in range(STEPS - 2, STEPS + 1)) / 3 < curve[1] - 1.0, curve


def test_validation_runs_on_its_schedule_with_a_finite_loss(run):
    _, log = run
    val = {int(m.group(1)): float(m.group(2)) for m in VAL_RE.finditer(log)}
    # torchtitan validates after the first step and then every `freq` steps
    assert sorted(val) == [1, *range(VALIDATE_EVERY, STEPS + 1, VALIDATE_EVERY)], log[-3000:]
    assert all(math.isfinite(v) for v in val.values()), val
    assert val[STEPS] < val[1] - 1.0, val  # the held-out loss falls with training


def test_tensorboard_has_memory_statistics(run):
    out, _ = run
    events = glob.glob(os.path.join(out, "tb", "**", "events.out.tfevents.*"), recursive=True)
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.dirname(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "loss_metrics/global_avg_loss" in tags, tags
    for stat in ("theta_mean", "eta_mean", "alpha_mean", "surprise_rms", "weight_rms"):
        assert f"titans/layer0/{stat}" in tags, tags


def test_checkpoint_loads_into_a_fresh_model(run):
    out, _ = run
    ckpt = os.path.join(out, "checkpoint", f"step-{STEPS}")
    assert os.path.exists(os.path.join(ckpt, ".metadata"))
    args = train_args(load_job_config("titans_plugin:titans_debug_mac", *FAST))
    model = build_model(args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_dcp_checkpoint(model, ckpt)
    changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    assert len(changed) == len(before), "every trained tensor should differ from a fresh init"
    assert torch.isfinite(model(torch.randint(0, args.vocab_size, (1, 64)))).all()
