"""Backward phases 0-4 (backward.py's backward_chunk calls them in order): the chunk's
inner errors, the end-state terms, layer 1's retrieval output, and the gradients of the
retrieval through layer 2 and layer 1."""

import triton
import triton.language as tl

from .backward_scratch import (
    V_DC,
    V_DC1,
    V_DF,
    V_DF1,
    V_DG,
    V_DN,
    V_ENDS,
    chunk_inputs,
    chunk_scratch,
    end_state_terms,
    put,
    put_inner_errors,
    put_vec,
)
from .pieces import (
    act_fn,
    act_grad,
    decays,
    load_tile,
    load_tokens,
    mm,
    mm_nt,
    mm_tn,
    operand,
    rowsum,
    store_tile,
)
from .step import end_coefficients, inner_errors, layer1_tile, program_chunk


@triton.jit(noinline=True)
def bwd_inner_errors(
    work,
    io,
    grads,
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
):
    """Phase 0: the chunk's coupled quantities (d1, theta_eff and the clip's sums) into the
    chunk scratch."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        bh, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1 = inner_errors(
        src, k, v, theta, max_norm, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, NT, DEPTH, ACT, CLIP, OP
    )
    put_inner_errors(cs, d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1, BC, BK, BV, DEPTH)


@triton.jit(noinline=True)
def bwd_end_state(
    work,
    io,
    grads,
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
):
    """Walk 1a: the end-state terms of every tile. dst becomes the end state's share of the
    start-state gradient; dd0 and da1 (depth 2) go to the tile scratch; da0, dd1 and the
    end coefficients' and gates' sums to the chunk scratch."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    g, Elast, n, cT, fT, mT = end_coefficients(G, E, c, f, em, theta_eff, last, BC)
    dg = tl.zeros([BC], dtype=tl.float32)
    dn = tl.zeros([BC], dtype=tl.float32)
    dcT = tl.sum(dg, 0)
    dfT = dcT
    dmT = dcT
    da0 = tl.zeros([BC, BK], dtype=tl.float32)
    dd1 = tl.zeros([BC, BV], dtype=tl.float32)
    for jj in range(NT):  # this program's tiles
        j = s * NT + jj
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
    work,
    io,
    grads,
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
):
    """(Depth 2) layer 1's retrieval output y0 = c (q W1) + f (q S1) - ((q k^T) * G) d0 of every
    tile, into the tile scratch's third slot for bwd_retrieval_layer2."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    s0G = operand(mm_nt(q, k, OP) * G, OP)
    for jj in range(NT):  # this program's tiles
        j = s * NT + jj
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            src, j, k, d1, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
        )
        S1 = load_tile(src + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        y0 = c[:, None] * mm(q, W1, OP) + f[:, None] * mm(q, S1, OP) - mm(s0G, d0, OP)
        store_tile(scr + 2 * BC * DT, y0, BC, DT, 0, j * BT, BC, BT)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_retrieval_layer2(
    work,
    io,
    grads,
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
):
    """Walk 1b (depth 2): the retrieval terms of layer 2, y1 = c (h1 W2) + f (h1 S2) -
    ((h1 a^T) * G) d1 with h1 = act(y0) (y0 from bwd_layer1_outputs), for every tile: added
    to dst and to da1 in the tile scratch; the gradient dy0 at layer 1's output takes y0's
    place; the layer-2 scores s1 and the gates' layer-2 sums to the chunk scratch."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    dout = load_tokens(dy_ptr + row0 * DV, valid, DV, BC, BV, H * DV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    dsc1 = operand(-mm_nt(dout, d1, OP) * G, OP)  # layer 2's d(score)
    s1 = tl.zeros([BC, BC], dtype=tl.float32)
    dc = tl.zeros([BC], dtype=tl.float32)
    df = tl.zeros([BC], dtype=tl.float32)
    for jj in range(NT):  # this program's tiles
        j = s * NT + jj
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
    work,
    io,
    grads,
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
):
    """Walk 1c: the retrieval terms of layer 1, y0 = c (q W1) + f (q S1) - ((q k^T) * G) d0,
    for every tile: added to dst and to dd0 in the tile scratch; dq, dR0 and the gates'
    retrieval sums (rows V_DC1, V_DF1) to the chunk scratch. dy0 is the output gradient at depth 1 and
    bwd_retrieval_layer2's at depth 2."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    s0G = operand(mm_nt(q, k, OP) * G, OP)
    dR0 = tl.zeros([BC, BC], dtype=tl.float32)
    dq = tl.zeros([BC, BK], dtype=tl.float32)
    dc = tl.zeros([BC], dtype=tl.float32)
    df = tl.zeros([BC], dtype=tl.float32)
    for jj in range(NT):  # this program's tiles
        j = s * NT + jj
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            src, j, k, d1, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
        )
        S1 = load_tile(src + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        if DEPTH == 2:
            dy0 = load_tile(scr + 2 * BC * DT, BC, DT, 0, j * BT, BC, BT)
        else:
            dy0 = load_tokens(dy_ptr + row0 * DV + j * BT, valid, DV - j * BT, BC, BT, H * DV)
        # each term as soon as its operands are loaded, each gradient tile loaded where it is
        # updated: fewer [BC, BT] tiles live at once (register pressure)
        dc += rowsum(dy0 * mm(q, W1, OP))
        df += rowsum(dy0 * mm(q, S1, OP))
        dq += mm_nt(c[:, None] * dy0, W1, OP) + mm_nt(f[:, None] * dy0, S1, OP)
        dR0 -= mm_nt(dy0, d0, OP)
        dW1 = load_tile(dst, DK, DT, 0, j * BT, BK, BT) + mm_tn(q, c[:, None] * dy0, OP)
        dS1 = load_tile(dst + L1 + L2, DK, DT, 0, j * BT, BK, BT) + mm_tn(q, f[:, None] * dy0, OP)
        dd0 = load_tile(scr, BC, DT, 0, j * BT, BC, BT) - mm_tn(s0G, dy0, OP)
        tl.debug_barrier()  # every thread has read tile j of dst and scr before it is overwritten
        store_tile(dst, dW1, DK, DT, 0, j * BT, BK, BT)
        store_tile(dst + L1 + L2, dS1, DK, DT, 0, j * BT, BK, BT)
        store_tile(scr, dd0, BC, DT, 0, j * BT, BC, BT)
    put(dqp, dq, BC, BK)
    put(dR0p, dR0, BC, BC)
    put_vec(vec, V_DC1, dc, BC)
    put_vec(vec, V_DF1, df, BC)
    tl.debug_barrier()
