"""The exchange microbenchmarks (bench/exchange_bench.py) on CPU: the global meeting equals
its closed form in the threaded interpreter grid at 2 and 4 programs per group; the dry run
checks every row and says why the cluster part did not run; a wrong row is reported as
wrong; and the Gluon cluster exchange compiles for sm_90 to distributed-shared-memory loads
and cluster barriers with no spills."""

import os
import subprocess
import sys

import pytest
import torch
import triton.language as tl

from devtools.paths import REPO

needs_poll = pytest.mark.skipif(
    not hasattr(tl, "atomic_poll") or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton >= 3.9 (tl.atomic_poll) and its interpreter",
)


def test_the_closed_form_equals_the_rounds_summed_one_by_one():
    from bench.exchange_bench import expected

    p = torch.randn(3, 4, 2, 8, generator=torch.Generator().manual_seed(0))
    rounds = 5
    direct = sum((p.double() + r % 2).sum(1) for r in range(rounds))
    assert torch.allclose(expected(p, rounds), direct)


@needs_poll
@pytest.mark.parametrize("split", [2, 4])
def test_the_global_meeting_equals_its_closed_form_in_the_threaded_grid(split):
    from bench.exchange_bench import expected, global_meeting
    from devtools.threaded_grid import threaded_grid

    p = torch.randn(2, split, 2, 16, generator=torch.Generator().manual_seed(split))
    with threaded_grid():
        out, ok = global_meeting(p, rounds=3)
    assert ok.eq(1).all()
    want = expected(p, 3)
    for s in range(split):  # every program holds the group's sum, bit for bit the same
        assert torch.equal(out[:, s], out[:, 0])
    assert (out[:, 0].double() - want).abs().max().item() < 1e-4


@needs_poll
def test_the_dry_run_checks_every_row_and_says_why_the_cluster_part_did_not_run():
    from bench.exchange_bench import measure, report
    from devtools.threaded_grid import threaded_grid

    with threaded_grid():
        result = measure(torch.device("cpu"), dry=True)
    assert {(r["exchange"], r["payload"]) for r in result["rows"]} == {
        ("global", "64x64 fp32"),
        ("global", "barrier only"),
    }
    assert all(r["correct"] for r in result["rows"])
    assert "no interpreter path" in result["not_run"]["cluster"]
    text = report(result)
    assert "| global | 64x64 fp32 | 2 | 2 |" in text
    assert "Not run (cluster): Gluon kernels run only on a GPU" in text


def test_a_wrong_row_is_reported_as_wrong():
    from bench.exchange_bench import report

    row = dict(exchange="cluster", payload="64x64 fp32", split=4, groups=32, us=1.0, launch_us=900.0)
    row |= dict(trusted=False, correct=False)
    text = report({"rows": [row], "not_run": {}})
    assert "| cluster | 64x64 fp32 | 4 | 32 | 1.000 (host-bound?) | 900 | NO |" in text
    occupancy = [dict(ctas=4, shared=131072, holder="a prototype", clusters=30, ctas_resident=120)]
    text = report({"rows": [row], "occupancy": occupancy, "not_run": {"occupancy": "no driver query"}})
    assert "| 4 | 131,072 | a prototype | 30 | 120 |" in text
    assert "Not run (occupancy): no driver query" in text


def test_the_dry_run_refuses_to_start_outside_the_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "bench.exchange_bench", "--dry-run"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "TRITON_INTERPRET=1" in proc.stderr


