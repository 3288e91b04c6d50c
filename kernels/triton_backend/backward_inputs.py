"""Backward phases 5-10 (backward.py's backward_chunk calls them in order): layer 2's score
gradient, the score and decay-product gradients, the gate gradients and the clip's, the key
path, the finish (depth 2), and the phase that writes dq and dk."""

import triton
import triton.language as tl

from .backward_scratch import (
    V_DC,
    V_DC1,
    V_DF,
    V_DF1,
    V_DG,
    V_DN,
    V_DSQ,
    V_DTHETA_EFF,
    V_ENDS,
    V_RAW,
    V_SQ,
    V_SQA0,
    V_SQA1,
    V_SQD0,
    V_SQD1,
    chunk_inputs,
    chunk_scratch,
    get,
    get_vec,
    key_path_sum,
    put,
    put_vec,
)
from .pieces import (
    EPS,
    act_fn,
    act_grad,
    act_grad2,
    decays,
    load_tile,
    load_tokens,
    mm,
    mm_nt,
    mm_tn,
    operand,
    rev_cumsum,
    row_at,
    segment_sum_adjoint,
    store_gate,
    store_tile,
    store_tokens,
    stored_by_first,
)
from .step import head_rows, layer1_tile


@triton.jit(noinline=True)
def bwd_layer2_scores(
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
    """(Depth 2) with the layer-2 scores s1 complete: their gradient through (h1 a^T) * G
    into dd1, and the first part of dG, -(dout d1^T) * s1, in s1's place."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    dout = load_tokens(dy_ptr + row0 * DV, valid, DV, BC, BV, H * DV)
    s1 = get(s1p, BC, BC)
    put(dd1p, get(dd1p, BC, BV) - mm_tn(s1 * G, dout, OP), BC, BV)
    dG = -mm_nt(dout, d1, OP) * s1
    tl.debug_barrier()  # every thread has read s1 before dG takes its place
    put(s1p, dG, BC, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_score_grads(
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
    """With every tile's walk-1 terms in: the gradients through the scores (q k^T) * G into
    dq and da0, and the gradient dP of the decay product P = A E (to the chunk scratch, in
    s1's place) with dtheta_eff. At depth 2 dG starts from bwd_layer2_scores'."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    idx = tl.arange(0, BC)
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
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
    """The gate gradients (written out) from dP, dtheta_eff and the coefficient sums; the
    clip's dsq and its terms in da0 and dd1."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    idx = tl.arange(0, BC)
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    dP = get(s1p, BC, BC)
    dn = get_vec(vec, V_DN, BC)
    dE = mm_tn(A, dP, OP) + tl.where(idx[:, None] == last, (dn * theta_eff)[None, :], 0.0)
    dle_E = segment_sum_adjoint(dE * E, idx)
    df = get_vec(vec, V_DF1, BC) + tl.where(idx == last, tl.load(vec + V_ENDS * BC + 1), 0.0)
    if DEPTH == 2:
        df += get_vec(vec, V_DF, BC)
    dA = mm_nt(dP, E, OP) + df[:, None] * em[None, :]
    dc = get_vec(vec, V_DC1, BC) + tl.where(idx == last, tl.load(vec + V_ENDS * BC), 0.0)
    if DEPTH == 2:
        dc += get_vec(vec, V_DC, BC)
    dem = tl.sum(A * df[:, None], 0) + tl.where(idx == last, tl.load(vec + V_ENDS * BC + 2), 0.0)
    dlog_retain = rev_cumsum(dc * c) + segment_sum_adjoint(dA * A, idx)
    dlog_eta = rev_cumsum(dem * em) + dle_E
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
    mine = stored_by_first(valid, s)  # every program of a split group holds them
    store_gate(dth_ptr + row0, dtheta, mine, BC, H)
    store_gate(dlog_eta_ptr + row0, dlog_eta, mine, BC, H)
    store_gate(dlog_retain_ptr + row0, dlog_retain, mine, BC, H)
    put_vec(vec, V_DSQ, dsq, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_key_path(
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
    """Walk 2: the clip terms and du = dd0 * act'(z), whose sum over this program's tiles
    to dd1 (depth 2) goes to the key path's block (key_path_sum); at depth 1 the whole key
    path (dv, dW1, and the tiles' sum to dk in that block)."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    L1: tl.constexpr = DK * DT
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    dsq = get_vec(vec, V_DSQ, BC)
    sqa0 = get_vec(vec, V_SQA0, BC)
    sqd1 = get_vec(vec, V_SQD1, BC)
    if DEPTH == 2:
        acc = tl.zeros([BC, BV], dtype=tl.float32)  # to dd1
    else:
        acc = tl.zeros([BC, BK], dtype=tl.float32)  # to da0
    for jj in range(NT):  # this program's tiles
        j = s * NT + jj
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
        put(key_path_sum(cs, BC, BK, BV), acc, BC, BV)
    else:
        put(key_path_sum(cs, BC, BK, BV), acc, BC, BK)
    tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_finish(
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
    """Walk 3 (depth 2), with dd1 complete (itself and bwd_key_path's sum): d1 = 2 (act(k W1)
    W2 - v), so dz1 = 2 dd1 and the key-path gradients of W1 and W2, and this program's
    tiles' sum to da0 into the key path's block."""
    src, dst, scr, cs = work
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    L1: tl.constexpr = DK * DT
    row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff = chunk_inputs(
        cs, io, pos, DK, DV, BK, BV, CHUNK, BC, DEPTH, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    kp = key_path_sum(cs, BC, BK, BV)
    if DEPTH == 2:
        dz1 = 2.0 * (get(dd1p, BC, BV) + get(kp, BC, BV))
        store_tokens(dv_ptr + row0 * DV, -dz1, stored_by_first(valid, s), DV, BC, BV, H * DV)
        da0 = tl.zeros([BC, BK], dtype=tl.float32)
        for jj in range(NT):  # this program's tiles
            j = s * NT + jj
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
        tl.debug_barrier()  # every thread has read kp
        put(kp, da0, BC, BK)
        tl.debug_barrier()


@triton.jit(noinline=True)
def bwd_store_inputs(
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
    """dq and dk written out: dk is da0 plus the key path's sum over the tiles (bwd_finish's
    at depth 2, bwd_key_path's at depth 1)."""
    src, dst, scr, cs = work
    dq_ptr, dk_ptr, dv_ptr, dth_ptr, dlog_eta_ptr, dlog_retain_ptr = grads
    ci, T, max_norm, H, s, bh = pos
    row0, valid, last = head_rows(bh, ci, T, H, CHUNK, BC)
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    da0 = get(da0p, BC, BK) + get(key_path_sum(cs, BC, BK, BV), BC, BK)
    mine = stored_by_first(valid, s)  # every program of a split group holds them
    store_tokens(dq_ptr + row0 * DK, get(dqp, BC, BK), mine, DK, BC, BK, H * DK)
    store_tokens(dk_ptr + row0 * DK, da0, mine, DK, BC, BK, H * DK)
    tl.debug_barrier()  # the previous chunk reads dst and reuses both scratches
