"""The roofline model's split-forward term (bench/roofline.py): what the split divides,
what it adds, and where its waves begin."""

import pytest

from bench import roofline

DEFAULT = dict(C=64, D=64, H=256, tile=16, every=4, clip=True, spills={"fwd": 0})


def test_one_program_has_no_meetings_and_the_split_pays_for_three():
    one = roofline.split_forward(**DEFAULT, BH=32, split=1)
    four = roofline.split_forward(**DEFAULT, BH=32, split=4)
    assert (one["meetings_us"], one["exchange_kib"]) == (0, 0)
    assert four["meetings_us"] == 3 * roofline.MEETING_US  # pre-error, clip norms, retrieval
    assert four["exchange_kib"] == 5 * 4 * 64 * (2 * 64 + 2) / 1024  # its partial written, four read


def test_with_free_meetings_and_ample_l2_the_split_divides_the_tensor_time(monkeypatch):
    monkeypatch.setattr(roofline, "MEETING_US", 0.0)
    monkeypatch.setattr(roofline, "L2_PER_SM_GBS", 1e9)
    monkeypatch.setattr(roofline, "L2_TOTAL_GBS", 1e12)
    one = roofline.split_forward(**DEFAULT, BH=32, split=1)
    four = roofline.split_forward(**DEFAULT, BH=32, split=4)
    assert four["bound"] == one["bound"] == "tensor"
    assert four["time_us"] == pytest.approx(one["time_us"] / 4)
    assert four["pct_peak"] == pytest.approx(4 * one["pct_peak"])


def test_programs_past_the_sms_run_in_waves(monkeypatch):
    monkeypatch.setattr(roofline, "MEETING_US", 0.0)
    fits = roofline.split_forward(**DEFAULT, BH=33, split=4)  # 132 programs: one wave
    spills_over = roofline.split_forward(**DEFAULT, BH=34, split=4)  # 136: two
    assert spills_over["time_us"] > 1.9 * fits["time_us"]