@needs_poll
def test_a_meeting_that_times_out_stops_meeting(monkeypatch):
    """The plain interpreter runs program 0 alone: its first wait times out, and it must
    not wait out every later round too (a broken GPU launch would take rounds x 10 s)."""
    import time

    from bench import exchange_bench

    monkeypatch.setattr(exchange_bench, "TIMEOUT_NS", 20_000_000)
    p = torch.randn(1, 2, 2, 16, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    _, ok = exchange_bench.global_meeting(p, rounds=200)  # 200 x 20 ms of waits without the stop
    assert ok[0, 0] == 0
    assert time.perf_counter() - t0 < 2.0


COMPILE = """
from bench.exchange_bench import compile_cluster_exchange
from titans_plugin.kernels.compile_report import _ptxas_report
for ctas in (2, 4, 8):
    for mode in (2, 1, 0):
        k = compile_cluster_exchange(ctas, mode)
        ptx, r = k.asm["ptx"], _ptxas_report(k.asm["ptx"], 90)
        print(ctas, mode, k.metadata.num_ctas, k.metadata.shared, r["spill_stores"],
              ptx.count("ld.shared::cluster"), ptx.count("barrier.cluster.arrive"))
"""


@pytest.mark.slow  # ahead-of-time compiles (ptxas), in a process without the interpreter
def test_the_cluster_exchange_compiles_for_sm90_to_dsmem_loads_and_cluster_barriers():
    from bench.exchange_bench import gluon_problem

    if gluon_problem():
        pytest.skip(gluon_problem())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run([sys.executable, "-c", COMPILE], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[int(x) for x in line.split()] for line in proc.stdout.splitlines()]
    assert len(rows) == 9
    slot = 64 * 64 * 4  # each CTA's slot of a [ctas, 64, 64] fp32 set
    for ctas, mode, num_ctas, shared, spills, remote_loads, barriers in rows:
        assert num_ctas == ctas
        assert spills <= 16  # 16 B at 8 CTAs with two sets (the whole [8, 64, 64] read per thread)
        if mode:  # the others' slots read remotely; the loop's barriers and the compiler's exit one
            assert shared == mode * slot
            assert remote_loads > 0
            assert barriers >= 3
        else:
            assert remote_loads == 0
            assert barriers >= 2


_OCCUPANCY_SIZES = """
import json
from bench.exchange_bench import occupancy_sizes
from titans_plugin.kernels.gluon_backend.cluster import compile_cluster
built = {ctas: compile_cluster(ctas, 64, "silu", True).metadata.shared for ctas in (2, 4)}
print(json.dumps({ctas: [occupancy_sizes(ctas), built.get(ctas)] for ctas in (2, 4, 8)}))
"""


@pytest.mark.slow  # compiles the Gluon cluster forward for sm_90 (no GPU needed; outside the interpreter)
def test_occupancy_is_asked_at_the_built_cluster_kernels_shared_memory():
    import json

    from bench.exchange_bench import CLUSTER_SHARED
    from bench.roofline import BUILT_FORWARD, CLUSTER_FORWARD
    from titans_plugin.kernels.gluon_backend.cluster import SHARED_LIMIT_SM90, gluon_problem

    if gluon_problem():  # the kernel is written against one triton (the 0.3.0 stack's torch pins another)
        pytest.skip(gluon_problem())

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _OCCUPANCY_SIZES], env=env, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for ctas in ("2", "4"):
        sizes, shared = result[ctas]
        assert [int(b) for b, holder in sizes.items() if holder == BUILT_FORWARD] == [shared]
        assert 0 < shared <= SHARED_LIMIT_SM90
    # the roofline model's size of the built forward, and the calibration of its shared-memory
    # model on it, follow the kernel: a change to the kernel's buffers shows here
    assert result["4"][1] == CLUSTER_FORWARD["shared"]
    assert {int(b): h for b, h in result["8"][0].items()} == CLUSTER_SHARED  # no cluster forward of 8 CTAs


def test_a_cluster_kernel_that_does_not_compile_drops_only_its_own_occupancy_row(monkeypatch, capsys):
    from bench.exchange_bench import CLUSTER_SHARED, occupancy_sizes
    from titans_plugin.kernels.gluon_backend import cluster

    def broken(*args, **kwargs):
        raise RuntimeError("no such triton")

    monkeypatch.setattr(cluster, "compile_cluster", broken)
    assert occupancy_sizes(4) == CLUSTER_SHARED
    assert "the cluster forward's own size not asked (RuntimeError: no such triton)" in capsys.readouterr().out
