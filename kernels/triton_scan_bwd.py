"""Triton backward kernel of the chunked memory scan.

One program per (batch, head) walks the checkpoint groups in reverse. For a group it
copies the saved checkpoint (the state at the group's first chunk) into a replay buffer
and re-runs the forward's chunk step without output (`advance_chunk`) to rebuild the start
state of every chunk in the group (CKPT states of replay per program); then it
differentiates the group's chunks last to first with `backward_chunk`. The gradient of the
state after the current chunk lives in a per-program fp32 buffer (dstate_ptr), tiled like
the state and rewritten in place.

`backward_chunk` is chunk.py's chain rule at hidden-tile granularity, as ten phases, each
a non-inlined function taking scalars. The tiles couple through sums that must be complete
before their consumers (dd1, the layer-2 scores s1, dR0, the gate and decay coefficients'
gradients, the clip's dsq); each phase ends with its sums complete and hands them to the
next through the per-program chunk scratch (`chunk_scratch`), and per-tile partials (dd0,
da1, y0 / dy0) go through the [3, BC, DT] tile scratch. A phase reloads the chunk's inputs
and recomputes its decays instead of receiving them, so its registers hold only what it
works on: one function holding every walk's accumulators spilled 3 KB per thread on sm_90,
the phases spill almost nothing (docs/kernels.md).
Tensors from the forward (z, a, act'(z), d0) are recomputed per tile, not stored.
"""

import triton
import triton.language as tl

from .triton_chunk import (
    EPS,
    act_fn,
    act_grad,
    act_grad2,
    copy_flat,
    decays,
    frobenius,
    load_tile,
    load_tokens,
    mm,
    mm_nt,
    mm_tn,
    operand,
    restart_state,
    rev_cumsum,
    row_at,
    rowsum,
    segment_sum_adjoint,
    store_gate,
    store_tile,
    store_tokens,
    zero_flat,
)
from .triton_scan import advance_chunk, end_coefficients, inner_errors, layer1_tile, program_chunk


@triton.jit
def end_state_terms(x, d, W, S, dWn, dSn, g, n, cT, fT, mT, dcT, dfT, dmT, dg, dn, OP: tl.constexpr):
    """One memory layer's end-state terms, W' = c_T W + f_T S - x^T (g d) and
    S' = m_T S - x^T (n d) (x the layer's key-side input, d its inner error): the gradients
    reaching W, S, d and x, and the gradients of c_T, f_T, m_T, g, n with this tile added."""
    dW = cT * dWn
    dS = fT * dWn + mT * dSn
    xdW = mm(x, dWn, OP)
    xdS = mm(x, dSn, OP)
    dd = -(g[:, None] * xdW + n[:, None] * xdS)
    dx = -(mm_nt(g[:, None] * d, dWn, OP) + mm_nt(n[:, None] * d, dSn, OP))
    return (
        dW,
        dS,
        dd,
        dx,
        dcT + frobenius(dWn, W),
        dfT + frobenius(dWn, S),
        dmT + frobenius(dSn, S),
        dg - rowsum(xdW * d),
        dn - rowsum(xdS * d),
    )


# Rows of the per-chunk vector block in the backward's chunk scratch (chunk_scratch).
V_THETA_EFF = tl.constexpr(0)
V_RAW = tl.constexpr(1)
V_SQ = tl.constexpr(2)
V_SQA0 = tl.constexpr(3)
V_SQD0 = tl.constexpr(4)
V_SQA1 = tl.constexpr(5)
V_SQD1 = tl.constexpr(6)
V_DG = tl.constexpr(7)
V_DN = tl.constexpr(8)
V_DC = tl.constexpr(9)
V_DF = tl.constexpr(10)
V_DSQ = tl.constexpr(11)
V_ENDS = tl.constexpr(12)  # the scalars dc_T, df_T, dm_T at its first three entries
V_DTHETA_EFF = tl.constexpr(13)
N_VEC = tl.constexpr(16)


