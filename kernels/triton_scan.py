"""Triton kernels for the chunked memory scan: one program per (batch, head) walks the chunks.

Forward: the memory weights W_l and momentum S_l stay in registers (on chip) from the first
chunk to the last; each chunk reads its q/k/v/gates once, writes its outputs once, and,
only when a backward will follow, writes its start state (the backward's checkpoints).
Nothing per token beyond the inputs is ever written.

Backward: walks the chunks in reverse with the gradients of the end state in registers,
reloads one chunk-start state, recomputes the chunk (`recompute_chunk`, the same code the
forward ran) and applies chunk.py's hand-derived chain rule.

Memory depth 1 (a matrix, W1: [DK, DV]) and depth 2 (W1: [DK, DH], act, W2: [DH, DV]).
State layout per (batch, head), fp32, row-major: W1, W2 (depth 2), S1, S2 (depth 2).
Token tensors are contiguous [B, T, H, D]; gate tensors contiguous fp32 [B, T, H].
"""

import triton
import triton.language as tl

from .triton_chunk import (
    EPS,
    act_fn,
    act_grad,
    act_grad2,
    at_index,
    chunk_rows,
    clip_scale,
    decays,
    load_chunk,
    load_state,
    load_tokens,
    mm,
    rev_cumsum,
    row_at,
    segment_sum_adjoint,
    store_gate,
    store_state,
    store_tokens,
)


@triton.jit
def recompute_chunk(q, k, v, theta, le, lr, W1, S1, W2, S2, valid, max_norm,
                    BC: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
                    CLIP: tl.constexpr, PRECISION: tl.constexpr):
    """chunk.py's chunk_forward for one chunk: keys through the chunk-start memory, inner
    errors, optional clip, decays, retrieval. Layer-2 entries repeat layer 1's at depth 1."""
    z0 = mm(k, W1, PRECISION)
    if DEPTH == 2:
        a1 = act_fn(z0, ACT)
        dphi0 = act_grad(z0, ACT)
        d1 = 2.0 * (mm(a1, W2, PRECISION) - v)
        d0 = mm(d1, tl.trans(W2), PRECISION) * dphi0
    else:
        a1 = k
        dphi0 = z0
        d0 = 2.0 * (z0 - v)
        d1 = d0
    sqa0 = tl.sum(k * k, 1)
    sqd0 = tl.sum(d0 * d0, 1)
    sq = sqa0 * sqd0
    if DEPTH == 2:
        sqa1 = tl.sum(a1 * a1, 1)
        sqd1 = tl.sum(d1 * d1, 1)
        sq += sqa1 * sqd1
    else:
        sqa1 = sqa0
        sqd1 = sqd0
    if CLIP:
        raw = clip_scale(sq, max_norm)
        theta_eff = theta * tl.minimum(raw, 1.0)
    else:
        raw = sq
        theta_eff = theta
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, PRECISION)

    s0 = mm(q, tl.trans(k), PRECISION)
    hW0 = mm(q, W1, PRECISION)
    hS0 = mm(q, S1, PRECISION)
    y0 = c[:, None] * hW0 + f[:, None] * hS0 - mm(s0 * G, d0, PRECISION)
    if DEPTH == 2:
        h1 = act_fn(y0, ACT)
        s1 = mm(h1, tl.trans(a1), PRECISION)
        hW1 = mm(h1, W2, PRECISION)
        hS1 = mm(h1, S2, PRECISION)
        y1 = c[:, None] * hW1 + f[:, None] * hS1 - mm(s1 * G, d1, PRECISION)
    else:
        h1 = q
        s1 = s0
        hW1 = hW0
        hS1 = hS0
        y1 = y0
    return (y1, z0, a1, dphi0, d0, d1, raw, sq, sqa0, sqd0, sqa1, sqd1, theta_eff,
            A, E, P, G, c, em, f, s0, hW0, hS0, y0, h1, s1, hW1, hS1)


