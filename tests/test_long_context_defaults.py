"""bench/long_context_defaults.py: the rule that decides whether the long-context setting
becomes the default, and the TensorBoard reader its 170M stability run relies on."""

import math

import pytest

from bench.long_context_defaults import SEEDS, candidates, decision, label, overrides_of, tensorboard_scalars, verdict


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
    rows, outcome = decision(_stored(mag, mac))
    assert outcome == ("met" if ok else "not met")
    assert [float(r[5]) for r in rows] == pytest.approx([mag, mac], abs=1e-4)


def test_fewer_than_every_seed_is_incomplete_and_unpaired_values_are_marked():
    stored = _stored(0.0, 0.0, seeds=SEEDS[:2])
    stored["quality"]["debug_mag/defaults/2"] = {"val": 1.5}  # no long-context partner
    rows, outcome = decision(stored)
    assert outcome == f"incomplete (2 of {len(SEEDS)} seeds)"
    assert [r[-1] for r in rows] == ["2", "2"]
    assert rows[0][1].endswith("(1.5000)")
    assert rows[0][3] == "1.1050"  # the mean leaves the unpaired run out


def test_a_gate_start_is_a_setting_of_its_own_judged_against_the_defaults():
    assert label("long-context", None) == "long-context"
    gated = label("long-context", 0.02)
    assert gated == "long-context, gate_scale_init 0.02"
    assert overrides_of("long-context", 0.02) == ["forget_init=1e-5", "max_grad_norm=4", "gate_scale_init=0.02"]
    assert overrides_of("defaults", None) == []
    stored = _stored(0.0, 0.0)
    for name in ("debug_mag", "debug_mac"):
        stored["quality"][f"{name}/{gated}/0"] = {"val": 1.2}  # one seed so far, 0.1 above
    assert candidates(stored) == ["long-context", gated]
    rows, outcome = decision(stored, gated)
    assert outcome == f"incomplete (1 of {len(SEEDS)} seeds)"
    assert [float(r[5]) for r in rows] == pytest.approx([0.1, 0.1])
    assert decision(stored)[1] == "met"  # the long-context rows are unchanged by it


def test_a_difference_of_exactly_the_tolerance_passes():
    assert verdict([1.11], [1.12]) == (pytest.approx(0.01), True)
    assert not verdict([1.11], [1.1201])[1]


def test_a_setting_that_diverges_fails_and_defaults_that_diverge_do_not_fail_it():
    assert not verdict([1.1, 1.1], [1.1, math.nan])[1]
    assert not verdict([1.1, 1.1], [1.1, math.inf])[1]
    assert verdict([1.1, math.nan], [1.2, 1.2])[1]


def test_tensorboard_scalars_reads_every_tag_and_step(tmp_path):
    pytest.importorskip("tensorboard")
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

    pytest.importorskip("tensorboard")
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