@triton.jit
def chunk_scratch(cs, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The chunk scratch (fp32, per program): what one phase of a chunk's backward hands
    to the next. Pointers to d1 and dd1 [BC, BV], da0 (dk) and dq [BC, BK], s1 and dR0
    [BC, BC], and N_VEC per-token vectors [N_VEC, BC] (rows V_*). triton_op.backward_scratch
    sizes it."""
    d1 = cs
    dd1 = d1 + BC * BV
    da0 = dd1 + BC * BV
    dq = da0 + BC * BK
    s1 = dq + BC * BK
    dR0 = s1 + BC * BC
    vec = dR0 + BC * BC
    return d1, dd1, da0, dq, s1, dR0, vec


@triton.jit
def put(ptr, x, R: tl.constexpr, C: tl.constexpr):
    store_tile(ptr, x, R, C, 0, 0, R, C)


@triton.jit
def get(ptr, R: tl.constexpr, C: tl.constexpr):
    return load_tile(ptr, R, C, 0, 0, R, C)


@triton.jit
def put_vec(vec, row, x, BC: tl.constexpr):
    tl.store(vec + row * BC + tl.arange(0, BC), x)


@triton.jit
def get_vec(vec, row, BC: tl.constexpr):
    return tl.load(vec + row * BC + tl.arange(0, BC))


@triton.jit
def chunk_inputs(
    cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr, DEPTH: tl.constexpr,
    OP: tl.constexpr,
):  # fmt: skip
    """Chunk ci's rows and inputs, with d1 and theta_eff from the chunk scratch (written by
    bwd_inner_errors). At depth 1 d1 is v (unused)."""
    row0, valid, last, q, k, v, theta, le, lr = program_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    d1 = get(d1p, BC, BV) if DEPTH == 2 else v
    theta_eff = get_vec(vec, V_THETA_EFF, BC)
    return row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff


@triton.jit(noinline=True)
def bwd_inner_errors(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Phase 0: the chunk's coupled quantities (d1, theta_eff and the clip's sums) into the
    chunk scratch."""
    row0, valid, last, q, k, v, theta, le, lr = program_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1 = inner_errors(
        src, k, v, theta, max_norm, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, NT, DEPTH, ACT, CLIP, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    if DEPTH == 2:
        put(d1p, d1, BC, BV)
    put_vec(vec, V_THETA_EFF, theta_eff, BC)
    put_vec(vec, V_RAW, raw, BC)
    put_vec(vec, V_SQ, sq, BC)
    put_vec(vec, V_SQA0, sqa0, BC)
    put_vec(vec, V_SQD0, sqd0, BC)
    put_vec(vec, V_SQA1, sqa1, BC)
    put_vec(vec, V_SQD1, sqd1, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_end_state(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Walk 1a: the end-state terms of every tile. dst becomes the end state's share of the
    start-state gradient; dd0 and da1 (depth 2) go to the tile scratch; da0, dd1 and the
    end coefficients' and gates' sums to the chunk scratch."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    g, Elast, n, cT, fT, mT = end_coefficients(G, E, c, f, em, theta_eff, last, BC)
    dg = tl.zeros([BC], dtype=tl.float32)
    dn = tl.zeros([BC], dtype=tl.float32)
    dcT = tl.sum(dg, 0)
    dfT = dcT
    dmT = dcT
    da0 = tl.zeros([BC, BK], dtype=tl.float32)
    dd1 = tl.zeros([BC, BV], dtype=tl.float32)
    for j in range(NT):
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            src, j, k, d1, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
        )
        S1 = load_tile(src + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        dW1n = load_tile(dst, DK, DT, 0, j * BT, BK, BT)
        dS1n = load_tile(dst + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        # Layer 1 (x = k).
        dW1, dS1, dd0, dx, dcT, dfT, dmT, dg, dn = end_state_terms(
            k, d0, W1, S1, dW1n, dS1n, g, n, cT, fT, mT, dcT, dfT, dmT, dg, dn, OP
        )
        da0 += dx
        if DEPTH == 2:
            # Layer 2 (x = a).
            S2 = load_tile(src + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
            dW2n = load_tile(dst + L1, DT, DV, j * BT, 0, BT, BV)
            dS2n = load_tile(dst + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
            dW2, dS2, dd1_j, da1, dcT, dfT, dmT, dg, dn = end_state_terms(
                a, d1, W2, S2, dW2n, dS2n, g, n, cT, fT, mT, dcT, dfT, dmT, dg, dn, OP
            )
            dd1 += dd1_j
        tl.debug_barrier()  # every thread has read tile j of dst before it is overwritten
        store_tile(dst, dW1, DK, DT, 0, j * BT, BK, BT)
        store_tile(dst + L1 + L2, dS1, DK, DT, 0, j * BT, BK, BT)
        store_tile(scr, dd0, BC, DT, 0, j * BT, BC, BT)
        if DEPTH == 2:
            store_tile(dst + L1, dW2, DT, DV, j * BT, 0, BT, BV)
            store_tile(dst + 2 * L1 + L2, dS2, DT, DV, j * BT, 0, BT, BV)
            store_tile(scr + BC * DT, da1, BC, DT, 0, j * BT, BC, BT)
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    put(da0p, da0, BC, BK)
    if DEPTH == 2:
        put(dd1p, dd1, BC, BV)
    put_vec(vec, V_DG, dg, BC)
    put_vec(vec, V_DN, dn, BC)
    tl.store(vec + V_ENDS * BC, dcT)
    tl.store(vec + V_ENDS * BC + 1, dfT)
    tl.store(vec + V_ENDS * BC + 2, dmT)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_layer1_outputs(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """(Depth 2) layer 1's retrieval output y0 = c (q W1) + f (q S1) - ((q k^T) * G) d0 of every
    tile, into the tile scratch's third slot for bwd_retrieval_layer2."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    s0G = operand(mm_nt(q, k, OP) * G, OP)
    for j in range(NT):
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            src, j, k, d1, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
        )
        S1 = load_tile(src + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        y0 = c[:, None] * mm(q, W1, OP) + f[:, None] * mm(q, S1, OP) - mm(s0G, d0, OP)
        store_tile(scr + 2 * BC * DT, y0, BC, DT, 0, j * BT, BC, BT)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_retrieval_layer2(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Walk 1b (depth 2): the retrieval terms of layer 2, y1 = c (h1 W2) + f (h1 S2) -
    ((h1 a^T) * G) d1 with h1 = act(y0) (y0 from bwd_layer1_outputs), for every tile: added
    to dst and to da1 in the tile scratch; the gradient dy0 at layer 1's output takes y0's
    place; the layer-2 scores s1 and the gates' layer-2 sums to the chunk scratch."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    dout = load_tokens(dy_ptr + row0 * DV, valid, DV, BC, BV, H * DV)
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    dsc1 = operand(-mm_nt(dout, d1, OP) * G, OP)  # layer 2's d(score)
    s1 = tl.zeros([BC, BC], dtype=tl.float32)
    dc = tl.zeros([BC], dtype=tl.float32)
    df = tl.zeros([BC], dtype=tl.float32)
    for j in range(NT):
        W1 = load_tile(src, DK, DT, 0, j * BT, BK, BT)
        W2 = load_tile(src + L1, DT, DV, j * BT, 0, BT, BV)
        a = act_fn(mm(k, W1, OP), ACT)
        S2 = load_tile(src + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
        dW2 = load_tile(dst + L1, DT, DV, j * BT, 0, BT, BV)
        dS2 = load_tile(dst + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
        da1 = load_tile(scr + BC * DT, BC, DT, 0, j * BT, BC, BT)
        y0 = load_tile(scr + 2 * BC * DT, BC, DT, 0, j * BT, BC, BT)
        h1 = act_fn(y0, ACT)
        t = mm_nt(dout, W2, OP)
        r = mm_nt(dout, S2, OP)
        dc += rowsum(h1 * t)
        df += rowsum(h1 * r)
        dW2 += mm_tn(h1, c[:, None] * dout, OP)
        dS2 += mm_tn(h1, f[:, None] * dout, OP)
        s1 += mm_nt(h1, a, OP)
        da1 += mm_tn(dsc1, h1, OP)
        dy0 = (c[:, None] * t + f[:, None] * r + mm(dsc1, a, OP)) * act_grad(y0, ACT)
        tl.debug_barrier()  # every thread has read tile j of dst and scr before it is overwritten
        store_tile(dst + L1, dW2, DT, DV, j * BT, 0, BT, BV)
        store_tile(dst + 2 * L1 + L2, dS2, DT, DV, j * BT, 0, BT, BV)
        store_tile(scr + BC * DT, da1, BC, DT, 0, j * BT, BC, BT)
        store_tile(scr + 2 * BC * DT, dy0, BC, DT, 0, j * BT, BC, BT)
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    put(s1p, s1, BC, BC)
    put_vec(vec, V_DC, dc, BC)
    put_vec(vec, V_DF, df, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_retrieval(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Walk 1c: the retrieval terms of layer 1, y0 = c (q W1) + f (q S1) - ((q k^T) * G) d0,
    for every tile: added to dst and to dd0 in the tile scratch; dq, dR0 and the gates'
    retrieval sums to the chunk scratch. dy0 is the output gradient at depth 1 and
    bwd_retrieval_layer2's at depth 2."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    s0G = operand(mm_nt(q, k, OP) * G, OP)
    dR0 = tl.zeros([BC, BC], dtype=tl.float32)
    dq = tl.zeros([BC, BK], dtype=tl.float32)
    if DEPTH == 2:
        dc = get_vec(vec, V_DC, BC)
        df = get_vec(vec, V_DF, BC)
    else:
        dc = tl.zeros([BC], dtype=tl.float32)
        df = tl.zeros([BC], dtype=tl.float32)
    for j in range(NT):
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            src, j, k, d1, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
        )
        S1 = load_tile(src + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        hW0 = mm(q, W1, OP)
        hS0 = mm(q, S1, OP)
        dW1 = load_tile(dst, DK, DT, 0, j * BT, BK, BT)
        dS1 = load_tile(dst + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        dd0 = load_tile(scr, BC, DT, 0, j * BT, BC, BT)
        if DEPTH == 2:
            dy0 = load_tile(scr + 2 * BC * DT, BC, DT, 0, j * BT, BC, BT)
        else:
            dy0 = load_tokens(dy_ptr + row0 * DV + j * BT, valid, DV - j * BT, BC, BT, H * DV)
        dc += rowsum(dy0 * hW0)
        df += rowsum(dy0 * hS0)
        dW1 += mm_tn(q, c[:, None] * dy0, OP)
        dS1 += mm_tn(q, f[:, None] * dy0, OP)
        dR0 -= mm_nt(dy0, d0, OP)
        dd0 -= mm_tn(s0G, dy0, OP)
        dq += mm_nt(c[:, None] * dy0, W1, OP) + mm_nt(f[:, None] * dy0, S1, OP)
        tl.debug_barrier()  # every thread has read tile j of dst and scr before it is overwritten
        store_tile(dst, dW1, DK, DT, 0, j * BT, BK, BT)
        store_tile(dst + L1 + L2, dS1, DK, DT, 0, j * BT, BK, BT)
        store_tile(scr, dd0, BC, DT, 0, j * BT, BC, BT)
    put(dqp, dq, BC, BK)
    put(dR0p, dR0, BC, BC)
    tl.debug_barrier()  # every thread has read dc and df before they are overwritten
    put_vec(vec, V_DC, dc, BC)
    put_vec(vec, V_DF, df, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_layer2_scores(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """(Depth 2) with the layer-2 scores s1 complete: their gradient through (h1 a^T) * G
    into dd1, and the first part of dG, -(dout d1^T) * s1, in s1's place."""
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    dout = load_tokens(dy_ptr + row0 * DV, valid, DV, BC, BV, H * DV)
    s1 = get(s1p, BC, BC)
    put(dd1p, get(dd1p, BC, BV) - mm_tn(s1 * G, dout, OP), BC, BV)
    dG = -mm_nt(dout, d1, OP) * s1
    tl.debug_barrier()  # every thread has read s1 before dG takes its place
    put(s1p, dG, BC, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_score_grads(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """With every tile's walk-1 terms in: the gradients through the scores (q k^T) * G into
    dq and da0, and the gradient dP of the decay product P = A E (to the chunk scratch, in
    s1's place) with dtheta_eff. At depth 2 dG starts from bwd_layer2_scores'."""
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    idx = tl.arange(0, BC)
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    dR0 = get(dR0p, BC, BC)
    dsc0 = operand(dR0 * G, OP)
    put(da0p, get(da0p, BC, BK) + mm_tn(dsc0, q, OP), BC, BK)
    put(dqp, get(dqp, BC, BK) + mm(dsc0, k, OP), BC, BK)
    dG = dR0 * mm_nt(q, k, OP) + tl.where(idx[:, None] == last, get_vec(vec, V_DG, BC)[None, :], 0.0)
    if DEPTH == 2:
        dG += get(s1p, BC, BC)
    dtheta_eff = tl.sum(dG * P, 0) + get_vec(vec, V_DN, BC) * row_at(E, idx, last)
    tl.debug_barrier()  # every thread has read s1's slot before dP takes its place
    put(s1p, dG * theta_eff[None, :], BC, BC)
    put_vec(vec, V_DTHETA_EFF, dtheta_eff, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_gate_grads(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """The gate gradients (written out) from dP, dtheta_eff and the coefficient sums; the
    clip's dsq and its terms in da0 and dd1."""
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    idx = tl.arange(0, BC)
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    dP = get(s1p, BC, BC)
    dn = get_vec(vec, V_DN, BC)
    dE = mm_tn(A, dP, OP) + tl.where(idx[:, None] == last, (dn * theta_eff)[None, :], 0.0)
    dle_E = segment_sum_adjoint(dE * E, idx)
    df = get_vec(vec, V_DF, BC) + tl.where(idx == last, tl.load(vec + V_ENDS * BC + 1), 0.0)
    dA = mm_nt(dP, E, OP) + df[:, None] * em[None, :]
    dc = get_vec(vec, V_DC, BC) + tl.where(idx == last, tl.load(vec + V_ENDS * BC), 0.0)
    dlr = rev_cumsum(dc * c) + segment_sum_adjoint(dA * A, idx)
    dem = tl.sum(A * df[:, None], 0) + tl.where(idx == last, tl.load(vec + V_ENDS * BC + 2), 0.0)
    dle = rev_cumsum(dem * em) + dle_E
    dtheta_eff = get_vec(vec, V_DTHETA_EFF, BC)
    # Inner-gradient clipping: theta_eff = theta * min(1, max_norm / sqrt(sq)).
    if CLIP:
        raw = get_vec(vec, V_RAW, BC)
        dtheta = dtheta_eff * tl.minimum(raw, 1.0)
        dsq = tl.where(raw < 1.0, dtheta_eff * theta * (-0.5) * raw / (get_vec(vec, V_SQ, BC) + EPS), 0.0)
        put(da0p, get(da0p, BC, BK) + 2.0 * k.to(tl.float32) * (dsq * get_vec(vec, V_SQD0, BC))[:, None], BC, BK)
        if DEPTH == 2:
            put(dd1p, get(dd1p, BC, BV) + 2.0 * d1 * (dsq * get_vec(vec, V_SQA1, BC))[:, None], BC, BV)
    else:
        dtheta = dtheta_eff
        dsq = dtheta * 0.0
    store_gate(dth_ptr + row0, dtheta, valid, BC, H)
    store_gate(dle_ptr + row0, dle, valid, BC, H)
    store_gate(dlr_ptr + row0, dlr, valid, BC, H)
    put_vec(vec, V_DSQ, dsq, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_key_path(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Walk 2: the clip terms and du = dd0 * act'(z), summed into dd1 (depth 2); at depth 1
    the whole key path (dv, dW1, dk)."""
    L1: tl.constexpr = DK * DT
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    dsq = get_vec(vec, V_DSQ, BC)
    sqa0 = get_vec(vec, V_SQA0, BC)
    sqd1 = get_vec(vec, V_SQD1, BC)
    if DEPTH == 2:
        acc = get(dd1p, BC, BV)  # dd1
    else:
        acc = get(da0p, BC, BK)  # da0
    for j in range(NT):
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            src, j, k, d1, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
        )
        dd0 = load_tile(scr, BC, DT, 0, j * BT, BC, BT)
        if CLIP:
            dd0 += 2.0 * d0 * (dsq * sqa0)[:, None]
        if DEPTH == 2:
            # d0 = (d1 W2^T) * act'(z): gradients to d1, W2 and z.
            da1 = load_tile(scr + BC * DT, BC, DT, 0, j * BT, BC, BT)
            if CLIP:
                da1 += 2.0 * a * (dsq * sqd1)[:, None]
            du = dd0 * phi
            acc += mm(du, W2, OP)
            dW2 = load_tile(dst + L1, DT, DV, j * BT, 0, BT, BV) + mm_tn(du, d1, OP)
            dz0 = dd0 * u * act_grad2(z, ACT)
            tl.debug_barrier()
            store_tile(dst + L1, dW2, DT, DV, j * BT, 0, BT, BV)
            store_tile(scr, dz0, BC, DT, 0, j * BT, BC, BT)
            store_tile(scr + BC * DT, da1, BC, DT, 0, j * BT, BC, BT)
        else:
            # d0 = 2 (k W - v).
            dz0 = 2.0 * dd0
            store_tokens(dv_ptr + row0 * DV + j * BT, -dz0, valid, DV - j * BT, BC, BT, H * DV)
            dW1 = load_tile(dst, DK, DT, 0, j * BT, BK, BT) + mm_tn(k, dz0, OP)
            acc += mm_nt(dz0, W1, OP)
            tl.debug_barrier()
            store_tile(dst, dW1, DK, DT, 0, j * BT, BK, BT)
    tl.debug_barrier()
    if DEPTH == 2:
        put(dd1p, acc, BC, BV)
    else:
        put(da0p, acc, BC, BK)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_finish(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Walk 3 (depth 2), with dd1 complete: d1 = 2 (act(k W1) W2 - v), so dz1 = 2 dd1 and
    the key-path gradients of W1, W2 and k. Then dq and dk are written out."""
    L1: tl.constexpr = DK * DT
    row0, valid, last, q, k, v, theta, le, lr, d1, theta_eff = chunk_inputs(
        cs, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    da0 = get(da0p, BC, BK)
    if DEPTH == 2:
        dz1 = 2.0 * get(dd1p, BC, BV)
        store_tokens(dv_ptr + row0 * DV, -dz1, valid, DV, BC, BV, H * DV)
        for j in range(NT):
            W1 = load_tile(src, DK, DT, 0, j * BT, BK, BT)
            W2 = load_tile(src + L1, DT, DV, j * BT, 0, BT, BV)
            z = mm(k, W1, OP)
            a = act_fn(z, ACT)
            dz0 = load_tile(scr, BC, DT, 0, j * BT, BC, BT)
            da1 = load_tile(scr + BC * DT, BC, DT, 0, j * BT, BC, BT) + mm_nt(dz1, W2, OP)
            dz0 += da1 * act_grad(z, ACT)
            dW2 = load_tile(dst + L1, DT, DV, j * BT, 0, BT, BV) + mm_tn(a, dz1, OP)
            dW1 = load_tile(dst, DK, DT, 0, j * BT, BK, BT) + mm_tn(k, dz0, OP)
            da0 += mm_nt(dz0, W1, OP)
            tl.debug_barrier()
            store_tile(dst + L1, dW2, DT, DV, j * BT, 0, BT, BV)
            store_tile(dst, dW1, DK, DT, 0, j * BT, BK, BT)
    store_tokens(dq_ptr + row0 * DK, get(dqp, BC, BK), valid, DK, BC, BK, H * DK)
    store_tokens(dk_ptr + row0 * DK, da0, valid, DK, BC, BK, H * DK)
    tl.debug_barrier()  # the previous chunk reads dst and reuses both scratches


@triton.jit
def backward_chunk(
    src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr, dth_ptr,
    dle_ptr, dlr_ptr, ci, T, max_norm, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Gradients of chunk ci. src: its start state; dst: on entry the gradient of the state
    after the chunk, on exit that of the state before it; scr: [3, BC, DT] tile scratch; cs:
    the chunk scratch. Ten phases (eight at depth 1), each a call of its own: a phase's
    registers hold only what it works on, and what the next one needs goes through the
    scratch (L2)."""
    bwd_inner_errors(
        src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
        dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT,
        CLIP, OP,
    )  # fmt: skip
    bwd_end_state(
        src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
        dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT,
        CLIP, OP,
    )  # fmt: skip
    if DEPTH == 2:
        bwd_layer1_outputs(
            src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
            dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH,
            ACT, CLIP, OP,
        )  # fmt: skip
        bwd_retrieval_layer2(
            src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
            dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH,
            ACT, CLIP, OP,
        )  # fmt: skip
    bwd_retrieval(
        src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
        dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT,
        CLIP, OP,
    )  # fmt: skip
    if DEPTH == 2:
        bwd_layer2_scores(
            src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
            dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH,
            ACT, CLIP, OP,
        )  # fmt: skip
    bwd_score_grads(
        src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
        dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT,
        CLIP, OP,
    )  # fmt: skip
    bwd_gate_grads(
        src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
        dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT,
        CLIP, OP,
    )  # fmt: skip
    bwd_key_path(
        src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
        dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT,
        CLIP, OP,
    )  # fmt: skip
    bwd_finish(
        src, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, dq_ptr, dk_ptr, dv_ptr,
        dth_ptr, dle_ptr, dlr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT,
        CLIP, OP,
    )  # fmt: skip


@triton.jit(noinline=True)
def restart_gradient(dst, dinit_ptr, resets_ptr, ci, T, H, CHUNK: tl.constexpr, NSTATE: tl.constexpr):
    """Packed documents: if this program's row restarted at chunk ci, the gradient of that
    chunk's start state (at dst) belongs to the row's initial weights (added to dinit_ptr
    [B*H, NSTATE / 2]) and none of it reaches the chunk before (dst becomes zero)."""
    pid = tl.program_id(0)
    n_chunks = tl.cdiv(T, CHUNK)
    tl.debug_barrier()  # the chunk's backward has written all of dst
    if tl.load(resets_ptr + (pid // H).to(tl.int64) * n_chunks + ci) != 0:
        NW: tl.constexpr = NSTATE // 2
        offs = tl.arange(0, 1024)
        dinit = dinit_ptr + pid.to(tl.int64) * NW
        for start in range(0, NW, 1024):
            m = start + offs < NW
            g = tl.load(dst + start + offs, mask=m)
            tl.store(dinit + start + offs, tl.load(dinit + start + offs, mask=m) + g, mask=m)
        tl.debug_barrier()  # every thread has read dst before any of it is zeroed
        zero_flat(dst, NSTATE, 1024)
    tl.debug_barrier()


@triton.jit
def scan_backward_kernel(
    dy_ptr, dstate_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, saved_ptr, replay_ptr, scratch_ptr,
    dq_ptr, dk_ptr, dv_ptr, dtheta_ptr, dle_ptr, dlr_ptr, resets_ptr, init_ptr, dinit_ptr, T, H, max_norm,
    DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    NT: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
    NSTATE: tl.constexpr, CKPT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr, RESETS: tl.constexpr,
    SCRATCH: tl.constexpr,
):  # fmt: skip
    """dstate_ptr holds the gradient of the end state on entry and that of the initial state
    on exit. replay_ptr: [B*H, CKPT, NSTATE]; scratch_ptr: [B*H, SCRATCH] (fp32): the tile scratch
    [3, BC, DT], then the chunk scratch (chunk_scratch; triton_op.backward_scratch). With
    RESETS, the replay restarts rows where the forward did, and the gradient of a
    restarted chunk's start state goes to dinit_ptr ([B*H, NSTATE / 2], zeroed by the
    caller) instead of to the chunk before."""
    pid = tl.program_id(0)
    pid64 = pid.to(tl.int64)
    dst = dstate_ptr + pid64 * NSTATE
    replay = replay_ptr + pid64 * CKPT * NSTATE
    tl.static_assert(SCRATCH >= 3 * BC * DT + 2 * BC * BV + 2 * BC * BK + 2 * BC * BC + N_VEC * BC)
    scr = scratch_ptr + pid64 * SCRATCH
    cs = scr + 3 * BC * DT
    n_chunks = tl.cdiv(T, CHUNK)
    n_ckpt = tl.cdiv(n_chunks, CKPT)
    for rg in range(n_ckpt):
        gi = n_ckpt - 1 - rg
        c0 = gi * CKPT
        n_in_group = tl.minimum(CKPT, n_chunks - c0)
        copy_flat(saved_ptr + (pid64 * n_ckpt + gi) * NSTATE, replay, NSTATE, 1024)
        tl.debug_barrier()
        for i in range(n_in_group - 1):  # rebuild the start states of the group's chunks
            advance_chunk(
                replay + i * NSTATE, replay + (i + 1) * NSTATE, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr,
                c0 + i, T, max_norm, H, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP,
            )  # fmt: skip
            if RESETS:
                restart_state(replay + (i + 1) * NSTATE, init_ptr, resets_ptr, c0 + i + 1, T, H, CHUNK, NSTATE)
        for r in range(n_in_group):
            i = n_in_group - 1 - r
            backward_chunk(
                replay + i * NSTATE, dst, scr, cs, dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr,
                dq_ptr, dk_ptr, dv_ptr, dtheta_ptr, dle_ptr, dlr_ptr, c0 + i, T, max_norm, H, DK, DT, DV,
                BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP,
            )  # fmt: skip
            if RESETS:
                restart_gradient(dst, dinit_ptr, resets_ptr, c0 + i, T, H, CHUNK, NSTATE)
