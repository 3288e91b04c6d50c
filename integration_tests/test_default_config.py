"""The main job's config, through torchrun: it trains, logs memory statistics, and saves a
checkpoint that loads back into a freshly built model."""

import glob
import math
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp

from torchrun_utils import FAST, losses, run_torchrun

CONFIG = "train_configs/debug_mac.toml"
STEPS = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default_run")
    rc, log = run_torchrun(CONFIG, [*FAST, "--training.steps", str(STEPS), "--checkpoint.interval",
                                    str(STEPS), "--job.dump_folder", str(out)])
    assert rc == 0, log[-4000:]
    return out, log


def test_loss_is_finite_and_falls(run):
    _, log = run
    curve = losses(log)
    assert sorted(curve) == list(range(1, STEPS + 1)), curve
    assert all(math.isfinite(v) for v in curve.values())
    first = curve[1]
    last = sum(curve[s] for s in range(STEPS - 2, STEPS + 1)) / 3
    assert last < first - 1.0, curve


def test_tensorboard_has_memory_statistics(run):
    out, _ = run
    events = glob.glob(os.path.join(out, "tb", "*", "events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.dirname(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "loss_metrics/global_avg_loss" in tags
    for stat in ("theta_mean", "eta_mean", "alpha_mean", "surprise_rms", "weight_rms"):
        assert f"titans/layer0/{stat}" in tags, tags


def test_checkpoint_loads_into_a_fresh_model(run):
    out, _ = run
    ckpt = os.path.join(out, "checkpoint", f"step-{STEPS}")
    assert os.path.exists(os.path.join(ckpt, ".metadata"))
    import titans_plugin  # noqa: F401  registers the flavors
    from titans_plugin.adapter.flavors import TITANS_FLAVORS
    from titans_plugin.config import TitansConfig
    from titans_plugin.model import TitansTransformer
    import copy, tomllib

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), CONFIG), "rb") as f:
        titans = TitansConfig(**tomllib.load(f)["titans"])
    args = copy.deepcopy(TITANS_FLAVORS["debugmodel"])
    args.titans, args.max_seq_len = titans, 256
    model = TitansTransformer(args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = model.state_dict()
    dcp.load(state, checkpoint_id=ckpt)
    model.load_state_dict(state)
    changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    assert len(changed) == len(before), "every trained tensor should differ from a fresh init"
    tokens = torch.randint(0, args.vocab_size, (1, 64))
    assert torch.isfinite(model(tokens)).all()
