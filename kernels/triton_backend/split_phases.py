"""The split forward's depth-2 chunk as three non-inlined phases (split_forward.py runs them
where the one walk spills, as forward.py runs its phases): layer 1 with the inner errors,
the output with its meeting, then the update, handing on through a per-program scratch
(forward.forward_scratch's layout)."""

import triton
import triton.language as tl

from .forward import forward_scratch
from .pieces import (
    act_fn,
    decays,
    load_tile,
    mm,
    mm_nt,
    operand,
    store_gate,
    store_tile,
    store_tokens,
    stored_by_first,
)
from .split_step import meeting, split_inner_errors, update_tile
from .step import end_coefficients, layer1_tile, program_chunk

MEETINGS = tl.constexpr(3)  # per chunk: the pre-error, the clip's norms, the retrieval


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
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        bh, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
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
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        bh, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
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
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        bh, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
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
