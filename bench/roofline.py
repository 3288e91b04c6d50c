"""Roofline model of the Triton memory scan on an H100 (a model, not a measurement).

    python -m titans_plugin.kernels.compile_report --ci --json /tmp/report.json
    python -m bench.roofline --report /tmp/report.json          # prints, writes docs/kernels.md
    python -m bench.roofline --measured docs/gpu_acceptance.json  # where the model was wrong, per term

Per chunk and program (one program per (batch, head) walks the chunks; the state streams
through L2 in hidden tiles), it counts from the kernels' structure:
- tensor-core FLOPs executed (recomputation included) and useful FLOPs (the algorithm's
  minimum: keys 3 products, retrieval 6, state update 4, in units of 2 C D H);
- L2 bytes: state tiles read and written per walk, the backward's scratch and replay;
- spill bytes from the compile report, stored and reloaded once per chunk (the main
  columns) or once per tile step (the last column): ptxas reports static sizes, and which
  is closer needs a GPU profile.
A program's time per chunk is the larger of its tensor time (the SM's share of bf16 peak)
and its memory time (L2 bytes at the per-SM L2 rate, capped by the aggregate L2 rate when
every SM streams). One program per SM (the kernels use the whole register file). Predicted
useful TFLOP/s = useful FLOPs / time, as % of the dense bf16 peak.
"""

import argparse
import json
import pathlib
import sys

from bench.common import machine, publish, table

# H100 SXM: dense bf16 peak, SMs, L2 bandwidth. L2: per-SM ~64 B/clk at 1.755 GHz; the
# aggregate figure is a commonly measured L2 read bandwidth, an assumption of the model.
PEAK_TFLOPS = 989.0
SMS = 132
L2_PER_SM_GBS = 112.0
L2_TOTAL_GBS = 5500.0


