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
  second barrier before the slots are reused; the same with two slot sets alternated by
  round, which needs one barrier a round; and the cluster barrier alone (one a round).
And how many clusters of 2, 4 and 8 CTAs can be resident at once at the shared memory a
cluster kernel would hold, the built cluster forward's own among them (the driver's
cuOccupancyMaxActiveClusters): clusters cannot span GPCs, so fewer SMs than 132 may be
usable, which the model assumes away.
A round's cost is the difference of two launches (2N and N rounds, N = 1,024) over N, so
the launch and the first load cancel; a difference that is not well above the short
launch's time is marked, since then the host's launches set the pace. The sums are checked
against their closed form after the first launch and after the last timed one, on every
program (every CTA of a cluster).
"""

import argparse
import functools
import os

import torch
import triton
import triton.language as tl

from bench.common import seconds_per_call, table
from bench.roofline import BUILT_FORWARD
from titans_plugin.kernels.triton_backend.exchange import all_reduce

SPLITS = (2, 4, 8)
GROUPS = 32
PAYLOAD = (64, 64)  # the inner error of a 64-token chunk at head dim 64, fp32
BARRIER_ONLY = (1, 16)  # the smallest tile: what the meeting costs without data
# timed as launches of 2 x ROUNDS against ROUNDS rounds: long enough (hundreds of us at a
# fraction of a us a round) that the GPU, not the host's launch, sets the pace
ROUNDS = 1024
TOY_SPLITS, TOY_GROUPS, TOY_ROUNDS = (2,), 2, 2  # --dry-run in the interpreter
TIMEOUT_NS = 10**10
# the cluster kernel's modes: the barrier alone (one a round); one slot set (a barrier
# before the reads, one before the next round's writes); two slot sets, alternated by
# round (one barrier a round: a CTA writes a set again only after every CTA has passed
# the next round's barrier, that is, finished reading it)
BARRIER, ONE_SET, TWO_SETS = 0, 1, 2
CLUSTER_MODES = {TWO_SETS: "64x64 fp32, two slot sets", ONE_SET: "64x64 fp32, one slot set", BARRIER: "barrier only"}


@triton.jit
def global_meeting_kernel(
    p_ptr, out_ptr, slots_ptr, counters_ptr, ok_ptr, ROUNDS: tl.constexpr, SPLIT: tl.constexpr, R: tl.constexpr,
    C: tl.constexpr, TIMEOUT_NS: tl.constexpr,
):  # fmt: skip
    """SPLIT programs per group all-reduce their [R, C] partial ROUNDS times, the partial of
    round r being p + r % 2; out [G * SPLIT, R, C]: each program's sum of the rounds'
    totals. slots [G, 2, SPLIT, R, C]; counters [G, ROUNDS] int32, zeroed (one use each).
    After a wait that timed out a program stops meeting: a broken launch fails in one
    timeout, not one per round."""
    pid = tl.program_id(0)
    g, s = pid // SPLIT, pid % SPLIT
    tile = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    p = tl.load(p_ptr + pid * (R * C) + tile)
    acc = tl.zeros([R, C], dtype=tl.float32)
    ok = tl.full([], 1, tl.int32)
    for r in range(ROUNDS):
        if ok == 1:
            slots = slots_ptr + (g * 2 + r % 2) * (SPLIT * R * C)
            total, arrived = all_reduce(p + r % 2, slots, counters_ptr + g * ROUNDS + r, s, SPLIT, R, C, TIMEOUT_NS)
            acc += total
            ok = ok & arrived
    tl.store(out_ptr + pid * (R * C) + tile, acc)
    tl.store(ok_ptr + pid, ok)


def expected(p: torch.Tensor, rounds: int) -> torch.Tensor:
    """p [G, SPLIT, R, C] -> what every program of a group holds after `rounds` rounds,
    the partial of round r being p + r % 2: rounds x (sum of p) + SPLIT x (odd rounds)."""
    split = p.shape[1]
    return rounds * p.double().sum(1) + split * (rounds // 2)


def close(out: torch.Tensor, want: torch.Tensor) -> bool:
    """fp32 sums of up to thousands of rounds against fp64: a missed or stale partial is
    off by about one per round, far outside this."""
    return torch.allclose(out.cpu().double(), want.double(), rtol=1e-4, atol=1e-2)


class GlobalMeeting:
    """The global meeting's buffers, allocated once (a timed launch only zeroes its
    counters), for p [G, SPLIT, R, C] fp32 on its device and up to `most` rounds."""

    def __init__(self, p: torch.Tensor, most: int):
        G, split, R, C = p.shape
        self.p = p.contiguous()
        self.out = torch.full_like(p, float("nan"))
        self.slots = torch.full((G, 2, split, R, C), float("nan"), device=p.device)
        self.counters = torch.zeros(G, max(most, 1), dtype=torch.int32, device=p.device)
        self.ok = torch.zeros(G, split, dtype=torch.int32, device=p.device)

    def __call__(self, rounds: int) -> None:
        G, split, R, C = self.p.shape
        self.counters.zero_()
        extra = {"launch_cooperative_grid": True} if self.p.is_cuda else {}
        global_meeting_kernel[(G * split,)](
            self.p, self.out, self.slots, self.counters, self.ok,
            ROUNDS=rounds, SPLIT=split, R=R, C=C, TIMEOUT_NS=TIMEOUT_NS, **extra,
        )  # fmt: skip

    def correct(self, rounds: int) -> bool:
        """After a launch of `rounds`: every program arrived and holds its group's sum."""
        want = expected(self.p.cpu(), rounds)[:, None].expand_as(self.out)
        return bool(self.ok.eq(1).all()) and close(self.out, want)


