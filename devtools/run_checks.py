"""What a torchtitan run of the main job must show, on either torchtitan stack: a falling
loss, validation on its schedule, the memory's statistics in TensorBoard, and a checkpoint
that loads into a freshly built model."""

import glob
import math
import os
import re

import torch

from devtools.torchrun import losses

VAL_RE = re.compile(r"validate step:\s*(\d+)\s+\S*loss:\s*([-\w.]+)")
MEMORY_STATS = ("theta_mean", "eta_mean", "alpha_mean", "surprise_rms", "weight_rms", "clip_active", "clip_factor_mean")


def assert_loss_falls(log: str, steps: int) -> None:
    curve = losses(log)
    assert sorted(curve) == list(range(1, steps + 1)), curve
    assert all(math.isfinite(v) for v in curve.values())
    assert sum(curve[s] for s in range(steps - 2, steps + 1)) / 3 < curve[1] - 1.0, curve


def assert_validates(log: str, every: int, steps: int) -> None:
    """torchtitan validates after the first step and then every `every` steps."""
    val = {int(m.group(1)): float(m.group(2)) for m in VAL_RE.finditer(log)}
    assert sorted(val) == [1, *range(every, steps + 1, every)], log[-3000:]
    assert all(math.isfinite(v) for v in val.values()), val
    assert val[steps] < val[1] - 1.0, val  # the held-out loss falls with training


def assert_tensorboard_has_memory_statistics(dump_folder) -> None:
    events = glob.glob(os.path.join(dump_folder, "tb", "**", "events.out.tfevents.*"), recursive=True)
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.dirname(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "loss_metrics/global_avg_loss" in tags, tags
    for stat in MEMORY_STATS:
        assert f"titans/layer0/{stat}" in tags, tags


def assert_checkpoint_loads(checkpoint: str, args, build_model, load_dcp_checkpoint) -> None:
    """Every tensor of a fresh model changes when the trained checkpoint loads into it."""
    assert os.path.exists(os.path.join(checkpoint, ".metadata"))
    model = build_model(args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_dcp_checkpoint(model, checkpoint)
    changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    assert len(changed) == len(before), "every trained tensor should differ from a fresh init"
    assert torch.isfinite(model(torch.randint(0, args.vocab_size, (1, 64)))).all()
