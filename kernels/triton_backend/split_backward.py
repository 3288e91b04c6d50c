"""The memory scan's backward with one (batch, head)'s state split across SPLIT programs.

backward.py's kernel with its work divided as split_forward.py divides the forward's:
program s of a group owns the hidden tiles [s * NT / SPLIT, (s + 1) * NT / SPLIT) of the
replayed state, of the state gradient (one flat buffer per group, each program writing
only its tiles) and of the tile scratch; every program keeps its own chunk scratch. The
replay runs split_step.split_chunk without output, and each chunk's backward runs the
one-program kernel's phases over this program's tiles. A phase that sums over tiles leaves
this program's partial in its chunk scratch, and the group completes it at a meeting
(exchange.share: a program-order sum, the same bits in every program) before the next
phase reads it. Phases without a tile loop then compute the same values in every program,
and program 0 alone writes the per-token gradients.

Meetings of a chunk, x in two exchanges (each with its slots and counters):
    MEETINGS: partials held in registers, [C, D] at most (exchange.all_reduce)
    0, 1  replay: the pre-error (depth 2) and the clip's norms (split_inner_errors)
    2, 3  the same for the chunk being differentiated
    SUMS: partials in the chunk scratch (exchange.share)
    0     after bwd_end_state, bwd_layer1_outputs, bwd_retrieval_layer2 and bwd_retrieval,
          whose sums none of them reads: da0, dd1 (depth 2), dq, the score gradient dR0,
          the layer-2 scores s1 (depth 2), the end coefficients', gates' and both layers'
          retrieval sums (also rows that hold no partial yet, stale from the last chunk;
          each is rewritten before it is read, so summing them is harmless)
    1     bwd_key_path: its sum to dd1 (depth 2) or to da0
    2     bwd_finish (depth 2): its sum to da0
Within an exchange, meetings in a row differ in x or in the chunk's parity, so never share
slots (exchange.place). Each counter is used once (zeroed by the host);
a program whose partners do not arrive within TIMEOUT_NS records 0 in ok_ptr, so the host
raises instead of returning its gradients. Launch with every program resident
(`launch_cooperative_grid=True`); on CPU it runs in devtools/threaded_grid.py.
"""

import triton
import triton.language as tl

from .backward_inputs import (
    bwd_finish,
    bwd_gate_grads,
    bwd_key_path,
    bwd_layer2_scores,
    bwd_score_grads,
    bwd_store_inputs,
)
from .backward_scratch import V_DC1, V_DG, V_ENDS, chunk_scratch, key_path_sum, put_inner_errors
from .backward_state import bwd_end_state, bwd_layer1_outputs, bwd_retrieval, bwd_retrieval_layer2
from .exchange import place, share
from .pieces import load_tile, store_tile
from .split_step import copy_shard, split_chunk, split_inner_errors
from .step import program_chunk

MEETINGS = tl.constexpr(4)
SUMS = tl.constexpr(3)


