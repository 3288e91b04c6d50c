"""bench/long_context_defaults.py: the rule that decides whether the long-context setting
becomes the default, and the TensorBoard reader its 170M stability run relies on."""

import pytest

from bench.long_context_defaults import SEEDS, decision, tensorboard_scalars


def _stored(mag_shift: float, mac_shift: float, seeds=SEEDS) -> dict:
    quality = {}
    for name, shift in (("debug_mag", mag_shift), ("debug_mac", mac_shift)):
        for seed in seeds:
            quality[f"{name}/defaults/{seed}"] = {"val": 1.10 + 0.01 * seed}
            quality[f"{name}/long-context/{seed}"] = {"val": 1.10 + 0.01 * seed + shift}
    return {"quality": quality}


@pytest.mark.parametrize(
    ("mag", "mac", "ok"),
    [(0.0, 0.0, True), (0.009, -0.02, True), (0.011, 0.0, False), (0.0, 0.05, False)],
)
def test_the_setting_passes_only_within_the_tolerance_for_both_models(mag, mac, ok):
    rows, passed = decision(_stored(mag, mac))
    assert passed is ok
    assert [float(r[5]) for r in rows] == pytest.approx([mag, mac], abs=1e-4)


def test_fewer_than_every_seed_never_passes():
    rows, passed = decision(_stored(0.0, 0.0, seeds=SEEDS[:2]))
    assert not passed
    assert [r[-1] for r in rows] == ["2", "2"]


def test_tensorboard_scalars_reads_every_tag_and_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb" / "run"))
    for step in (1, 2, 3):
        writer.add_scalar("grad_norm", 10.0 * step, step)
        writer.add_scalar("titans/layer0/clip_active", 0.25 * step, step)
    writer.close()
    scalars = tensorboard_scalars(str(tmp_path))
    assert scalars["grad_norm"] == {1: 10.0, 2: 20.0, 3: 30.0}
    assert scalars["titans/layer0/clip_active"] == pytest.approx({1: 0.25, 2: 0.5, 3: 0.75})


def test_tensorboard_scalars_leaves_out_earlier_runs(tmp_path):
    import os
    import time

    from torch.utils.tensorboard import SummaryWriter

    old = SummaryWriter(str(tmp_path / "tb" / "old"))
    old.add_scalar("grad_norm", 99.0, 5)
    old.close()
    for events in (tmp_path / "tb" / "old").iterdir():
        os.utime(events, (time.time() - 3600, time.time() - 3600))
    since = time.time() - 1
    new = SummaryWriter(str(tmp_path / "tb" / "new"))
    new.add_scalar("grad_norm", 1.0, 1)
    new.close()
    assert tensorboard_scalars(str(tmp_path), since=since)["grad_norm"] == {1: 1.0}
    assert tensorboard_scalars(str(tmp_path))["grad_norm"] == {1: 1.0, 5: 99.0}
