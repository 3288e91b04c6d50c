"""The memory scan's forward with one (batch, head)'s state split across SPLIT programs.

The one-program forward (forward.py) walks every hidden tile of the state each chunk, so
a (batch, head) is one program however large its state. Here SPLIT programs share a
(batch, head): program s owns the hidden tiles [s * NT / SPLIT, (s + 1) * NT / SPLIT) of
W1, W2, S1 and S2 (at depth 1, the columns of W and S), keeps them where the one-program
kernel keeps them (the same flat state, so the checkpoints it saves are the one-program
backward's), and reads and writes no other program's tiles.

The hidden units couple only through sums over the tiles (step.py), so a chunk needs
three meetings of the SPLIT programs (exchange.all_reduce: a program-order sum, the same
bits in every program):
    0. depth 2: the last layer's pre-error e = sum_j act(k W1_j) W2_j, which gives d1;
    1. with the clip: the norms sum_j |a_j|^2 and sum_j |d0_j|^2, which give theta_eff;
    2. depth 2: the retrieval y = sum_j (c h1_j W2_j + f h1_j S2_j - ((h1_j a_j^T) * G) d1).
Depth 1 without the clip has no coupling at all. The clip factors and, at depth 2, the
output are stored by program 0 of the group; at depth 1 each program stores its own
columns of the output.

Each meeting's counter is used once (counters [B*H, n_chunks, 3] int32, zeroed by the
host) and has its slots (exchange.place says why consecutive meetings never share them).
Launch with every program resident (`launch_cooperative_grid=True`); a program whose
partners do not arrive within TIMEOUT_NS records 0 in ok_ptr and goes on with wrong values,
so the host raises instead of returning them. On CPU it runs in devtools/threaded_grid.py,
one thread per program. Needs triton's `tl.atomic_poll` (3.9).
"""

import triton
import triton.language as tl

