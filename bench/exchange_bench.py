"""What a meeting of the split designs' programs costs on a GPU: the terms the roofline
model (bench/roofline.py) assumes for the designs past one program per (batch, head).

    python -m bench.exchange_bench            # on a GPU: prints a table (bench.gpu_acceptance runs it too)
    TRITON_INTERPRET=1 python -m bench.exchange_bench --dry-run  # the global meeting, toy sizes, CPU

Two exchanges, each timed with and without its payload, at 2, 4 and 8 programs per group
and 32 groups (B x H = 32, where splitting pays):
- global: the plain split's meeting through global memory (kernels/triton_backend/
  exchange.py: partials stored to L2, a release add, an acquire poll, every partial read
  back), as the toy split recurrence of devtools/split_sum.py with a [64, 64] fp32 partial
  (the inner error of a 64-token chunk at head dim 64) and with a [1, 16] one (the barrier
  alone). Cooperative launch: a grid that cannot be co-resident fails instead of hanging.
- cluster (sm_90, Gluon): the cluster design's exchange. Each CTA of a cluster stores its
  [64, 64] partial into its slot of a cluster-sharded shared buffer, a cluster barrier,
  every CTA reads all slots (the others' over distributed shared memory) and sums them, a
  second barrier before the slots are reused; and the cluster barrier alone.
And how many clusters of 2, 4 and 8 CTAs can be resident at once at the shared memory a
cluster kernel would hold (the driver's cuOccupancyMaxActiveClusters): clusters cannot span
GPCs, so fewer SMs than 132 may be usable, which the model assumes away.
A round's cost is the difference of two launches (2N and N rounds) over N, so the launch
and the first load cancel. Every launch's result is checked against its closed form.
"""

import argparse
import functools
import os
import time

import torch
import triton
import triton.language as tl

from bench.common import table
from titans_plugin.kernels.triton_backend.exchange import all_reduce

SPLITS = (2, 4, 8)
GROUPS = 32
PAYLOAD = (64, 64)  # the inner error of a 64-token chunk at head dim 64, fp32
BARRIER_ONLY = (1, 16)  # the smallest tile: what the meeting costs without data
ROUNDS = 64  # timed as launches of 2 x ROUNDS against ROUNDS rounds
TOY_SPLITS, TOY_GROUPS, TOY_ROUNDS = (2,), 2, 2  # --dry-run in the interpreter
TIMEOUT_NS = 10**10


@triton.jit
def global_meeting_kernel(
    p_ptr, out_ptr, slots_ptr, counters_ptr, ok_ptr, ROUNDS: tl.constexpr, SPLIT: tl.constexpr, R: tl.constexpr,
    C: tl.constexpr, TIMEOUT_NS: tl.constexpr,
):  # fmt: skip
    """SPLIT programs per group all-reduce their [R, C] partial ROUNDS times, the partial of
    round r being p + r; out [G * SPLIT, R, C]: each program's sum of the rounds' totals.
    slots [G, 2, SPLIT, R, C]; counters [G, ROUNDS] int32, zeroed (one use each)."""
    pid = tl.program_id(0)
    g, s = pid // SPLIT, pid % SPLIT
    tile = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    p = tl.load(p_ptr + pid * (R * C) + tile)
    acc = tl.zeros([R, C], dtype=tl.float32)
    ok = tl.full([], 1, tl.int32)
    for r in range(ROUNDS):
        slots = slots_ptr + (g * 2 + r % 2) * (SPLIT * R * C)
        total, arrived = all_reduce(p + r, slots, counters_ptr + g * ROUNDS + r, s, SPLIT, R, C, TIMEOUT_NS)
        acc += total
        ok = ok & arrived
    tl.store(out_ptr + pid * (R * C) + tile, acc)
    tl.store(ok_ptr + pid, ok)


def expected(p: torch.Tensor, rounds: int) -> torch.Tensor:
    """p [G, SPLIT, R, C] -> what every program of a group holds after `rounds` rounds,
    the partial of round r being p + r: rounds x (sum of p) + SPLIT x rounds(rounds-1)/2."""
    split = p.shape[1]
    return rounds * p.double().sum(1) + split * rounds * (rounds - 1) / 2


