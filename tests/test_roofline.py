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


SPILLS = {"fwd": 4, "bwd": 128}


def test_the_one_program_design_is_the_model_of_todays_kernels():
    for BH in (32, 128):
        want = roofline.predict(64, 64, 256, 16, 4, True, SPILLS, BH)["pct_peak"]
        assert roofline.design("one", 1, BH, SPILLS)["pct_peak"] == pytest.approx(want)


def test_the_cluster_keeps_the_state_on_chip_where_its_shard_fits():
    one, eight = roofline.design("one", 1, 32, SPILLS), roofline.design("cluster", 8, 32, SPILLS)
    assert eight["l2_kib"] < one["l2_kib"] / 5  # only the chunk's inputs, outputs and checkpoints move
    # its eighth of W1, W2, S1, S2 and of their gradients (the backward), the operands, two slot sets, scratch
    operands = 2 * (3 * 64 * 64 + 6 * 64 * 32 + 2 * 64 * 32)
    assert eight["shared"] == 2 * (256 * 1024) // 8 + operands + 2 * 64 * 64 * 4 + 16384
    # one round per [C, D] partial: a slot set holds one
    assert eight["barriers"] == roofline.PARTIALS["fwd"] + roofline.PARTIALS["bwd"]
    split = roofline.design("split", 4, 32, SPILLS)  # global slots hold a meeting's partials whole
    assert split["barriers"] == roofline.EXCHANGES["fwd"] + roofline.EXCHANGES["bwd"]
    four = roofline.design("cluster", 4, 32, SPILLS)  # a quarter of the state and of its gradient: too much
    assert not four["launches"]
    assert four["why"] == "264 KiB of shared memory > 227"
    in_l2 = roofline.design("cluster_l2_gradient", 4, 32, SPILLS)  # the gradient's quarter through L2
    assert in_l2["shared"] == 200 * 1024
    assert in_l2["l2_kib"] == pytest.approx(775 + 512, abs=0.5)  # 4 CTAs' inputs and outputs, + the gradient


def test_the_shared_memory_model_is_calibrated_on_the_built_forward():
    """The built forward's allocations (its state shards, 11 operand buffers, three [C, D]
    and two [C] slots) and the compiler's scratch make its compiled 221,696 B."""
    allocated = 4 * 4 * 64 * 64 + 11 * 64 * 64 * 2 + 3 * 64 * 64 * 4 + 2 * 64 * 4
    assert allocated + roofline.CLUSTER_SCRATCH == roofline.CLUSTER_FORWARD["shared"] == 221_696
    assert roofline._operands(64, 64, 64) == 11 * 64 * 64 * 2


def test_the_exchanges_add_to_the_time_and_the_budget_is_what_reaches_25_percent():
    free = roofline.design("cluster_l2_gradient", 4, 32, SPILLS, cluster_us=0.0)
    slow = roofline.design("cluster_l2_gradient", 4, 32, SPILLS, cluster_us=1.0)
    assert free["bound"] == "L2"  # the gradient's traffic
    assert slow["bound"] == "exchange"
    rounds = roofline.PARTIALS["fwd"] + roofline.PARTIALS["bwd"]
    assert slow["time_us"] - free["time_us"] == pytest.approx(rounds * 1.0)  # one wave of 128 CTAs
    at_budget = roofline.design("cluster_l2_gradient", 4, 32, SPILLS, cluster_us=free["exchange_budget_us"])
    assert at_budget["pct_peak"] == pytest.approx(25.0)


def test_a_plain_split_past_the_sms_cannot_launch_and_a_bad_kind_is_named():
    assert roofline.design("split", 4, 33, SPILLS)["launches"]  # 132 programs
    assert roofline.design("split", 4, 34, SPILLS) == {
        "launches": False,
        "programs": 136,
        "shared": None,
        "why": "136 programs > 132 SMs",
    }
    with pytest.raises(ValueError, match="'one', 'split', 'cluster', 'cluster_l2_gradient'"):
        roofline.design("ring", 4, 32, SPILLS)