from .exchange import all_reduce, place
from .forward import forward_scratch
from .pieces import (
    act_fn,
    chunk_rows,
    clip_scale,
    decays,
    load_chunk,
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
from .step import end_coefficients, layer1_tile, memory_output_tile

MEETINGS = tl.constexpr(3)  # per chunk: the pre-error, the clip's norms, the retrieval


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
    tok0 = ((bh // H).to(tl.int64) * T) * H + bh % H
    t0, valid, last = chunk_rows(ci, T, CHUNK, tl.arange(0, BC))
    row0 = tok0 + t0 * H
    q, k, v, theta, log_eta, log_retain = load_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, row0, valid, H, DK, DV, BC, BK, BV, OP
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


@triton.jit
def group_rows(bh, ci, T, H, CHUNK: tl.constexpr, BC: tl.constexpr):
    """Chunk ci's rows for group bh: the first row's index in the [B*T*H, D] view, which
    tile rows are tokens, the last token."""
    t0, valid, last = chunk_rows(ci, T, CHUNK, tl.arange(0, BC))
    return ((bh // H).to(tl.int64) * T) * H + bh % H + t0 * H, valid, last


@triton.jit(noinline=True)
def split_layer1_phase(
    st,
    inputs,
    fs,
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
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """Phased split forward (depth 2; forward.layer1_phase over this program's shard):
    the chunk's inner errors, completed at meetings 0 and 1, and layer 1's retrieval h1 of
    this program's tiles, into its scratch fs (forward.forward_scratch's layout) with d1
    and the clip factor. Returns 1 if every partner arrived."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    pid = tl.program_id(0)
    bh, s = pid // SPLIT, pid % SPLIT
    row0, valid, last = group_rows(bh, ci, T, H, CHUNK, BC)
    q, k, v, theta, log_eta, log_retain = load_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, row0, valid, H, DK, DV, BC, BK, BV, OP
    )
    v_rows = v_ptr + row0 * DV
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1, ok = split_inner_errors(
        st, k, v, theta, max_norm, v_rows, valid, H, xch, bh, s, ci, 0, MEETINGS,
        DK, DT, DV, BK, BT, BV, BC, NTS, 2, ACT, CLIP, OP, SPLIT, SLOT, TIMEOUT_NS,
    )  # fmt: skip
    d1p, y1p, s1p, thp, h1p = forward_scratch(fs, BC, BV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    sG = operand(mm_nt(q, k, OP) * G, OP)
    d1o = operand(d1, OP)
    for jj in range(NTS):
        j = s * NTS + jj
        W1, W2, z, a, phi, u, d0 = layer1_tile(st, j, k, d1o, v_rows, valid, H, DK, DT, DV, BK, BT, BV, BC, 2, ACT, OP)
        S1 = load_tile(st + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        y0 = c[:, None] * mm(q, W1, OP) + f[:, None] * mm(q, S1, OP) - mm(sG, d0, OP)
        store_tile(h1p, act_fn(y0, ACT), BC, DT, 0, j * BT, BC, BT)
    store_tile(d1p, d1, BC, BV, 0, 0, BC, BV)
    if CLIP:
        tl.store(thp + tl.arange(0, BC), tl.minimum(raw, 1.0))
    else:
        tl.store(thp + tl.arange(0, BC), theta * 0.0 + 1.0)
    tl.debug_barrier()
    return ok


@triton.jit(noinline=True)
def split_output_phase(
    st,
    inputs,
    y_ptr,
    fs,
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
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """Phased split forward (depth 2; forward.layer2_phase and output_phase over this
    program's shard): its share of the output from the chunk-start state, y1 - ((s1 * G)
    d1) over its tiles, completed at meeting 2; program 0 writes y and the clip factors.
    Returns 1 if every partner arrived."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    pid = tl.program_id(0)
    bh, s = pid // SPLIT, pid % SPLIT
    row0, valid, last = group_rows(bh, ci, T, H, CHUNK, BC)
    q, k, v, theta, log_eta, log_retain = load_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, row0, valid, H, DK, DV, BC, BK, BV, OP
    )
    d1p, y1p, s1p, thp, h1p = forward_scratch(fs, BC, BV)
    factor = tl.load(thp + tl.arange(0, BC))
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta * factor, valid, BC, OP)
    y1 = tl.zeros([BC, BV], dtype=tl.float32)
    s1 = tl.zeros([BC, BC], dtype=tl.float32)
    for jj in range(NTS):
        j = s * NTS + jj
        a = act_fn(mm(k, load_tile(st, DK, DT, 0, j * BT, BK, BT), OP), ACT)
        W2 = load_tile(st + L1, DT, DV, j * BT, 0, BT, BV)
        S2 = load_tile(st + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
        h1 = load_tile(h1p, BC, DT, 0, j * BT, BC, BT)
        y1 += c[:, None] * mm(h1, W2, OP) + f[:, None] * mm(h1, S2, OP)
        s1 += mm_nt(h1, a, OP)
    # The layer-2 score term is linear in the scores, so each shard subtracts its own.
    y1 -= mm(operand(s1 * G, OP), operand(load_tile(d1p, BC, BV, 0, 0, BC, BV), OP), OP)
    y, ok = meeting(y1, xch, bh, s, ci, 2, MEETINGS, SPLIT, BC, BV, SLOT, TIMEOUT_NS)
    mine = stored_by_first(valid, s)
    store_tokens(y_ptr + row0 * DV, y, mine, DV, BC, BV, H * DV)
    if CLIP:
        clip_rows = theta_ptr + tl.cast(T, tl.int64) * (tl.num_programs(0) // SPLIT) + row0  # forward.clip_factors
        store_gate(clip_rows, factor, mine, BC, H)
    return ok


@triton.jit(noinline=True)
def split_update_phase(
    st,
    inputs,
    fs,
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
    ACT: tl.constexpr,
    OP: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Phased split forward (depth 2), last phase: this program's tiles through the
    chunk's update, with d1 and the clip factor from split_layer1_phase (no meeting)."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    pid = tl.program_id(0)
    bh, s = pid // SPLIT, pid % SPLIT
    row0, valid, last = group_rows(bh, ci, T, H, CHUNK, BC)
    q, k, v, theta, log_eta, log_retain = load_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, row0, valid, H, DK, DV, BC, BK, BV, OP
    )
    d1p, y1p, s1p, thp, h1p = forward_scratch(fs, BC, BV)
    theta_eff = theta * tl.load(thp + tl.arange(0, BC))
    d1 = load_tile(d1p, BC, BV, 0, 0, BC, BV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    g, Elast, n, cT, fT, mT = end_coefficients(G, E, c, f, em, theta_eff, last, BC)
    d1o = operand(d1, OP)
    for jj in range(NTS):
        j = s * NTS + jj
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            st, j, k, d1o, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, 2, ACT, OP
        )
        S1 = load_tile(st + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        S2 = load_tile(st + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
        update_tile(st, j, k, a, d0, d1, W1, W2, S1, S2, g, n, cT, fT, mT, DK, DT, DV, BK, BT, BV, 2, OP)
    tl.debug_barrier()  # the next chunk's reads (and the next phase's scratch writes) follow


@triton.jit
def split_forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    log_eta_ptr,
    log_retain_ptr,
    state_ptr,
    y_ptr,
    saved_ptr,
    resets_ptr,
    init_ptr,
    slots_ptr,
    counters_ptr,
    ok_ptr,
    scratch_ptr,
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
    SAVE: tl.constexpr,
    OP: tl.constexpr,
    RESETS: tl.constexpr,
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
    PHASED: tl.constexpr,
    FSCRATCH: tl.constexpr,
):
    """SPLIT programs per (batch, head) (grid B * H * SPLIT; NT a multiple of SPLIT) walk
    the chunks in order; forward.scan_forward_kernel's arguments and outputs (one walk, no
    phases), plus the exchange's slots ([B*H, MEETINGS, 2, SPLIT, SLOT] fp32, SLOT >= BC * BV),
    counters ([B*H, n_chunks, MEETINGS] int32, zeroed) and ok_ptr ([B*H*SPLIT] int32:
    1 where every meeting of that program was complete). With PHASED (depth 2, where the
    one walk spills: config.phased_forward), a chunk runs as three non-inlined phases that
    hand on through scratch_ptr ([B*H*SPLIT, FSCRATCH] fp32), as the one-program forward's
    phases do."""
    NTS: tl.constexpr = NT // SPLIT
    pid = tl.program_id(0)
    bh, s = pid // SPLIT, pid % SPLIT
    st = state_ptr + bh.to(tl.int64) * NSTATE
    n_chunks = tl.cdiv(T, CHUNK)
    inputs = (q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr)
    xch = (slots_ptr, counters_ptr, n_chunks)
    ok = tl.full([], 1, tl.int32)
    for ci in range(n_chunks):
        if RESETS:
            if tl.load(resets_ptr + (bh // H).to(tl.int64) * n_chunks + ci) != 0:
                copy_shard(init_ptr + bh.to(tl.int64) * (NSTATE // 2), st, s, False, DK, DT, DV, BK, BT, BV, NTS, DEPTH)
            tl.debug_barrier()  # the chunk reads what other threads of this program wrote
        if SAVE:
            if ci % CKPT == 0:
                slot = saved_ptr + (bh.to(tl.int64) * tl.cdiv(n_chunks, CKPT) + ci // CKPT) * NSTATE
                copy_shard(st, slot, s, True, DK, DT, DV, BK, BT, BV, NTS, DEPTH)
        pos = (ci, T, max_norm, H)
        if PHASED and DEPTH == 2:
            fs = scratch_ptr + pid.to(tl.int64) * FSCRATCH
            ok = ok & split_layer1_phase(
                st, inputs, fs, xch, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, ACT, CLIP, OP, SPLIT, SLOT, TIMEOUT_NS
            )
            ok = ok & split_output_phase(
                st, inputs, y_ptr, fs, xch, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, ACT, CLIP, OP,
                SPLIT, SLOT, TIMEOUT_NS,
            )  # fmt: skip
            split_update_phase(st, inputs, fs, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, ACT, OP, SPLIT)
        else:
            ok = ok & split_chunk(
                st, inputs, y_ptr, xch, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, DEPTH, ACT, CLIP, OP,
                SPLIT, SLOT, TIMEOUT_NS, MEETINGS, True,
            )  # fmt: skip
    tl.store(ok_ptr + pid, ok)
