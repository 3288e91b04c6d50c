"""A chunk's work for a program that owns a shard of its (batch, head)'s state (the split
scan: split_forward.py, split_backward.py), as step.py is for one program: the meetings
that complete its sums over tiles (exchange.py), the copy of its tiles of a state, the
inner errors, the tile update, and the whole chunk (split_chunk: the forward's walk, and
without output the backward's replay)."""

import triton
import triton.language as tl

from .exchange import all_reduce, place
from .pieces import (
    act_fn,
    clip_scale,
    decays,
    load_tile,
    mm,
    mm_nt,
    mm_tn,
    operand,
    rowsum,
    store_gate,
    store_tile,
    store_tokens,
    stored_by_first,
)
from .step import end_coefficients, layer1_tile, memory_output_tile, program_chunk


@triton.jit
def meeting(
    partial,
    xch,
    bh,
    s,
    ci,
    x: tl.constexpr,
    MEETINGS: tl.constexpr,
    SPLIT: tl.constexpr,
    R: tl.constexpr,
    C: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """Meeting x of chunk ci for group bh: the program-order sum of `partial` [R, C] over
    the group, and 1 if every partner arrived (exchange.place: where)."""
    slots, counter = place(xch, bh, ci, x, MEETINGS, SPLIT, SLOT)
    return all_reduce(partial, slots, counter, s, SPLIT, R, C, TIMEOUT_NS)


@triton.jit(noinline=True)
def copy_shard(
    src,
    dst,
    s,
    MOMENTUM: tl.constexpr,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    NTS: tl.constexpr,
    DEPTH: tl.constexpr,
):
    """This program's tiles of a flat state from src to dst: the weights, and the momenta
    too with MOMENTUM, zero momenta without (src is then a weights-only initial state, whose
    weights sit where the flat state's do; zeros, not weights x 0, which a non-finite
    weight would turn into NaN). Not inlined, so the chunk loops around it hold none of its
    tiles (about 100 B less of spill stores per thread in the split backward)."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    for jj in range(NTS):
        j = s * NTS + jj
        W1 = load_tile(src, DK, DT, 0, j * BT, BK, BT)
        S1 = load_tile(src + L1 + L2, DK, DT, 0, j * BT, BK, BT) if MOMENTUM else tl.zeros([BK, BT], tl.float32)
        store_tile(dst, W1, DK, DT, 0, j * BT, BK, BT)
        store_tile(dst + L1 + L2, S1, DK, DT, 0, j * BT, BK, BT)
        if DEPTH == 2:
            W2 = load_tile(src + L1, DT, DV, j * BT, 0, BT, BV)
            S2 = load_tile(src + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV) if MOMENTUM else tl.zeros([BT, BV], tl.float32)
            store_tile(dst + L1, W2, DT, DV, j * BT, 0, BT, BV)
            store_tile(dst + 2 * L1 + L2, S2, DT, DV, j * BT, 0, BT, BV)


@triton.jit
def update_tile(
    st,
    j,
    k,
    a,
    d0,
    d1,
    W1,
    W2,
    S1,
    S2,
    g,
    n,
    cT,
    fT,
    mT,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    DEPTH: tl.constexpr,
    OP: tl.constexpr,
):
    """Hidden tile j of the state at st (its chunk-start W1, W2, S1, S2) through the chunk's
    end-state update, W' = c_T W + f_T S - x^T (g d), S' = m_T S - x^T (n d) per layer
    (x = k, d = d0; x = a, d = d1), stored in place."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    W1n = cT * W1 + fT * S1 - mm_tn(k, g[:, None] * d0, OP)
    S1n = mT * S1 - mm_tn(k, n[:, None] * d0, OP)
    if DEPTH == 2:
        # the fp32 d1, scaled, then rounded once: rounding d1 first cost the gradients
        # of k, v and theta 15x in bf16 (tests/test_triton_kernels.py, bf16 case)
        W2n = cT * W2 + fT * S2 - mm_tn(a, g[:, None] * d1, OP)
        S2n = mT * S2 - mm_tn(a, n[:, None] * d1, OP)
    tl.debug_barrier()  # every thread has read tile j before it is overwritten
    store_tile(st, W1n, DK, DT, 0, j * BT, BK, BT)
    store_tile(st + L1 + L2, S1n, DK, DT, 0, j * BT, BK, BT)
    if DEPTH == 2:
        store_tile(st + L1, W2n, DT, DV, j * BT, 0, BT, BV)
        store_tile(st + 2 * L1 + L2, S2n, DT, DV, j * BT, 0, BT, BV)


@triton.jit
def split_inner_errors(
    st,
    k,
    v,
    theta,
    max_norm,
    v_rows,
    valid,
    H,
    xch,
    bh,
    s,
    ci,
    X0: tl.constexpr,
    MEETINGS: tl.constexpr,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    BC: tl.constexpr,
    NTS: tl.constexpr,
    DEPTH: tl.constexpr,
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """step.inner_errors over this program's shard of the group's state st, its sums
    completed at meetings X0 (the pre-error, depth 2) and X0 + 1 (the clip's norms): the
    same values in every program of the group, and 1 if every partner arrived."""
    ok = tl.full([], 1, tl.int32)
    kf = k.to(tl.float32)
    sqa0 = rowsum(kf * kf)
    sqa1 = sqa0 * 0.0
    if DEPTH == 2:
        e = tl.zeros([BC, BV], dtype=tl.float32)
        for jj in range(NTS):
            j = s * NTS + jj
            W1 = load_tile(st, DK, DT, 0, j * BT, BK, BT)
            W2 = load_tile(st + DK * DT, DT, DV, j * BT, 0, BT, BV)
            a, out = memory_output_tile(k, W1, W2, ACT, OP)
            e += out
            sqa1 += rowsum(a * a)
        e, arrived = meeting(e, xch, bh, s, ci, X0, MEETINGS, SPLIT, BC, BV, SLOT, TIMEOUT_NS)
        ok = ok & arrived
        d1 = 2.0 * (e - v)
        sqd1 = rowsum(d1 * d1)
    else:
        d1 = v  # unused: a depth-1 memory has one layer
        sqd1 = sqa1
    sqd0 = sqa0 * 0.0
    if CLIP:
        for jj in range(NTS):
            W1, W2, z, a, phi, u, d0 = layer1_tile(
                st, s * NTS + jj, k, d1, v_rows, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
            )
            sqd0 += rowsum(d0 * d0)
        norms, arrived = meeting(tl.join(sqa1, sqd0), xch, bh, s, ci, X0 + 1, MEETINGS, SPLIT, BC, 2, SLOT, TIMEOUT_NS)
        ok = ok & arrived
        sqa1, sqd0 = tl.split(norms)
        sq = sqa0 * sqd0 + sqa1 * sqd1
        raw = clip_scale(sq, max_norm)
        theta_eff = theta * tl.minimum(raw, 1.0)
    else:
        sq = sqd0
        raw = sqd0
        theta_eff = theta
    return d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1, ok


@triton.jit(noinline=True)
def split_chunk(
    st,
    inputs,
    y_ptr,
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
    NTS: tl.constexpr,
    DEPTH: tl.constexpr,
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
    MEETINGS: tl.constexpr,
    OUTPUT: tl.constexpr,
):
    """Chunk ci for this program's shard of the group's state st (updated in place),
    step.chunk_step's arithmetic with its sums over tiles taken over the shard and
    completed at meetings 0-2 (of MEETINGS a chunk). Without OUTPUT (the backward's replay)
    it only advances the state: no retrieval, no clip factors, meetings 0 and 1. Returns 1
    if every meeting was complete. Not inlined, like forward.forward_chunk, for the
    registers."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    pid = tl.program_id(0)
    bh, s = pid // SPLIT, pid % SPLIT
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        bh, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    v_rows = v_ptr + row0 * DV
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1, ok = split_inner_errors(
        st, k, v, theta, max_norm, v_rows, valid, H, xch, bh, s, ci, 0, MEETINGS,
        DK, DT, DV, BK, BT, BV, BC, NTS, DEPTH, ACT, CLIP, OP, SPLIT, SLOT, TIMEOUT_NS,
    )  # fmt: skip
    if CLIP and OUTPUT:
        clip_rows = theta_ptr + tl.cast(T, tl.int64) * (tl.num_programs(0) // SPLIT) + row0  # forward.clip_factors
        store_gate(clip_rows, tl.minimum(raw, 1.0), stored_by_first(valid, s), BC, H)
    # The retrieval and the update of this shard's tiles (step.chunk_step's tile loop).
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    g, Elast, n, cT, fT, mT = end_coefficients(G, E, c, f, em, theta_eff, last, BC)
    sG = operand(mm_nt(q, k, OP) * G, OP)
    d1o = operand(d1, OP)
    y1 = tl.zeros([BC, BV], dtype=tl.float32)
    s1 = tl.zeros([BC, BC], dtype=tl.float32)
    for jj in range(NTS):
        j = s * NTS + jj
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            st, j, k, d1o, v_rows, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
        )
        S1 = load_tile(st + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        if DEPTH == 2:
            S2 = load_tile(st + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
        else:
            S2 = S1  # unused: a depth-1 memory has one layer
        if OUTPUT:
            y0 = c[:, None] * mm(q, W1, OP) + f[:, None] * mm(q, S1, OP) - mm(sG, d0, OP)
            if DEPTH == 2:
                h1 = act_fn(y0, ACT)
                y1 += c[:, None] * mm(h1, W2, OP) + f[:, None] * mm(h1, S2, OP)
                s1 += mm_nt(h1, a, OP)
            else:
                store_tokens(y_ptr + row0 * DV + j * BT, y0, valid, DV - j * BT, BC, BT, H * DV)
        update_tile(st, j, k, a, d0, d1, W1, W2, S1, S2, g, n, cT, fT, mT, DK, DT, DV, BK, BT, BV, DEPTH, OP)
    tl.debug_barrier()  # the next chunk's reads see every tile
    if DEPTH == 2 and OUTPUT:
        # The layer-2 score term is linear in the scores, so each shard subtracts its own.
        y1 -= mm(operand(s1 * G, OP), d1o, OP)
        y, arrived = meeting(y1, xch, bh, s, ci, 2, MEETINGS, SPLIT, BC, BV, SLOT, TIMEOUT_NS)
        ok = ok & arrived
        store_tokens(y_ptr + row0 * DV, y, stored_by_first(valid, s), DV, BC, BV, H * DV)
    return ok