@triton.jit
def scan_forward_kernel(
    q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, state_ptr,
    y_ptr, state_out_ptr, saved_ptr,
    T, H, max_norm,
    DK: tl.constexpr, DH: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, BC: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
    NSTATE: tl.constexpr, CLIP: tl.constexpr, SAVE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    base_state = pid.to(tl.int64) * NSTATE
    W1, S1, W2, S2 = load_state(state_ptr + base_state, DK, DH, DV, BK, BH, BV, DEPTH)

    tok0 = (b.to(tl.int64) * T) * H + h  # row index of token 0 of this (b, h) in [B*T*H]
    idx = tl.arange(0, BC)
    n_chunks = tl.cdiv(T, CHUNK)
    for ci in range(n_chunks):
        t0, valid, last = chunk_rows(ci, T, CHUNK, idx)
        if SAVE:
            base_saved = (pid.to(tl.int64) * n_chunks + ci) * NSTATE
            store_state(saved_ptr + base_saved, W1, S1, W2, S2, DK, DH, DV, BK, BH, BV, DEPTH)
        row0 = tok0 + t0 * H
        q, k, v, theta, le, lr = load_chunk(q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, row0, valid, H,
                                            DK, DV, BC, BK, BV)
        (y, z0, a1, dphi0, d0, d1, raw, sq, sqa0, sqd0, sqa1, sqd1, theta_eff,
         A, E, P, G, c, em, f, s0, hW0, hS0, y0, h1, s1, hW1, hS1) = recompute_chunk(
            q, k, v, theta, le, lr, W1, S1, W2, S2, valid, max_norm, BC, DEPTH, ACT, CLIP, PRECISION)
        store_tokens(y_ptr + row0 * DV, y, 0, valid, DV, BC, BV, H * DV)

        # Next state: W' = c_T W + f_T S - a^T (g * d), S' = m_T S - a^T (n * d).
        g = row_at(G, idx, last)
        n = row_at(E, idx, last) * theta_eff
        cT = at_index(c, idx, last)
        fT = at_index(f, idx, last)
        mT = at_index(em, idx, last)
        W1n = cT * W1 + fT * S1 - mm(tl.trans(k), g[:, None] * d0, PRECISION)
        S1 = mT * S1 - mm(tl.trans(k), n[:, None] * d0, PRECISION)
        W1 = W1n
        if DEPTH == 2:
            W2n = cT * W2 + fT * S2 - mm(tl.trans(a1), g[:, None] * d1, PRECISION)
            S2 = mT * S2 - mm(tl.trans(a1), n[:, None] * d1, PRECISION)
            W2 = W2n

    store_state(state_out_ptr + base_state, W1, S1, W2, S2, DK, DH, DV, BK, BH, BV, DEPTH)


@triton.jit
def scan_backward_kernel(
    dy_ptr, dstate_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, saved_ptr,
    dq_ptr, dk_ptr, dv_ptr, dtheta_ptr, dle_ptr, dlr_ptr, dstate0_ptr,
    T, H, max_norm,
    DK: tl.constexpr, DH: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, BC: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
    NSTATE: tl.constexpr, CLIP: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    base_state = pid.to(tl.int64) * NSTATE
    # Gradients w.r.t. the state after the current chunk (start: the end state's).
    dW1n, dS1n, dW2n, dS2n = load_state(dstate_ptr + base_state, DK, DH, DV, BK, BH, BV, DEPTH)

    tok0 = (b.to(tl.int64) * T) * H + h
    idx = tl.arange(0, BC)
    n_chunks = tl.cdiv(T, CHUNK)
    for rev in range(n_chunks):
        ci = n_chunks - 1 - rev
        t0, valid, last = chunk_rows(ci, T, CHUNK, idx)
        base_saved = (pid.to(tl.int64) * n_chunks + ci) * NSTATE
        W1, S1, W2, S2 = load_state(saved_ptr + base_saved, DK, DH, DV, BK, BH, BV, DEPTH)
        row0 = tok0 + t0 * H
        q, k, v, theta, le, lr = load_chunk(q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, row0, valid, H,
                                            DK, DV, BC, BK, BV)
        dout = load_tokens(dy_ptr + row0 * DV, 0, valid, DV, BC, BV, H * DV)
        (y, z0, a1, dphi0, d0, d1, raw, sq, sqa0, sqd0, sqa1, sqd1, theta_eff,
         A, E, P, G, c, em, f, s0, hW0, hS0, y0, h1, s1, hW1, hS1) = recompute_chunk(
            q, k, v, theta, le, lr, W1, S1, W2, S2, valid, max_norm, BC, DEPTH, ACT, CLIP, PRECISION)

        g = row_at(G, idx, last)
        Elast = row_at(E, idx, last)
        n = Elast * theta_eff
        cT = at_index(c, idx, last)
        fT = at_index(f, idx, last)
        mT = at_index(em, idx, last)

        # End state: W' = c_T W + f_T S - a^T (g d), S' = m_T S - a^T (n d).
        dW1 = cT * dW1n
        dS1 = fT * dW1n + mT * dS1n
        dcT = tl.sum(tl.sum(dW1n * W1, 1), 0)
        dfT = tl.sum(tl.sum(dW1n * S1, 1), 0)
        dmT = tl.sum(tl.sum(dS1n * S1, 1), 0)
        adW = mm(k, dW1n, PRECISION)
        adS = mm(k, dS1n, PRECISION)
        dd0 = -(g[:, None] * adW + n[:, None] * adS)
        da0 = -(mm(g[:, None] * d0, tl.trans(dW1n), PRECISION) + mm(n[:, None] * d0, tl.trans(dS1n), PRECISION))
        dg = -tl.sum(adW * d0, 1)
        dn = -tl.sum(adS * d0, 1)
        if DEPTH == 2:
            dW2 = cT * dW2n
            dS2 = fT * dW2n + mT * dS2n
            dcT += tl.sum(tl.sum(dW2n * W2, 1), 0)
            dfT += tl.sum(tl.sum(dW2n * S2, 1), 0)
            dmT += tl.sum(tl.sum(dS2n * S2, 1), 0)
            adW = mm(a1, dW2n, PRECISION)
            adS = mm(a1, dS2n, PRECISION)
            dd1 = -(g[:, None] * adW + n[:, None] * adS)
            da1 = -(mm(g[:, None] * d1, tl.trans(dW2n), PRECISION) + mm(n[:, None] * d1, tl.trans(dS2n), PRECISION))
            dg -= tl.sum(adW * d1, 1)
            dn -= tl.sum(adS * d1, 1)

            # Query path, layer 2: y1 = c (h1 W2) + f (h1 S2) - ((h1 a1^T) * G) d1.
            dy1 = dout
            dc = tl.sum(dy1 * hW1, 1)
            df = tl.sum(dy1 * hS1, 1)
            cdy = c[:, None] * dy1
            fdy = f[:, None] * dy1
            dW2 += mm(tl.trans(h1), cdy, PRECISION)
            dS2 += mm(tl.trans(h1), fdy, PRECISION)
            dR = -mm(dy1, tl.trans(d1), PRECISION)
            dd1 -= mm(tl.trans(s1 * G), dy1, PRECISION)
            dsc = dR * G
            dG = dR * s1
            da1 += mm(tl.trans(dsc), h1, PRECISION)
            dh = mm(cdy, tl.trans(W2), PRECISION) + mm(fdy, tl.trans(S2), PRECISION) + mm(dsc, a1, PRECISION)
            dy0 = dh * act_grad(y0, ACT)
            dc += tl.sum(dy0 * hW0, 1)
            df += tl.sum(dy0 * hS0, 1)
        else:
            dy0 = dout
            dc = tl.sum(dy0 * hW0, 1)
            df = tl.sum(dy0 * hS0, 1)
            dG = tl.zeros([BC, BC], dtype=tl.float32)
        # Query path, layer 1: y0 = c (q W1) + f (q S1) - ((q k^T) * G) d0.
        cdy = c[:, None] * dy0
        fdy = f[:, None] * dy0
        dW1 += mm(tl.trans(q), cdy, PRECISION)
        dS1 += mm(tl.trans(q), fdy, PRECISION)
        dR = -mm(dy0, tl.trans(d0), PRECISION)
        dd0 -= mm(tl.trans(s0 * G), dy0, PRECISION)
        dsc = dR * G
        dG += dR * s0
        da0 += mm(tl.trans(dsc), q, PRECISION)
        dq = mm(cdy, tl.trans(W1), PRECISION) + mm(fdy, tl.trans(S1), PRECISION) + mm(dsc, k, PRECISION)

        # Decays and gates (A, E are exp of cumulative-log differences).
        dG += tl.where(idx[:, None] == last, dg[None, :], 0.0)
        dtheta_eff = tl.sum(dG * P, 0) + dn * Elast
        dP = dG * theta_eff[None, :]
        dE = mm(tl.trans(A), dP, PRECISION) + tl.where(idx[:, None] == last, (dn * theta_eff)[None, :], 0.0)
        dA = mm(dP, tl.trans(E), PRECISION)
        dc += tl.where(idx == last, dcT, 0.0)
        df += tl.where(idx == last, dfT, 0.0)
        dA += df[:, None] * em[None, :]
        dem = tl.sum(A * df[:, None], 0) + tl.where(idx == last, dmT, 0.0)
        dlr = rev_cumsum(dc * c) + segment_sum_adjoint(dA * A, idx)
        dle = rev_cumsum(dem * em) + segment_sum_adjoint(dE * E, idx)

        # Inner-gradient clipping: theta_eff = theta * min(1, max_norm / sqrt(sq)).
        if CLIP:
            dtheta = dtheta_eff * tl.minimum(raw, 1.0)
            dsq = tl.where(raw < 1.0, dtheta_eff * theta * (-0.5) * raw / (sq + EPS), 0.0)
            da0 += 2.0 * k * (dsq * sqd0)[:, None]
            dd0 += 2.0 * d0 * (dsq * sqa0)[:, None]
            if DEPTH == 2:
                da1 += 2.0 * a1 * (dsq * sqd1)[:, None]
                dd1 += 2.0 * d1 * (dsq * sqa1)[:, None]
        else:
            dtheta = dtheta_eff

        # Key path: d0 = (d1 W2^T) * act'(z0), d_last = 2 (z_last - v); z0 = k W1, z1 = a1 W2.
        if DEPTH == 2:
            u = mm(d1, tl.trans(W2), PRECISION)
            du = dd0 * dphi0
            dd1 += mm(du, W2, PRECISION)
            dW2 += mm(tl.trans(du), d1, PRECISION)
            dz0 = dd0 * u * act_grad2(z0, ACT)
            dz1 = 2.0 * dd1
            dv = -2.0 * dd1
            dW2 += mm(tl.trans(a1), dz1, PRECISION)
            da1 += mm(dz1, tl.trans(W2), PRECISION)
            dz0 += da1 * dphi0
        else:
            dz0 = 2.0 * dd0
            dv = -2.0 * dd0
        dW1 += mm(tl.trans(k), dz0, PRECISION)
        da0 += mm(dz0, tl.trans(W1), PRECISION)

        store_tokens(dq_ptr + row0 * DK, dq, 0, valid, DK, BC, BK, H * DK)
        store_tokens(dk_ptr + row0 * DK, da0, 0, valid, DK, BC, BK, H * DK)
        store_tokens(dv_ptr + row0 * DV, dv, 0, valid, DV, BC, BV, H * DV)
        store_gate(dtheta_ptr + row0, dtheta, 0, valid, BC, H)
        store_gate(dle_ptr + row0, dle, 0, valid, BC, H)
        store_gate(dlr_ptr + row0, dlr, 0, valid, BC, H)
        dW1n = dW1
        dS1n = dS1
        if DEPTH == 2:
            dW2n = dW2
            dS2n = dS2

    store_state(dstate0_ptr + base_state, dW1n, dS1n, dW2n, dS2n, DK, DH, DV, BK, BH, BV, DEPTH)