def global_meeting(p: torch.Tensor, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch on p [G, SPLIT, R, C]: (out [G, SPLIT, R, C], ok [G, SPLIT])."""
    meeting = GlobalMeeting(p, rounds)
    meeting(rounds)
    return meeting.out, meeting.ok


@functools.cache
def cluster_exchange_kernel():
    """The Gluon kernel of the cluster exchange (built on first use: Gluon is optional)."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    @gluon.jit
    def kernel(p_ptr, out_ptr, ROUNDS: gl.constexpr, C: gl.constexpr, D: gl.constexpr, MODE: gl.constexpr):
        """p [G, NCTA, C, D]: CTA i of cluster g holds p[g, i]. MODE ONE_SET or TWO_SETS:
        ROUNDS all-reduces of the partial p + r % 2 through distributed shared memory;
        out [G, NCTA, C, D]: what each CTA summed over the rounds. MODE BARRIER: ROUNDS
        cluster barriers, out = 0."""
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
        at = g * (NCTA * C * D) + i[:, None, None] * (C * D) + r[None, :, None] * D + c[None, None, :]
        p = gl.load(p_ptr + at)
        acc = gl.zeros([C, D], gl.float32, gl.SliceLayout(0, LR))
        if MODE == 2:  # TWO_SETS, unrolled by two so each round's set is static
            even = gl.allocate_shared_memory(gl.float32, [NCTA, C, D], SL)
            odd = gl.allocate_shared_memory(gl.float32, [NCTA, C, D], SL)
            for _ in range(ROUNDS // 2):
                even.store(p)
                gl.barrier(cluster=True)
                acc += gl.sum(even.load(LR), axis=0)
                odd.store(p + 1.0)
                gl.barrier(cluster=True)
                acc += gl.sum(odd.load(LR), axis=0)
        elif MODE == 1:  # ONE_SET
            slots = gl.allocate_shared_memory(gl.float32, [NCTA, C, D], SL)
            for k in range(ROUNDS):
                slots.store(p + (k % 2).to(gl.float32))  # type: ignore[attr-defined]  # a tensor in Gluon
                gl.barrier(cluster=True)  # every CTA's partial is in its slot
                acc += gl.sum(slots.load(LR), axis=0)  # the other CTAs' slots over DSMEM
                gl.barrier(cluster=True)  # every CTA has read before the next round writes
        else:
            for _ in range(ROUNDS):
                gl.barrier(cluster=True)
        # every CTA stores its own copy (a replicated value would be stored by CTA 0 alone)
        mine = gl.convert_layout(gl.expand_dims(acc, 0) + gl.zeros([NCTA, C, D], gl.float32, LR), LS)
        gl.store(out_ptr + at, mine)

    return kernel


def compile_cluster_exchange(ctas: int, mode: int = TWO_SETS, arch: int = 90):
    """The cluster exchange compiled ahead of time (no GPU needed): its CompiledKernel."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import GluonASTSource

    meta = dict(ROUNDS=4, C=PAYLOAD[0], D=PAYLOAD[1], MODE=mode)
    sig = {"p_ptr": "*fp32", "out_ptr": "*fp32", **{k: "constexpr" for k in meta}}
    src = GluonASTSource(fn=cluster_exchange_kernel(), signature=sig, constexprs=meta)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=4, num_ctas=ctas))


class ClusterExchange:
    """The cluster exchange on p [G, NCTA, C, D] (CUDA, sm_90) in one MODE, its output
    allocated once."""

    def __init__(self, p: torch.Tensor, mode: int):
        self.p, self.mode = p.contiguous(), mode
        self.out = torch.full_like(p, float("nan"))

    def __call__(self, rounds: int) -> None:
        G, ctas, C, D = self.p.shape
        cluster_exchange_kernel()[(G,)](self.p, self.out, ROUNDS=rounds, C=C, D=D, MODE=self.mode, num_ctas=ctas)

    def correct(self, rounds: int) -> bool:
        """After a launch of `rounds`: every CTA of every cluster holds its cluster's sum."""
        if self.mode == BARRIER:
            return close(self.out, torch.zeros(self.out.shape))
        return close(self.out, expected(self.p.cpu(), rounds)[:, None].expand(self.out.shape))


def timed(run, device, rounds: int, iters: int) -> dict:
    """Checks `run` (a GlobalMeeting or ClusterExchange) after a launch of `rounds`, times
    launches of 2 x rounds and of rounds, and checks the last timed launch again:
    microseconds per round (the difference over `rounds`), the short launch's time, and
    whether the difference can be trusted (the long launch took well over the short one:
    otherwise the host's launches, not the GPU, set the pace)."""
    run(rounds)
    if not run.correct(rounds):
        return dict(us=None, launch_us=None, trusted=False, correct=False)
    # one untimed launch first: ROUNDS is a compile-time constant, each count compiles its own kernel
    long, short = (
        seconds_per_call(functools.partial(run, n), iters, device.type == "cuda") for n in (2 * rounds, rounds)
    )
    correct = run.correct(rounds)  # the last launch timed was of `rounds`
    trusted = long > 1.5 * short
    return dict(us=1e6 * (long - short) / rounds, launch_us=1e6 * short, trusted=trusted, correct=correct)


def measure(device: torch.device, dry: bool = False) -> dict:
    """Rows of (exchange, payload, programs per group, groups, us per round, the short
    launch's us, trusted, correct), the clusters' occupancy, and why a part was not run."""
    splits, groups, rounds = (TOY_SPLITS, TOY_GROUPS, TOY_ROUNDS) if dry else (SPLITS, GROUPS, ROUNDS)
    iters = 1 if dry else 10
    g = torch.Generator().manual_seed(0)
    rows, not_run = [], {}
    for split in splits:
        for shape in (PAYLOAD, BARRIER_ONLY):
            payload = "barrier only" if shape == BARRIER_ONLY else f"{shape[0]}x{shape[1]} fp32"
            meeting = GlobalMeeting(torch.randn(groups, split, *shape, generator=g).to(device), 2 * rounds)
            try:
                result = timed(meeting, device, rounds, iters)
            except RuntimeError as e:  # e.g. a cooperative grid too large to be resident at once
                not_run[f"global x{split} {payload}"] = f"{type(e).__name__}: {e}"
                continue
            rows.append(dict(exchange="global", payload=payload, split=split, groups=groups, **result))
    problem = cluster_problem(device)
    if problem:
        not_run["cluster"] = problem
    else:
        for ctas in splits:
            p = torch.randn(groups, ctas, *PAYLOAD, generator=g).to(device)
            for mode, payload in CLUSTER_MODES.items():
                result = timed(ClusterExchange(p, mode), device, rounds, iters)
                rows.append(dict(exchange="cluster", payload=payload, split=ctas, groups=groups, **result))
    occupancy = []
    if not problem:
        try:
            occupancy = cluster_occupancy(device)
        except Exception as e:  # a driver without the query: said, not fatal
            not_run["occupancy"] = f"{type(e).__name__}: {e}"
    return {"rows": rows, "occupancy": occupancy, "not_run": not_run}


CLUSTER_SHARED = {16384: "the exchange alone", 98304: "a prototype", 131072: "a prototype", 196608: "most of an SM"}


def occupancy_sizes(ctas: int) -> dict[int, str]:
    """The shared bytes per CTA to ask the driver about at `ctas` CTAs per cluster, each
    with what holds it: CLUSTER_SHARED, and at the cluster sizes the Gluon cluster forward
    runs, that kernel's own (default configuration: chunk 64, SiLU, the clip on; compiled
    ahead of time, as the compile report does), so the run says how many of its clusters
    the GPU holds at once, which the roofline model takes as 132 SMs' worth."""
    from titans_plugin.kernels.gluon_backend.cluster import CLUSTER_SIZES, compile_cluster

    sizes = dict(CLUSTER_SHARED)
    if ctas in CLUSTER_SIZES:
        try:
            sizes[compile_cluster(ctas, 64, "silu", True).metadata.shared] = BUILT_FORWARD
        except Exception as e:  # e.g. a triton the kernel is not written for: the other sizes are still asked
            print(f"occupancy: the cluster forward's own size not asked ({type(e).__name__}: {e})", flush=True)
    return sizes


def cluster_occupancy(device: torch.device) -> list[dict]:
    """Clusters of each size resident at once at each of occupancy_sizes' bytes of shared
    memory per CTA, and their CTAs (more than one per SM where the shared memory allows),
    from the driver (sm_90 only)."""
    from triton.runtime import driver

    rows = []
    major, minor = torch.cuda.get_device_capability(device)
    for ctas in SPLITS:
        k = compile_cluster_exchange(ctas, arch=10 * major + minor)
        with torch.cuda.device(device):
            k._init_handles()  # loads the binary on the device: the function handle the driver asks about
        for shared, holder in sorted(occupancy_sizes(ctas).items()):
            clusters = driver.active.utils.cuOccupancyMaxActiveClusters(k.function, shared, ctas)
            rows.append(dict(ctas=ctas, shared=shared, holder=holder, clusters=clusters, ctas_resident=clusters * ctas))
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
    def us(r: dict) -> str:
        if r["us"] is None:
            return "-"
        return f"{r['us']:.3f}" + ("" if r["trusted"] else " (host-bound?)")

    rows = [
        [r["exchange"], r["payload"], r["split"], r["groups"], us(r),
         "-" if r["launch_us"] is None else f"{r['launch_us']:,.0f}", "yes" if r["correct"] else "NO"]
        for r in result["rows"]
    ]  # fmt: skip
    header = ["exchange", "payload", "programs per group", "groups", "us per round", "us per launch", "correct"]
    text = table(header, rows)
    if result.get("occupancy"):
        occ = [
            [o["ctas"], f"{o['shared']:,}", o.get("holder", ""), o["clusters"], o["ctas_resident"]]
            for o in result["occupancy"]
        ]
        header = ["CTAs per cluster", "shared B per CTA", "held by", "clusters resident", "CTAs resident"]
        text += "\n\n" + table(header, occ)
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