def per_chunk(C: int, D: int, H: int, tile: int, every: int, clip: bool, spills: dict, per_step: bool) -> dict:
    """FLOPs and bytes per chunk and program for a depth-2 memory (head dim D, hidden H)."""
    U = 2 * C * D * H  # one [C, D] x [D, H] product
    small = 2 * C * C * D  # [C, C] x [C, D] products (decays, layer-2 scores)
    state = 4 * (2 * D * H)  # bytes of W1 + W2 (fp32); S1 + S2 the same again
    scratch = 4 * C * H
    key_walks = 2 + (2 if clip else 0)  # inner_errors: k W1, a W2 (+ the clip's k W1, d1 W2^T)
    # inner_errors takes k W1 and a W2 as split products (pieces.mm_fine): 2 + 3 tensor-core
    # products where one each would do, so 3 more per pass over the inner errors
    fine = 3
    fwd_flops = (key_walks + fine + 12) * U + 3 * small
    fwd_bytes = (key_walks // 2) * state + 2 * (2 * state)  # key walks read W; the step reads and writes W, S
    replay = (every - 1) / every  # chunks rebuilt from a checkpoint in the backward
    step_no_output = (key_walks + fine + 6) * U  # z, u and four updates
    # The backward runs a chunk as ten phases (triton_backend/backward.py: backward_chunk), each
    # reloading the chunk's inputs and recomputing its decays; the tile walks are inner
    # errors, end state, layer-1 output, layer-2 retrieval, layer-1 retrieval, key path, finish.
    phases = 10
    walk_flops = (key_walks + fine + 29 + 4 + 5) * U  # the products of a one-pass chunk backward
    rework = 7 * U + (phases + 3) * small  # k W1, d1 W2^T, q W1, q S1 again; decays, q k^T per phase
    bwd_flops = replay * step_no_output + walk_flops + rework + 6 * small
    half = state // 2  # W1 (or W2) alone
    inputs = 2 * C * D * 4 + 4 * C * D + 2 * (4 * C * C)  # q, k, v, dy (bf16), d1, two [C, C] from the chunk scratch
    bwd_bytes = (
        replay * fwd_bytes
        + (key_walks // 2) * state  # inner errors: read W1, W2 per key walk
        + (2 * state + 4 * state + 2 * scratch)  # end state: src W, S; dst read and written; dd0, da1 out
        + (3 * half + scratch)  # layer-1 output: W1, W2, S1; y0 out
        + (3 * half + 2 * state + 4 * scratch)  # layer-2 retrieval: W1, W2, S2; dst W2, S2 r/w; da1 r/w, y0 -> dy0
        + (3 * half + 2 * state + 3 * scratch)  # layer-1 retrieval: W1, S1, W2; dst W1, S1 r/w; dd0 r/w, dy0 in
        + (state + state + 4 * scratch)  # key path: W1, W2; dst W2 r/w; dd0, da1 in, dz0, da1 out
        + (state + 2 * state + 2 * scratch)  # finish: W1, W2; dst W1, W2 r/w; dz0, da1 in
        + phases * inputs
    )
    n_tiles = -(-H // tile)
    steps = {
        "fwd": (key_walks // 2 + 1) * n_tiles,
        "bwd": (replay * (key_walks // 2 + 1) + key_walks // 2 + 5) * n_tiles,
    }
    if not per_step:  # spilled values stored and reloaded once per chunk
        steps = {"fwd": 1, "bwd": 1 + replay}
    threads = 256
    return {
        "useful": (13 + 26) * U,
        "flops": {"fwd": fwd_flops, "bwd": bwd_flops},
        "l2": {"fwd": fwd_bytes, "bwd": bwd_bytes},
        "spill": {k: 2 * spills[k] * threads * steps[k] for k in ("fwd", "bwd")},
    }


def predict(C, D, H, tile, every, clip, spills, programs, per_step=False):
    m = per_chunk(C, D, H, tile, every, clip, spills, per_step)
    active = min(programs, SMS)
    l2_rate = min(L2_PER_SM_GBS, L2_TOTAL_GBS / active) * 1e9
    sm_peak = PEAK_TFLOPS * 1e12 / SMS
    t = sum(max(m["flops"][k] / sm_peak, (m["l2"][k] + m["spill"][k]) / l2_rate) for k in ("fwd", "bwd"))
    waves = -(-programs // SMS)
    # Each wave runs `active` programs side by side; time per chunk for all programs:
    total = t * waves
    useful_tflops = m["useful"] * programs / total / 1e12
    return {
        "time_us": t * 1e6,
        "useful_tflops": useful_tflops,
        "pct_peak": 100 * useful_tflops / PEAK_TFLOPS,
        "bound_fwd": "L2" if (m["l2"]["fwd"] + m["spill"]["fwd"]) / l2_rate > m["flops"]["fwd"] / sm_peak else "tensor",
        "executed_over_useful": (m["flops"]["fwd"] + m["flops"]["bwd"]) / m["useful"],
        **m,
    }


# A meeting of the split forward's programs through global memory (release add, acquire
# poll, the partials through L2): an assumed round trip, to be measured on a GPU.
MEETING_US = 1.5


def split_forward(C, D, H, tile, every, clip, spills: dict, BH: int, split: int) -> dict:
    """The forward alone, one program per (batch, head) (split 1) or `split` programs per
    (batch, head) (triton_backend/split_forward.py): time per chunk for all programs, and
    the forward's useful TFLOP/s (a third of the scan's useful work). Each split program
    does 1/split of the tile work and streams 1/split of the state, plus its meetings: the
    pre-error and the retrieval ([C, D] fp32: its partial written, every partial read), the
    clip's norms ([C, 2]), each a round trip of MEETING_US. spills: the forward's spill
    stores per thread (moved once per chunk)."""
    m = per_chunk(C, D, H, tile, every, clip, {"fwd": spills["fwd"], "bwd": 0}, False)
    programs = BH * split
    if split > 1 and programs > SMS:  # a cooperative launch needs every program resident
        return {"launches": False, "programs": programs}
    active = min(programs, SMS)
    l2_rate = min(L2_PER_SM_GBS, L2_TOTAL_GBS / active) * 1e9
    sm_peak = PEAK_TFLOPS * 1e12 / SMS
    meetings = (2 + (1 if clip else 0)) if split > 1 else 0
    exchange = (1 + split) * 4 * C * (2 * D + (2 if clip else 0)) if split > 1 else 0
    small = 3 * 2 * C * C * D  # the [C, C] products: every program computes them whole
    compute = ((m["flops"]["fwd"] - small) / split + small) / sm_peak
    memory = (m["l2"]["fwd"] / split + exchange + m["spill"]["fwd"]) / l2_rate
    t = max(compute, memory) + meetings * MEETING_US * 1e-6
    total = t * -(-programs // SMS)  # waves
    useful = m["useful"] / 3 * BH  # the forward's share: 13 of 39 units
    return {
        "launches": True,
        "programs": programs,
        "time_us": total * 1e6,
        "pct_peak": 100 * useful / total / 1e12 / PEAK_TFLOPS,
        "bound": "L2" if memory > compute else "tensor",
        "meetings_us": meetings * MEETING_US,
        "exchange_kib": exchange / 1024,
    }


def split_table(spills: dict, split_spills: dict) -> str:
    """The split forward against the one-program forward, per B*H (the default config)."""
    C, D, H, tile, every = 64, 64, 256, 16, 4
    rows = []
    for BH in (8, 32, 64, 128):
        one = split_forward(C, D, H, tile, every, True, spills, BH, 1)
        for split in (2, 4):
            r = split_forward(C, D, H, tile, every, True, split_spills, BH, split)
            if not r["launches"]:
                rows.append(
                    [BH, split, f"{one['time_us']:.2f}", f"cannot launch: {r['programs']} programs > {SMS} SMs"]
                )
                rows[-1] += [""] * 5
                continue
            rows.append(
                [
                    BH,
                    split,
                    f"{one['time_us']:.2f}",
                    f"{r['time_us']:.2f}",
                    f"{one['time_us'] / r['time_us']:.2f}",
                    f"{one['pct_peak']:.1f}% -> {r['pct_peak']:.1f}%",
                    r["bound"],
                    f"{r['meetings_us']:.1f}",
                    f"{r['exchange_kib']:.0f}",
                ]
            )
    header = [
        "B*H",
        "programs per (b, h)",
        "one-program fwd us/chunk",
        "split fwd us/chunk",
        "speedup",
        "forward % of bf16 peak",
        "split bound by",
        "meetings us/chunk",
        "exchange KiB/program/chunk",
    ]
    note = (
        f"Forward only (the split backward: the every-design table below). Assumed: {MEETING_US} us per meeting "
        f"round trip, spills from the sm_90 compile report ({spills['fwd']} B one-program, {split_spills['fwd']} B "
        "split; the [C, C] products are computed whole by every program). The split fills SMs the one-program "
        "kernel leaves idle (at B*H = 32 it uses 32 of 132), but in this model it is slower at every B*H: each "
        "program still streams its shard of the state through L2 every chunk, and its meetings add traffic and "
        "latency. Past 132 programs the cooperative launch cannot start. Predictions until a GPU measures them "
        "(`python -m bench.gpu_acceptance`)."
    )
    title = "### Roofline model: the split-state forward (a model, not a measurement)"
    return f"{title}\n\n{table(header, rows)}\n\n{note}"


# The designs past one program per (batch, head) (issue: the state split across programs or a
# cluster). Each chunk couples the programs of a head through meetings that sum partials, as
# the plain split is built (split_forward.py, split_backward.py; depth 2, clip on, a
# checkpoint every 4 chunks): the forward meets 3 times (inner error, clip norms,
# retrieval: 2 [C, D] partials); the backward 5 times a chunk (inner error, norms, one for
# the end state's and both retrievals' sums, two key-path sums) and its replay twice for 3
# chunks in 4: 6.5 meetings carrying 8.75 [C, D] partials at C = D. EXCHANGES counts the
# meetings (barriers, latency), PARTIALS the [C, D] fp32 partials they carry (bytes).
EXCHANGES = {"fwd": 3, "bwd": 6.5}
PARTIALS = {"fwd": 2, "bwd": 8.75}
# One exchange of a [64, 64] fp32 partial among the CTAs of a cluster (slots in shared
# memory, read over DSMEM, two cluster barriers): an assumed cost, measured by
# bench/exchange_bench.py on an sm_90 GPU.
CLUSTER_EXCHANGE_US = 1.0
SHARED_PER_SM = 227 * 1024  # an H100 block's shared-memory limit


BUILT_FORWARD = "the cluster forward"  # the holder of the built kernel's own size in the occupancy rows


def resident_ctas(n: int, shared: int, occupancy=(), built: bool = False) -> int:
    """CTAs of n-CTA clusters resident at once, each CTA holding `shared` bytes of shared
    memory: whole clusters on all 132 SMs (the model's assumption), or what a GPU run
    measured (measured_resident)."""
    row = measured_resident(n, shared, occupancy, built)
    return (SMS // n) * n if row is None else row["ctas_resident"]


def measured_resident(n: int, shared: int, occupancy, built: bool = False) -> dict | None:
    """The occupancy row of a GPU run (bench/exchange_bench.py) that counts resident n-CTA
    clusters of a kernel holding `shared` bytes per CTA: with `built`, the row asked at the
    built forward's own compiled size; otherwise the smallest size asked that holds
    `shared` (residency only falls as shared memory grows). None: no such row."""
    rows = [o for o in occupancy if o["ctas"] == n]
    own = [o for o in rows if o.get("holder") == BUILT_FORWARD]
    if built and own:
        return own[0]
    rows = [o for o in rows if o["shared"] >= shared]
    return min(rows, key=lambda o: o["shared"]) if rows else None


def design(kind: str, n: int, BH: int, spills: dict, meeting_us: float = MEETING_US,
           cluster_us: float = CLUSTER_EXCHANGE_US, C: int = 64, D: int = 64, H: int = 256,
           occupancy=()) -> dict:  # fmt: skip
    """Forward + backward per chunk for one design at B x H = BH: kind "one" (one program
    per (batch, head), the state streamed through L2: today's kernels), "split" (n programs
    per head, each streaming its shard of the state through L2, meeting through global
    memory: the plain-Triton split as built, forward and backward), "cluster" (a cluster of
    n CTAs per head, each holding its shard of W1, W2, S1, S2 and, in the backward, of their
    gradient in shared memory for the whole sequence, exchanging over DSMEM) or
    "cluster_l2_gradient" (the same with the gradient's shard read and written through L2
    every chunk of the backward). Bytes through L2 per chunk and head,
    DSMEM bytes per CTA, barriers, shared memory per CTA, programs resident, the time per
    chunk for all heads and the useful share of bf16 peak, with what binds it. occupancy:
    measured cluster residency (resident_ctas)."""
    tile, every = 16, 4
    if kind == "cluster_forward":
        return cluster_forward_design(n, BH, spills, cluster_us, C, D, H, tile, every, occupancy)
    if kind == "one":  # today's kernels: the model above, as it is
        r = predict(C, D, H, tile, every, True, spills, BH)
        l2 = r["l2"]["fwd"] + r["l2"]["bwd"]
        pct, time_us = r["pct_peak"], r["time_us"] * -(-BH // SMS)
        l2_rate = min(L2_PER_SM_GBS, L2_TOTAL_GBS / min(BH, SMS)) * 1e9
        memory = (l2 + r["spill"]["fwd"] + r["spill"]["bwd"]) / l2_rate
        compute = (r["flops"]["fwd"] + r["flops"]["bwd"]) / (PEAK_TFLOPS * 1e12 / SMS)
        common = dict(launches=True, programs=BH, l2_kib=l2 / 1024, dsmem_kib=0, barriers=0, shared=None)
        bound = "L2" if memory > compute else "tensor"  # over the forward and the backward
        return {**common, "time_us": time_us, "pct_peak": pct, "bound": bound, "exchange_budget_us": None}
    m = per_chunk(C, D, H, tile, every, True, spills, False)
    flops, useful = m["flops"]["fwd"] + m["flops"]["bwd"], m["useful"]
    state = 4 * 4 * D * H  # W1, W2, S1, S2 fp32
    partial = 4 * C * D
    exchanges = EXCHANGES["fwd"] + EXCHANGES["bwd"]
    partials = PARTIALS["fwd"] + PARTIALS["bwd"]
    small = (3 + 19) * 2 * C * C * D  # the [C, C] products (forward 3, backward 19): every program does them whole
    inputs = 2 * (3 * C * D * 2 + 3 * C * 4) + C * D * 2  # q, k, v, gates read by the forward and backward, dy
    if kind == "split":
        # each program streams 1/n of the state and reads the chunk's inputs whole; each
        # exchange writes its partial and reads all n
        l2 = m["l2"]["fwd"] + m["l2"]["bwd"] + (n - 1) * inputs + n * partials * (1 + n) * partial
        dsmem, barriers, shared = 0, exchanges, None
        compute = (flops - small) + n * small
        exchange_us = barriers * meeting_us
    elif kind in ("cluster", "cluster_l2_gradient"):
        outputs = C * D * 2 + 3 * C * D * 2 + 3 * C * 4  # y; dq, dk, dv, the gates' gradients
        checkpoints = 2 * state / every  # written by the forward, read by the backward
        replay = 2 * (every - 1) * state / every  # the backward's replayed states, written and read through L2
        gradient_on_chip = kind == "cluster"
        gradient = 0 if gradient_on_chip else 2 * state  # dW1, dW2, dS1, dS2 read and written every chunk
        l2 = n * inputs + outputs + checkpoints + replay + gradient
        # two slot sets of one partial alternated by round: one cluster barrier per partial
        # (bench/exchange_bench.py), so a meeting of several partials takes several rounds
        dsmem, barriers = partials * (n - 1) * partial, partials
        shared = cluster_shared(n, C, D, H, gradient_on_chip)
        compute = (flops - small) + n * small
        exchange_us = barriers * cluster_us
    else:
        raise ValueError(
            "design kind must be one of 'one', 'split', 'cluster', 'cluster_l2_gradient', 'cluster_forward', "
            f"got {kind!r}"
        )
    programs = BH * n
    if kind == "split" and programs > SMS:  # a cooperative launch needs every program resident
        return {"launches": False, "programs": programs, "shared": shared, "why": f"{programs} programs > {SMS} SMs"}
    if shared is not None and shared > SHARED_PER_SM:
        why = f"{shared // 1024} KiB of shared memory > {SHARED_PER_SM // 1024}"
        return {"launches": False, "programs": programs, "shared": shared, "why": why}
    resident = SMS if kind == "split" else resident_ctas(n, shared, occupancy)  # one program per SM at most
    if resident == 0:
        return {"launches": False, "programs": programs, "shared": shared, "why": "no cluster resident (measured)"}
    active = min(programs, resident)
    l2_rate = min(L2_PER_SM_GBS, L2_TOTAL_GBS / active) * 1e9
    sm_peak = PEAK_TFLOPS * 1e12 / SMS
    t_compute, t_memory = compute / n / sm_peak, l2 / n / l2_rate  # no spills: these kernels do not exist yet
    # the exchanges do not overlap the work: each chunk's update needs its inner error
    t = max(t_compute, t_memory) + exchange_us * 1e-6
    waves = -(-programs // resident)
    total = t * waves
    # the most an exchange may cost for 25% of peak (None: out of reach even without exchanges)
    budget = (useful * BH / (0.25 * PEAK_TFLOPS * 1e12) / waves - max(t_compute, t_memory)) / max(barriers, 1)
    bound = "exchange" if exchange_us * 1e-6 > max(t_compute, t_memory) else "L2" if t_memory > t_compute else "tensor"
    return {
        "launches": True,
        "programs": programs,
        "l2_kib": l2 / 1024,
        "dsmem_kib": dsmem / 1024,
        "barriers": barriers,
        "shared": shared,
        "time_us": total * 1e6,
        "pct_peak": 100 * useful * BH / total / 1e12 / PEAK_TFLOPS,
        "bound": bound,
        "exchange_budget_us": budget * 1e6 if budget > 0 else None,
    }


# The Gluon cluster forward as built (gluon_backend/cluster_forward.py, clip on): 3 cluster
# barriers a chunk carrying 3 [C, D]-sized fp32 partials (the inner error's, layer 2's output
# and scores) besides [C] vectors; 221,696 B of shared memory per CTA (compile report).
CLUSTER_FORWARD = {"barriers": 3, "partials": 3, "shared": 221_696}


def _operands(C: int, D: int, hc: int) -> int:
    """The bf16 tensor-core operands a chunk stages per CTA, as the built forward does: [C, D]
    q, k and the inner error; [D, hc] and [hc, D] W1 and W2 in two parts each, S1 and S2;
    [C, hc] two activations."""
    return 2 * (3 * C * D + 6 * D * hc + 2 * C * hc)


# What the built forward allocates at 4 CTAs (its state shards, operands, three [C, D] and two
# [C] fp32 slots) against the 221,696 B it compiles to: the rest is the compiler's own
# scratch (layout conversions, reductions), taken to be the same for any cluster scan.
CLUSTER_SCRATCH = CLUSTER_FORWARD["shared"] - (4 * 4 * 64 * 64 + _operands(64, 64, 64) + 3 * 4 * 64 * 64 + 2 * 4 * 64)


def cluster_shared(n: int, C: int, D: int, H: int, gradient_on_chip: bool) -> int:
    """Shared memory per CTA of a forward + backward cluster scan: its shard of W1, W2, S1,
    S2 (and with gradient_on_chip, of their gradient), the operands a chunk stages, two slot
    sets of one [C, D] fp32 partial, and the compiler's scratch."""
    shards = (2 if gradient_on_chip else 1) * 4 * 4 * D * (H // n)
    return shards + _operands(C, D, H // n) + 2 * 4 * C * D + CLUSTER_SCRATCH


def cluster_forward_design(n, BH, spills, cluster_us, C, D, H, tile, every, occupancy=()) -> dict:
    """The built combination: the forward on a cluster of n CTAs per head (the state's shards
    on chip; L2 carries the chunk's inputs, y and the checkpoints), the backward as the
    one-program kernels' (the model above)."""
    m = per_chunk(C, D, H, tile, every, True, spills, False)
    sm_peak = PEAK_TFLOPS * 1e12 / SMS
    small = 3 * 2 * C * C * D  # the forward's [C, C] products: every CTA does them whole
    inputs = 3 * C * D * 2 + 3 * C * 4  # q, k, v (bf16), the gates
    checkpoint = 4 * 4 * D * H / every  # the state written every `every` chunks
    l2_fwd = n * inputs + C * D * 2 + checkpoint
    resident = resident_ctas(n, CLUSTER_FORWARD["shared"], occupancy, built=True)
    programs = BH * n
    if resident == 0:
        return {"launches": False, "programs": programs, "shared": CLUSTER_FORWARD["shared"],
                "why": "no cluster resident (measured)"}  # fmt: skip
    l2_rate = min(L2_PER_SM_GBS, L2_TOTAL_GBS / min(programs, resident)) * 1e9
    compute_fwd = (m["flops"]["fwd"] - small) + n * small
    t_fwd = max(compute_fwd / n / sm_peak, l2_fwd / n / l2_rate) + CLUSTER_FORWARD["barriers"] * cluster_us * 1e-6
    one_rate = min(L2_PER_SM_GBS, L2_TOTAL_GBS / min(BH, SMS)) * 1e9
    t_bwd = max(m["flops"]["bwd"] / sm_peak, (m["l2"]["bwd"] + m["spill"]["bwd"]) / one_rate)
    total = t_fwd * -(-programs // resident) + t_bwd * -(-BH // SMS)
    bound_fwd = "L2" if l2_fwd / n / l2_rate > compute_fwd / n / sm_peak else "tensor"
    backward_share = t_bwd * -(-BH // SMS) / total
    return {
        "launches": True,
        "programs": programs,
        "l2_kib": (l2_fwd + m["l2"]["bwd"]) / 1024,
        "dsmem_kib": CLUSTER_FORWARD["partials"] * (n - 1) * 4 * C * D / 1024,
        "barriers": CLUSTER_FORWARD["barriers"],
        "shared": CLUSTER_FORWARD["shared"],
        "time_us": total * 1e6,
        "pct_peak": 100 * m["useful"] * BH / total / 1e12 / PEAK_TFLOPS,
        "bound": f"backward {100 * backward_share:.0f}% of the time; forward {bound_fwd}",
        "exchange_budget_us": None,
    }


DESIGNS = [
    ("one", 1), ("split", 2), ("split", 4), ("cluster_forward", 4), ("cluster", 2), ("cluster", 4), ("cluster", 8),
    ("cluster_l2_gradient", 4), ("cluster_l2_gradient", 8),
]  # fmt: skip
DESIGN_NAMES = {
    "cluster_forward": "cluster forward (built) + one-program backward",
    "one": "one program per head (today)",
    "split": "plain split, state in L2",
    "cluster": "cluster, state on chip",
    "cluster_l2_gradient": "cluster, state on chip, its gradient in L2",
}


def designs_table(
    spills: dict, meeting_us: float = MEETING_US, cluster_us: float = CLUSTER_EXCHANGE_US, occupancy=()
) -> str:
    """Every design at B x H = 32 and 128, forward + backward (the default configuration);
    occupancy: measured cluster residency (resident_ctas)."""
    rows = []
    for kind, n in DESIGNS:
        first = design(kind, n, 32, spills, meeting_us, cluster_us, occupancy=occupancy)
        row = [DESIGN_NAMES[kind], n]
        shared = "-" if first.get("shared") is None else f"{first['shared'] // 1024}"
        if "l2_kib" in first:
            row += [f"{first['l2_kib']:,.0f}", f"{first['dsmem_kib']:,.0f}", first["barriers"], shared]
        else:
            row += ["", "", "", shared]
        for BH in (32, 128):
            r = design(kind, n, BH, spills, meeting_us, cluster_us, occupancy=occupancy)
            cannot = f"cannot launch ({r.get('why')})"
            row.append(f"{r['pct_peak']:.1f}% ({r['bound']})" if r["launches"] else cannot)
        budget = first.get("exchange_budget_us")
        if kind in ("one", "cluster_forward") or not first["launches"]:
            row.append("-")
        else:
            row.append(f"{budget:.2f}" if budget else "out of reach")
        rows.append(row)
    header = ["design", "programs per head", "L2 KiB per chunk and head", "DSMEM KiB per CTA per chunk",
              "barriers per chunk", "shared KiB per CTA", "B*H = 32: % of bf16 peak (bound)", "B*H = 128",
              "us per exchange for 25% at B*H = 32"]  # fmt: skip
    return table(header, rows)


LAUNCH_US = 5.0  # one kernel launch, as the model assumes it (two per training step: forward, backward)


def calibrate(measured: dict) -> str:
    """Where the model was wrong, per term, for each Triton row of a GPU acceptance run
    (bench/gpu_acceptance.py's JSON): the measured time per chunk against the model's
    compute, L2 and spill terms, the rates that would explain the measurement if one term
    were all of it, and the launch overhead's share."""
    speed = measured.get("speed") or {}
    spills = speed.get("spills") or {"fwd": 0, "bwd": 0}
    sizes = measured["sizes"]
    C, D, H, tile, every = sizes["chunk"], sizes["head_dim"], sizes["hidden"], 16, 4
    rows = []
    for r in speed.get("rows", []):
        if r["impl"] != "triton":
            continue
        programs = r["B"] * sizes["heads"]
        m = per_chunk(C, D, H, tile, every, True, spills, per_step=False)
        active = min(programs, SMS)
        l2_rate = min(L2_PER_SM_GBS, L2_TOTAL_GBS / active) * 1e9
        sm_peak = PEAK_TFLOPS * 1e12 / SMS
        chunks = -(-r["T"] // C) * -(-programs // SMS)
        t_meas = (r["seconds"] - 2 * LAUNCH_US * 1e-6) / chunks  # per chunk and program, launches taken out
        compute = sum(m["flops"][k] for k in ("fwd", "bwd")) / sm_peak
        l2 = sum(m["l2"][k] for k in ("fwd", "bwd")) / l2_rate
        spill = sum(m["spill"][k] for k in ("fwd", "bwd")) / l2_rate
        rows.append(
            [
                r["T"],
                programs,
                f"{t_meas * 1e6:.1f}",
                f"{compute * 1e6:.1f}",
                f"{l2 * 1e6:.1f}",
                f"{spill * 1e6:.2f}",
                f"{sum(m['l2'][k] + m['spill'][k] for k in ('fwd', 'bwd')) / t_meas / 1e9:.0f}",
                f"{sum(m['flops'][k] for k in ('fwd', 'bwd')) / t_meas / 1e12:.2f}",
                f"{100 * 2 * LAUNCH_US * 1e-6 / r['seconds']:.2f}%",
            ]
        )
    header = [
        "T",
        "programs",
        "measured us/chunk",
        "model: compute us",
        "model: L2 us",
        "model: spills us",
        "L2 GB/s per SM if memory-bound",
        "TFLOP/s per SM if compute-bound",
        "launches' share",
    ]
    note = (
        f"The model per SM: {sm_peak_tflops():.2f} TFLOP/s bf16, L2 {L2_PER_SM_GBS:.0f} GB/s per SM (capped at "
        f"{L2_TOTAL_GBS:.0f} GB/s in all), spills moving once per chunk, {LAUNCH_US:.0f} us per launch. A measured "
        "time far above both the compute and the L2 term, with the implied rates far below the model's, points at "
        "a term the model lacks (latency, occupancy, spills moving every tile step)."
    )
    return table(header, rows) + "\n\n" + note + exchange_calibration(measured, spills)


def exchange_calibration(measured: dict, spills: dict) -> str:
    """The designs' exchange terms, assumed against measured (bench/exchange_bench.py's rows
    in a GPU acceptance run: the [64, 64] exchange at 4 programs per group), and the designs
    table again with the measured costs and cluster residency ("" when the run has no
    exchange rows)."""
    rows = (measured.get("exchange") or {}).get("rows", [])
    occupancy = (measured.get("exchange") or {}).get("occupancy", [])

    def at4(exchange: str, payload: str) -> float | None:
        found = [r["us"] for r in rows if (r["exchange"], r["split"], r["payload"]) == (exchange, 4, payload)]
        return found[0] if found and found[0] is not None else None

    # the designs' exchanges: the inner error's [64, 64] fp32 partial; a cluster alternates two slot sets
    meeting, cluster = at4("global", "64x64 fp32"), at4("cluster", "64x64 fp32, two slot sets")
    if meeting is None and cluster is None:
        return ""
    terms = [
        [
            "global meeting, 4 programs, 64x64 fp32 (us)",
            f"{MEETING_US:.2f}",
            "-" if meeting is None else f"{meeting:.2f}",
        ],
        [
            "cluster exchange, 4 CTAs, 64x64 fp32, two slot sets (us)",
            f"{CLUSTER_EXCHANGE_US:.2f}",
            "-" if cluster is None else f"{cluster:.2f}",
        ],
    ]
    # CTAs resident at once: the model takes whole clusters on every SM
    for kind, n in DESIGNS:
        if kind == "one" or kind == "split":
            continue
        built = kind == "cluster_forward"
        shared = CLUSTER_FORWARD["shared"] if built else design(kind, n, 32, spills)["shared"]
        row = measured_resident(n, shared, occupancy, built) if shared <= SHARED_PER_SM else None
        if row is not None:
            name = f"CTAs resident, {DESIGN_NAMES[kind]}, {n} CTAs of {shared:,} B (asked at {row['shared']:,} B)"
            terms.append([name, (SMS // n) * n, row["ctas_resident"]])
    again = designs_table(
        spills,
        MEETING_US if meeting is None else meeting,
        CLUSTER_EXCHANGE_US if cluster is None else cluster,
        occupancy,
    )
    return (
        "\n\n"
        + table(["term", "model assumed", "measured"], terms)
        + "\n\nThe designs with the measured exchange costs and cluster residency:\n\n"
        + again
    )


def sm_peak_tflops() -> float:
    return PEAK_TFLOPS / SMS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report", help="JSON from compile_report --ci --json")
    p.add_argument("--measured", help="JSON from bench.gpu_acceptance: compare the model with it, per term")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.measured:
        print(calibrate(json.loads(pathlib.Path(args.measured).read_text())))
        if not args.report:
            return
    if not args.report:
        p.error("--report (or --measured) is required")
    reports = json.loads(pathlib.Path(args.report).read_text())

    def spill(kernel):
        rows = [
            r
            for r in reports
            if r["kernel"] == kernel
            and r["arch"] == 90
            and r["config"]["depth"] == 2
            and r["config"]["dtype"] == "bf16"
        ]
        if not rows:
            sys.exit(f"{args.report} has no sm_90 depth-2 bf16 {kernel} row")
        return rows[0]["spill_stores"]

    spills = {"fwd": spill("forward-train"), "bwd": spill("backward")}
    split_rows = [r for r in reports if r["kernel"] == "split-forward-train" and r["arch"] == 90]
    split_rows = [r for r in split_rows if r["config"]["depth"] == 2 and r["config"]["dtype"] == "bf16"]
    C, D, H, tile, every = 64, 64, 256, 16, 4
    rows = []
    for BH in (32, 128, 256):
        for T in (4096, 16384, 65536):
            r = predict(C, D, H, tile, every, True, spills, BH)
            worst = predict(C, D, H, tile, every, True, spills, BH, per_step=True)
            rows.append(
                [
                    BH,
                    T,
                    f"{r['time_us'] * (T // C) / 1e3:.2f}",
                    f"{r['useful_tflops']:.0f}",
                    f"{r['pct_peak']:.1f}%",
                    r["bound_fwd"],
                    f"{worst['pct_peak']:.2f}%",
                ]
            )
    m = predict(C, D, H, tile, every, True, spills, 32)
    MB = 1 / 2**20
    notes = [
        f"Model inputs (default config: depth 2, head dim {D}, hidden {H}, chunk {C}, bf16, clip on, "
        f"hidden tile {tile}, checkpoint every {every} chunks): per chunk and program "
        f"{(m['flops']['fwd'] + m['flops']['bwd']) / 1e6:.0f} MFLOP executed for {m['useful'] / 1e6:.0f} MFLOP "
        f"useful ({m['executed_over_useful']:.2f}x: recomputation), L2 traffic "
        f"{(m['l2']['fwd'] + m['l2']['bwd']) * MB:.2f} MiB, spill traffic "
        f"{(m['spill']['fwd'] + m['spill']['bwd']) * MB:.2f} MiB if spilled values move once per chunk "
        f"(compile report: {spills['fwd']} B forward, "
        f"{spills['bwd']} B backward spill stores per thread).",
        f"H100 assumptions: {PEAK_TFLOPS:.0f} TFLOP/s dense bf16 over {SMS} SMs, L2 {L2_PER_SM_GBS:.0f} GB/s per SM "
        f"and {L2_TOTAL_GBS:.0f} GB/s in all, one program per SM. Time per token does not depend on T (a "
        "sequential scan), so the percentage is flat in T; it depends on how many (batch, head) programs "
        "fill the SMs.",
    ]
    header = [
        "B*H programs",
        "T",
        "fwd+bwd ms (per layer)",
        "useful TFLOP/s",
        "% of bf16 peak",
        "forward bound by",
        "% of peak if spills move every tile step",
    ]
    text = "\n\n".join(
        [
            "### Roofline model: Triton memory scan on H100 (a model, not a measurement)",
            f"Command: `python -m bench.roofline --report <compile_report --ci --json>`; spills from the sm_90 "
            f"compile report; computed on {machine()}.",
            table(header, rows),
            *notes,
        ]
    )
    publish(text, "kernels.md", "Roofline model (H100)", write=not args.no_write)
    if split_rows:
        split_text = split_table(spills, {"fwd": split_rows[0]["spill_stores"], "bwd": 0})
        publish(split_text, "kernels.md", "Roofline model: split forward", write=not args.no_write)
    publish(designs_text(spills), "kernels.md", "Roofline model: every design", write=not args.no_write)


def designs_text(spills: dict) -> str:
    note = (
        "Forward + backward per chunk, default configuration (depth 2, head dim 64, hidden 256, chunk 64, bf16, "
        "clip on). The first row is the model above. The plain split (built, forward and backward; tested on "
        f"CPU) meets {EXCHANGES['bwd']} times per chunk in the backward (its replay's meetings included) besides "
        f"the forward's {EXCHANGES['fwd']}, carrying {PARTIALS['bwd']} and {PARTIALS['fwd']} [C, D] fp32 partials: "
        "each program still streams its "
        "shard of the state through L2, so it moves the same "
        "state bytes as one program, plus its exchanges. The cluster forward (built, sm_90) with the one-program "
        f"backward: {CLUSTER_FORWARD['barriers']} cluster barriers a chunk carrying {CLUSTER_FORWARD['partials']} "
        "[C, D]-sized partials; its forward moves only the chunk's inputs, y and the checkpoints through L2, so the "
        "backward's time decides it. The cluster (forward and backward, not built) keeps each CTA's shard of W1, W2, "
        "S1 and S2 (and in the backward, of their gradients) in shared memory for the whole sequence, with two "
        "slot sets of one partial, alternated (one cluster barrier per partial): only the chunk's inputs and "
        "outputs, the checkpoints and the backward's replayed states cross L2; with its gradient in L2, the "
        "gradient's shard is also read and written every chunk of the backward. Its shared memory per CTA: the "
        "shards, the bf16 operands a chunk stages as the built forward does, the two slot sets, and "
        f"{CLUSTER_SCRATCH // 1024} KiB of the compiler's scratch (what the built forward's "
        f"{CLUSTER_FORWARD['shared']:,} B hold beyond its allocations). Assumed: "
        f"{MEETING_US} us per global meeting and {CLUSTER_EXCHANGE_US} us per cluster exchange of a [64, 64] fp32 "
        "partial, neither overlapping work (a chunk's update needs its inner error); whole clusters on "
        f"{SMS} SMs; no spills in the kernels not built. The last column is the exchange cost at which the "
        "design reaches 25% of bf16 peak at B*H = 32: what `python -m bench.exchange_bench` measures on a GPU "
        "(`python -m bench.roofline --measured docs/gpu_acceptance.json` redraws the table with it, and with the "
        "clusters the GPU holds at once at each design's shared memory in place of whole clusters on 132 SMs)."
    )
    title = "### Roofline model: every design (a model, not a measurement)"
    return f"{title}\n\n{designs_table(spills)}\n\n{note}"


if __name__ == "__main__":
    main()