def test_a_measured_exchange_replaces_the_assumed_one():
    rows = [
        dict(exchange="global", payload="64x64 fp32", split=4, us=3.0),
        dict(exchange="global", payload="barrier only", split=4, us=2.0),
        dict(exchange="cluster", payload="64x64 fp32, one slot set", split=4, us=0.5),
        dict(exchange="cluster", payload="64x64 fp32, two slot sets", split=4, us=0.25),
    ]
    text = roofline.exchange_calibration({"exchange": {"rows": rows}}, SPILLS)
    assert f"| global meeting, 4 programs, 64x64 fp32 (us) | {roofline.MEETING_US:.2f} | 3.00 |" in text
    assert "| cluster exchange, 4 CTAs, 64x64 fp32, two slot sets (us) | 1.00 | 0.25 |" in text
    want = roofline.design("cluster_l2_gradient", 4, 32, SPILLS, 3.0, 0.25)["pct_peak"]
    assert f"| cluster, state on chip, its gradient in L2 | 4 | 1,287 | 516 | 10.75 | 200 | {want:.1f}% (L2) |" in text
    assert "CTAs resident" not in text  # the run measured no residency: the model's assumption stands
    assert roofline.exchange_calibration({}, SPILLS) == ""


def test_measured_cluster_residency_replaces_whole_clusters_on_every_sm():
    """A GPU that holds fewer clusters than 132 SMs' worth (clusters cannot span GPCs) runs
    more waves: the redrawn table uses the count measured at the kernel's shared memory."""
    built = roofline.CLUSTER_FORWARD["shared"]
    rows = [dict(exchange="cluster", payload="64x64 fp32, two slot sets", split=4, us=1.0)]
    occupancy = [
        dict(ctas=4, shared=196608, clusters=32, ctas_resident=128),
        dict(ctas=4, shared=built, holder=roofline.BUILT_FORWARD, clusters=30, ctas_resident=120),
    ]
    assert roofline.resident_ctas(4, built, occupancy) == 120
    rebuilt = [dict(o, shared=built - 256) if "holder" in o else o for o in occupancy]  # a smaller build
    assert roofline.resident_ctas(4, built, rebuilt, built=True) == 120  # its own row, whatever its size
    assert roofline.resident_ctas(4, 184 * 1024, occupancy) == 128  # the smallest size asked that holds it
    assert roofline.resident_ctas(4, 200 * 1024, occupancy) == 120
    assert roofline.resident_ctas(4, built) == 132  # assumed: nothing measured
    assert roofline.resident_ctas(8, built, occupancy) == 128  # nothing measured at 8 CTAs
    assumed = roofline.design("cluster_forward", 4, 32, SPILLS)
    fewer = roofline.design("cluster_forward", 4, 32, SPILLS, occupancy=occupancy)
    assert fewer["time_us"] > assumed["time_us"]  # the forward's 128 CTAs in 2 waves of 120
    full = roofline.design("cluster_l2_gradient", 4, 32, SPILLS, occupancy=occupancy)
    assumed_full = roofline.design("cluster_l2_gradient", 4, 32, SPILLS)
    assert full["pct_peak"] == pytest.approx(assumed_full["pct_peak"] / 2, rel=0.05)  # 2 waves
    text = roofline.exchange_calibration({"exchange": {"rows": rows, "occupancy": occupancy}}, SPILLS)
    name = "CTAs resident, cluster forward (built) + one-program backward"
    assert f"| {name}, 4 CTAs of {built:,} B (asked at {built:,} B) | 132 | 120 |" in text
    name = "CTAs resident, cluster, state on chip, its gradient in L2"
    assert f"| {name}, 4 CTAs of 204,800 B (asked at {built:,} B) | 132 | 120 |" in text
    assert "8 CTAs of" not in text  # residency measured at 4 CTAs only
    nothing = [dict(ctas=4, shared=built, clusters=0, ctas_resident=0)]
    assert roofline.design("cluster_forward", 4, 32, SPILLS, occupancy=nothing)["launches"] is False
