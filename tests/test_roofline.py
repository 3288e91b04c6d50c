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
    # the tile work divides by 4; the [C, C] products do not
    small = 3 * 2 * 64 * 64 * 64 / (roofline.PEAK_TFLOPS * 1e12 / roofline.SMS) * 1e6
    assert four["time_us"] == pytest.approx((one["time_us"] - small) / 4 + small)
    assert 3 < four["pct_peak"] / one["pct_peak"] < 4


def test_a_split_past_the_sms_cannot_launch_and_one_program_runs_in_waves(monkeypatch):
    monkeypatch.setattr(roofline, "MEETING_US", 0.0)
    assert roofline.split_forward(**DEFAULT, BH=33, split=4)["launches"]  # 132 programs
    assert roofline.split_forward(**DEFAULT, BH=34, split=4) == {"launches": False, "programs": 136}
    one_wave = roofline.split_forward(**DEFAULT, BH=132, split=1)
    two_waves = roofline.split_forward(**DEFAULT, BH=133, split=1)  # not cooperative: it queues
    assert two_waves["time_us"] == pytest.approx(2 * one_wave["time_us"])
