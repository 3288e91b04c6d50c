"""The backward kernel's per-program chunk scratch: its layout (d1, dd1, da0, dq, two
[BC, BC] score gradients, N_VEC per-token vectors, rows V_*, and the key path's partial
sum), the loads and stores through it, and the pieces every backward phase reads first (chunk_inputs) or shares
(end_state_terms)."""

import triton
import triton.language as tl

from .pieces import (
    frobenius,
    load_tile,
    mm,
    mm_nt,
    rowsum,
    store_tile,
)
from .step import program_chunk


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
V_DC = tl.constexpr(9)  # dc, df: layer 2's retrieval sums (depth 2)
V_DF = tl.constexpr(10)
V_DSQ = tl.constexpr(11)
V_ENDS = tl.constexpr(12)  # the scalars dc_T, df_T, dm_T at its first three entries
V_DTHETA_EFF = tl.constexpr(13)
V_DC1 = tl.constexpr(14)  # dc, df: layer 1's retrieval sums
V_DF1 = tl.constexpr(15)
N_VEC = tl.constexpr(16)


@triton.jit
def chunk_scratch(cs, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The chunk scratch (fp32, per program): what one phase of a chunk's backward hands
    to the next. Pointers to d1 and dd1 [BC, BV], da0 (dk) and dq [BC, BK], s1 and dR0
    [BC, BC], and N_VEC per-token vectors [N_VEC, BC] (rows V_*). config.backward_scratch
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
def key_path_sum(cs, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The chunk scratch's last block, [BC, max(BK, BV)]: a sum over this program's tiles
    that its phase starts from zero (bwd_key_path's to dd1 at depth 2, or to da0; then
    bwd_finish's to da0), so that split programs can complete it before it is added to
    the sum it belongs to."""
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    return vec + N_VEC * BC


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
def put_inner_errors(
    cs,
    d1,
    theta_eff,
    raw,
    sq,
    sqa0,
    sqd0,
    sqa1,
    sqd1,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DEPTH: tl.constexpr,
):
    """The chunk's coupled quantities (step.inner_errors' results) into the chunk scratch,
    for every later phase."""
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


@triton.jit
def chunk_inputs(
    cs,
    io,
    pos,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CHUNK: tl.constexpr,
    BC: tl.constexpr,
    DEPTH: tl.constexpr,
    OP: tl.constexpr,
):
    """A backward phase's chunk (pos: its index, T, the clip's threshold, H, the program's
    index in its group, the group's (batch, head)): its rows and inputs (io: dy and the
    input pointers), with d1 and theta_eff from the chunk scratch (written by
    bwd_inner_errors). At depth 1 d1 is v (unused)."""
    dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = io
    ci, T, max_norm, H, s, bh = pos
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        bh, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1p, dd1p, da0p, dqp, s1p, dR0p, vec = chunk_scratch(cs, BC, BK, BV)
    d1 = get(d1p, BC, BV) if DEPTH == 2 else v
    theta_eff = get_vec(vec, V_THETA_EFF, BC)
    return row0, valid, last, q, k, v, theta, log_eta, log_retain, d1, theta_eff