@triton.jit(noinline=True)
def meet_scratch(
    sums,
    bh,
    s,
    ci,
    x: tl.constexpr,
    R0,
    N0: tl.constexpr,
    R1,
    N1: tl.constexpr,
    R2,
    N2: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """Meeting x of chunk ci in the SUMS exchange: the chunk scratch's regions R[:N]
    summed over the group. Not inlined: the chunk loop then holds none of its loop's
    registers (236 B of spill stores per thread on sm_80 when it was)."""
    slots, counter = place(sums, bh, ci, x, SUMS, SPLIT, SLOT)
    return share(slots, counter, s, SPLIT, R0, N0, R1, N1, R2, N2, TIMEOUT_NS)


@triton.jit(noinline=True)
def split_bwd_inner_errors(
    work,
    io,
    xch,
    pos,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    CHUNK: tl.constexpr,
    BC: tl.constexpr,
    NT: tl.constexpr,
    DEPTH: tl.constexpr,
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """Phase 0 (backward_state.bwd_inner_errors) over this program's tiles, completed at
    meetings 2 and 3. Returns 1 if every partner arrived."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    ci, T, max_norm, H, s, bh = pos
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        bh, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1, ok = split_inner_errors(
        src, k, v, theta, max_norm, v_ptr + row0 * DV, valid, H, xch, bh, s, ci, 2, MEETINGS,
        DK, DT, DV, BK, BT, BV, BC, NT, DEPTH, ACT, CLIP, OP, SPLIT, SLOT, TIMEOUT_NS,
    )  # fmt: skip
    put_inner_errors(cs, d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1, BC, BK, BV, DEPTH)
    return ok


@triton.jit
def split_backward_chunk(
    work,
    io,
    grads,
    pos,
    xch,
    sums,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    CHUNK: tl.constexpr,
    BC: tl.constexpr,
    NT: tl.constexpr,
    DEPTH: tl.constexpr,
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    SUM_SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """backward.backward_chunk over this program's NT tiles, each phase's sums over tiles
    completed at a meeting before the next phase reads them. Returns 1 if every meeting was
    complete."""
    src, dst, scr, cs = work
    ci, T, max_norm, H, s, bh = pos
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    kp = key_path_sum(cs, BC, BK, BV)
    ok = split_bwd_inner_errors(
        work, io, xch, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP, SPLIT, SLOT, TIMEOUT_NS
    )
    bwd_end_state(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    if DEPTH == 2:
        bwd_layer1_outputs(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
        bwd_retrieval_layer2(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_retrieval(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    # One meeting for the four phases' sums: the blocks dd1 (depth 2), da0, dq, s1 and dR0,
    # which sit side by side, the rows V_DG to V_DSQ with V_ENDS' three scalars, and the
    # rows V_DC1, V_DF1.
    first = dd1p if DEPTH == 2 else da0p
    BLOCKS: tl.constexpr = (BC * BV if DEPTH == 2 else 0) + 2 * BC * BK + 2 * BC * BC
    ok = ok & meet_scratch(
        sums, bh, s, ci, 0, first, BLOCKS, vec + V_DG * BC, (V_ENDS - V_DG) * BC + 3, vec + V_DC1 * BC, 2 * BC,
        SPLIT, SUM_SLOT, TIMEOUT_NS,
    )  # fmt: skip
    if DEPTH == 2:
        bwd_layer2_scores(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_score_grads(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_gate_grads(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_key_path(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    if DEPTH == 2:
        ok = ok & meet_scratch(sums, bh, s, ci, 1, kp, BC * BV, kp, 0, kp, 0, SPLIT, SUM_SLOT, TIMEOUT_NS)
        bwd_finish(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
        ok = ok & meet_scratch(sums, bh, s, ci, 2, kp, BC * BK, kp, 0, kp, 0, SPLIT, SUM_SLOT, TIMEOUT_NS)
    else:
        ok = ok & meet_scratch(sums, bh, s, ci, 1, kp, BC * BK, kp, 0, kp, 0, SPLIT, SUM_SLOT, TIMEOUT_NS)
    bwd_store_inputs(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    return ok


@triton.jit(noinline=True)
def restart_gradient_shard(
    dst,
    dinit,
    resets_ptr,
    bh,
    s,
    ci,
    T,
    H,
    CHUNK: tl.constexpr,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    NTS: tl.constexpr,
    DEPTH: tl.constexpr,
):
    """backward.restart_gradient for this program's tiles: if the row restarted at chunk
    ci, the gradient of the chunk's start state (dst) goes to the row's initial weights
    (dinit: this group's [NSTATE / 2], weights only) and none of it to the chunk before."""
    n_chunks = tl.cdiv(T, CHUNK)
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    tl.debug_barrier()  # the chunk's backward has written all of this program's dst tiles
    if tl.load(resets_ptr + (bh // H).to(tl.int64) * n_chunks + ci) != 0:
        for jj in range(NTS):
            j = s * NTS + jj
            g1 = load_tile(dst, DK, DT, 0, j * BT, BK, BT) + load_tile(dinit, DK, DT, 0, j * BT, BK, BT)
            store_tile(dinit, g1, DK, DT, 0, j * BT, BK, BT)
            tl.debug_barrier()  # every thread has read the tile of dst before it is zeroed
            zero = tl.zeros([BK, BT], dtype=tl.float32)
            store_tile(dst, zero, DK, DT, 0, j * BT, BK, BT)
            store_tile(dst + L1 + L2, zero, DK, DT, 0, j * BT, BK, BT)
            if DEPTH == 2:
                g2 = load_tile(dst + L1, DT, DV, j * BT, 0, BT, BV) + load_tile(dinit + L1, DT, DV, j * BT, 0, BT, BV)
                store_tile(dinit + L1, g2, DT, DV, j * BT, 0, BT, BV)
                tl.debug_barrier()
                zero2 = tl.zeros([BT, BV], dtype=tl.float32)
                store_tile(dst + L1, zero2, DT, DV, j * BT, 0, BT, BV)
                store_tile(dst + 2 * L1 + L2, zero2, DT, DV, j * BT, 0, BT, BV)
    tl.debug_barrier()


@triton.jit
def split_backward_kernel(
    dy_ptr,
    dstate_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    log_eta_ptr,
    log_retain_ptr,
    saved_ptr,
    replay_ptr,
    scratch_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    dtheta_ptr,
    dlog_eta_ptr,
    dlog_retain_ptr,
    resets_ptr,
    init_ptr,
    dinit_ptr,
    slots_ptr,
    counters_ptr,
    sum_slots_ptr,
    sum_counters_ptr,
    ok_ptr,
    T,
    H,
    max_norm,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    NT: tl.constexpr,
    CHUNK: tl.constexpr,
    BC: tl.constexpr,
    DEPTH: tl.constexpr,
    ACT: tl.constexpr,
    NSTATE: tl.constexpr,
    CKPT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    RESETS: tl.constexpr,
    SCRATCH: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    SUM_SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """SPLIT programs per (batch, head) (grid B * H * SPLIT; NT a multiple of SPLIT):
    backward.scan_backward_kernel's arguments and outputs, with replay_ptr [B*H, CKPT,
    NSTATE] per group and scratch_ptr [B*H*SPLIT, SCRATCH] per program, plus the two
    exchanges' slots ([B*H, MEETINGS, 2, SPLIT, SLOT] and [B*H, SUMS, 2, SPLIT, SUM_SLOT]
    fp32) and counters ([B*H, n_chunks, MEETINGS] and [B*H, n_chunks, SUMS] int32, zeroed),
    and ok_ptr ([B*H*SPLIT] int32: 1 where every meeting of that program was complete)."""
    NTS: tl.constexpr = NT // SPLIT
    NW: tl.constexpr = NSTATE // 2
    pid = tl.program_id(0)
    bh, s = pid // SPLIT, pid % SPLIT
    g = bh.to(tl.int64)
    dst = dstate_ptr + g * NSTATE
    replay = replay_ptr + g * CKPT * NSTATE
    scr = scratch_ptr + pid.to(tl.int64) * SCRATCH
    cs = scr + 3 * BC * DT
    inputs = (q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr)
    io = (dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr)
    grads = (dq_ptr, dk_ptr, dv_ptr, dtheta_ptr, dlog_eta_ptr, dlog_retain_ptr)
    n_chunks = tl.cdiv(T, CHUNK)
    n_ckpt = tl.cdiv(n_chunks, CKPT)
    xch = (slots_ptr, counters_ptr, n_chunks)
    sums = (sum_slots_ptr, sum_counters_ptr, n_chunks)
    ok = tl.full([], 1, tl.int32)
    for rg in range(n_ckpt):
        gi = n_ckpt - 1 - rg
        c0 = gi * CKPT
        n_in_group = tl.minimum(CKPT, n_chunks - c0)
        copy_shard(saved_ptr + (g * n_ckpt + gi) * NSTATE, replay, s, True, DK, DT, DV, BK, BT, BV, NTS, DEPTH)
        tl.debug_barrier()
        for i in range(n_in_group - 1):  # rebuild the start states of the group's chunks
            nxt = replay + (i + 1) * NSTATE
            copy_shard(replay + i * NSTATE, nxt, s, True, DK, DT, DV, BK, BT, BV, NTS, DEPTH)
            tl.debug_barrier()
            step = (c0 + i, T, max_norm, H)
            ok = ok & split_chunk(
                nxt, inputs, dy_ptr, xch, step, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, DEPTH, ACT, CLIP, OP,
                SPLIT, SLOT, TIMEOUT_NS, MEETINGS, False,
            )  # fmt: skip
            if RESETS:
                if tl.load(resets_ptr + (bh // H).to(tl.int64) * n_chunks + c0 + i + 1) != 0:
                    copy_shard(init_ptr + g * NW, nxt, s, False, DK, DT, DV, BK, BT, BV, NTS, DEPTH)
                tl.debug_barrier()
        for r in range(n_in_group):
            i = n_in_group - 1 - r
            work = (replay + i * NSTATE, dst, scr, cs)
            pos = (c0 + i, T, max_norm, H, s, bh)
            ok = ok & split_backward_chunk(
                work, io, grads, pos, xch, sums, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, DEPTH, ACT, CLIP, OP,
                SPLIT, SLOT, SUM_SLOT, TIMEOUT_NS,
            )  # fmt: skip
            if RESETS:
                restart_gradient_shard(
                    dst, dinit_ptr + g * NW, resets_ptr, bh, s, c0 + i, T, H, CHUNK, DK, DT, DV, BK, BT, BV, NTS, DEPTH
                )
    tl.store(ok_ptr + pid, ok)