def global_meeting(p: torch.Tensor, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the global meeting on p [G, SPLIT, R, C] (fp32, on its device):
    (out [G, SPLIT, R, C], ok [G, SPLIT])."""
    G, split, R, C = p.shape
    out = torch.full_like(p, float("nan"))
    slots = torch.full((G, 2, split, R, C), float("nan"), device=p.device)
    counters = torch.zeros(G, max(rounds, 1), dtype=torch.int32, device=p.device)
    ok = torch.zeros(G, split, dtype=torch.int32, device=p.device)
    extra = {"launch_cooperative_grid": True} if p.is_cuda else {}
    global_meeting_kernel[(G * split,)](
        p.contiguous(), out, slots, counters, ok, ROUNDS=rounds, SPLIT=split, R=R, C=C, TIMEOUT_NS=TIMEOUT_NS, **extra
    )
    return out, ok


@functools.cache
def cluster_exchange_kernel():
    """The Gluon kernel of the cluster exchange (built on first use: Gluon is optional)."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    @gluon.jit
    def kernel(p_ptr, out_ptr, ROUNDS: gl.constexpr, C: gl.constexpr, D: gl.constexpr, EXCHANGE: gl.constexpr):
        """p [G, NCTA, C, D]: CTA i of cluster g holds p[g, i]. With EXCHANGE, ROUNDS
        all-reduces of the partial p + r through distributed shared memory; out [G, C, D]:
        the sum of the rounds' totals. Without, ROUNDS cluster barriers and out = 0."""
        NCTA: gl.constexpr = gl.num_ctas()
        BITS: gl.constexpr = NCTA.bit_length() - 1
        shard: gl.constexpr = ((1, 0, 0), (2, 0, 0), (4, 0, 0), (8, 0, 0))[:BITS]  # dim 0 over the CTAs
        every: gl.constexpr = ((0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0))[:BITS]  # all of it on each CTA
        LS: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 4, 8], [1, gl.num_warps(), 1], [2, 1, 0], cga_layout=shard)
        LR: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 4, 8], [1, gl.num_warps(), 1], [2, 1, 0], cga_layout=every)
        SL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0], cga_layout=shard)
        g = gl.program_id(0)
        i = gl.arange(0, NCTA, gl.SliceLayout(1, gl.SliceLayout(2, LS)))
        r = gl.arange(0, C, gl.SliceLayout(0, gl.SliceLayout(2, LS)))
        c = gl.arange(0, D, gl.SliceLayout(0, gl.SliceLayout(1, LS)))
        p = gl.load(p_ptr + g * (NCTA * C * D) + i[:, None, None] * (C * D) + r[None, :, None] * D + c[None, None, :])
        slots = gl.allocate_shared_memory(gl.float32, [NCTA, C, D], SL)
        acc = gl.zeros([C, D], gl.float32, gl.SliceLayout(0, LR))
        for k in range(ROUNDS):
            if EXCHANGE:
                slots.store(p + k.to(gl.float32))  # type: ignore[attr-defined]  # a tensor in Gluon
                gl.barrier(cluster=True)  # every CTA's partial is in its slot
                acc += gl.sum(slots.load(LR), axis=0)  # the other CTAs' slots over DSMEM
                gl.barrier(cluster=True)  # every CTA has read before the next round writes
            else:
                gl.barrier(cluster=True)
        r2 = gl.arange(0, C, gl.SliceLayout(1, acc.type.layout))
        c2 = gl.arange(0, D, gl.SliceLayout(0, acc.type.layout))
        gl.store(out_ptr + g * (C * D) + r2[:, None] * D + c2[None, :], acc)

    return kernel


def compile_cluster_exchange(ctas: int, exchange: bool = True, arch: int = 90):
    """The cluster exchange compiled ahead of time (no GPU needed): its CompiledKernel."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import GluonASTSource

    meta = dict(ROUNDS=4, C=PAYLOAD[0], D=PAYLOAD[1], EXCHANGE=exchange)
    sig = {"p_ptr": "*fp32", "out_ptr": "*fp32", **{k: "constexpr" for k in meta}}
    src = GluonASTSource(fn=cluster_exchange_kernel(), signature=sig, constexprs=meta)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=4, num_ctas=ctas))


def cluster_exchange(p: torch.Tensor, rounds: int, exchange: bool) -> torch.Tensor:
    """Launch the cluster exchange on p [G, NCTA, C, D] (CUDA, sm_90): out [G, C, D]."""
    G, ctas, C, D = p.shape
    out = torch.full((G, C, D), float("nan"), device=p.device)
    cluster_exchange_kernel()[(G,)](p.contiguous(), out, ROUNDS=rounds, C=C, D=D, EXCHANGE=exchange, num_ctas=ctas)
    return out


def _seconds(launch, device, iters: int) -> float:
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            launch()
        return (time.perf_counter() - t0) / iters
    launch()  # compile
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        launch()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / 1e3 / iters


def per_round_us(launch, device, rounds: int, iters: int) -> float:
    """Microseconds per round: launches of 2 x rounds against rounds, differenced."""
    long, short = (_seconds(functools.partial(launch, n), device, iters) for n in (2 * rounds, rounds))
    return 1e6 * (long - short) / rounds


def measure(device: torch.device, dry: bool = False) -> dict:
    """Rows of (exchange, payload, programs per group, groups, us per round, correct), and
    why a part was not run."""
    splits, groups, rounds = (TOY_SPLITS, TOY_GROUPS, TOY_ROUNDS) if dry else (SPLITS, GROUPS, ROUNDS)
    iters = 1 if dry else 20
    g = torch.Generator().manual_seed(0)
    rows, not_run = [], {}
    for split in splits:
        for shape in (PAYLOAD, BARRIER_ONLY):
            p = torch.randn(groups, split, *shape, generator=g).to(device)
            try:  # checked once, then timed
                out, ok = global_meeting(p, rounds)
            except RuntimeError as e:  # e.g. a cooperative grid too large to be resident at once
                not_run[f"global x{split} {shape[0]}x{shape[1]}"] = f"{type(e).__name__}: {e}"
                continue
            want = expected(p.cpu(), rounds)[:, None].expand(-1, split, -1, -1)
            right = bool(ok.eq(1).all()) and torch.allclose(out.cpu().double(), want, rtol=1e-5, atol=1e-3)
            us = per_round_us(lambda n, p=p: global_meeting(p, n), device, rounds, iters)
            payload = "barrier only" if shape == BARRIER_ONLY else f"{shape[0]}x{shape[1]} fp32"
            rows.append(dict(exchange="global", payload=payload, split=split, groups=groups, us=us, correct=right))
    problem = cluster_problem(device)
    if problem:
        not_run["cluster"] = problem
    else:
        for ctas in splits:
            p = torch.randn(groups, ctas, *PAYLOAD, generator=g).to(device)
            for exchange in (True, False):
                out = cluster_exchange(p, rounds, exchange)
                want = expected(p.cpu(), rounds) if exchange else torch.zeros(groups, *PAYLOAD)
                right = torch.allclose(out.cpu().double(), want.double(), rtol=1e-5, atol=1e-3)
                us = per_round_us(lambda n, p=p, e=exchange: cluster_exchange(p, n, e), device, rounds, iters)
                payload = f"{PAYLOAD[0]}x{PAYLOAD[1]} fp32" if exchange else "barrier only"
                rows.append(dict(exchange="cluster", payload=payload, split=ctas, groups=groups, us=us, correct=right))
    occupancy = []
    if not problem:
        try:
            occupancy = cluster_occupancy(device)
        except Exception as e:  # a driver without the query: said, not fatal
            not_run["occupancy"] = f"{type(e).__name__}: {e}"
    return {"rows": rows, "occupancy": occupancy, "not_run": not_run}


CLUSTER_SHARED = (16384, 98304, 131072, 196608)  # the exchange alone; the prototypes' sizes; most of an SM


def cluster_occupancy(device: torch.device) -> list[dict]:
    """Clusters of each size resident at once at each CLUSTER_SHARED bytes of shared memory
    per CTA, and the SMs they keep busy, from the driver (sm_90 only)."""
    from triton.runtime import driver

    rows = []
    for ctas in SPLITS:
        k = compile_cluster_exchange(ctas, arch=torch.cuda.get_device_capability(device)[0] * 10)
        k._init_handles()  # loads the binary on the current device: the handle the driver asks about
        for shared in CLUSTER_SHARED:
            clusters = driver.active.utils.cuOccupancyMaxActiveClusters(k.function, shared, ctas)
            rows.append(dict(ctas=ctas, shared=shared, clusters=clusters, sms=clusters * ctas))
    return rows


def cluster_problem(device: torch.device) -> str | None:
    """Why the cluster exchange cannot run on `device` (None when it can)."""
    if device.type != "cuda":
        return "Gluon kernels run only on a GPU (no interpreter path)"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 9:
        return f"clusters need sm_90 or newer, this GPU is sm_{major}x"
    return gluon_problem()


def gluon_problem() -> str | None:
    """Why this triton cannot build the cluster exchange (None when it can): the Gluon
    front end it is written for came with triton 3.9."""
    try:
        from triton.experimental.gluon import GluonASTSource  # noqa: F401
    except ImportError:
        return f"triton {triton.__version__} has no Gluon of the kind this kernel is written for (triton >= 3.9)"
    return None


def report(result: dict) -> str:
    rows = [
        [r["exchange"], r["payload"], r["split"], r["groups"], f"{r['us']:.2f}", "yes" if r["correct"] else "NO"]
        for r in result["rows"]
    ]
    text = table(["exchange", "payload", "programs per group", "groups", "us per round", "correct"], rows)
    if result.get("occupancy"):
        occ = [[o["ctas"], f"{o['shared']:,}", o["clusters"], o["sms"]] for o in result["occupancy"]]
        text += "\n\n" + table(["CTAs per cluster", "shared B per CTA", "clusters resident", "SMs busy"], occ)
    for part, why in result["not_run"].items():
        text += f"\n\nNot run ({part}): {why}"
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dry-run", action="store_true", help="toy sizes in the threaded interpreter grid (CPU)")
    a = p.parse_args(argv)
    if a.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":  # read when the kernels are defined, at import
            p.error("--dry-run needs TRITON_INTERPRET=1 in the environment")
        from devtools.threaded_grid import threaded_grid

        with threaded_grid():
            result = measure(torch.device("cpu"), dry=True)
    else:
        result = measure(torch.device("cuda"))
    print(report(result))
    return 0 if all(r["correct"] for r in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
