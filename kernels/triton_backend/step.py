"""One chunk of the memory scan in Triton, shared by the forward kernel (forward.py) and the
backward's replay (backward.py): the inner errors, the chunk step that retrieves and
updates the state tile by tile, and `advance_chunk`, a chunk's state update on its own.

Why the state is streamed in tiles. The default deep memory (head dim 64, hidden 256) has
256 KiB of fp32 state per (batch, head) (W1, W2 and their momenta): more than an SM's
whole register file, and more than a block's shared memory. Holding it on chip as one
tensor spills or cannot launch. So the state lives in a per-(batch, head) fp32 buffer in
global memory (256 KiB x B*H: L2-resident at typical B*H), and each chunk walks it in
tiles of BT hidden units: W1[:, j], S1[:, j] (D_k x BT) and W2[j, :], S2[j, :] (BT x D_v).
Everything a tile needs is on chip while it is processed; nothing larger than a tile or a
chunk's [C, C] decay matrix is ever live.

The hidden units couple through one quantity per chunk: the last layer's inner error
d1 = 2 (sum_j act(k W1_j) W2_j - v) (and the clip's norm). So a chunk is two walks over
the tiles: `inner_errors` sums d1 (and the clip norm), then `chunk_step` computes each
tile's retrieval and its state update. At depth 1 the tiled dimension is D_v (columns of W)
and the first walk is needed only for the clip.

Tiles are read and rewritten in place; `tl.debug_barrier()` separates every read of a tile
from its overwrite and every write from the next chunk's read (different threads of the
program touch the same addresses).

State layout per (batch, head), fp32, row-major: W1 [DK, DT], W2 [DT, DV] (depth 2),
S1, S2 (ops.pack_state). DT is the hidden width at depth 2 and D_v at depth 1.
Token tensors are contiguous [B, T, H, D]; gate tensors contiguous fp32 [B, T, H].
"""

import triton
import triton.language as tl

from .pieces import (
    act_fn,
    act_grad,
    at_index,
    chunk_rows,
    clip_scale,
    decays,
    load_chunk,
    load_tile,
    load_tokens,
    mm,
    mm_fine,
    mm_nt,
    mm_tn,
    operand,
    row_at,
    rowsum,
    store_gate,
    store_tile,
    store_tokens,
)


@triton.jit
def layer1_tile(
    st,
    j,
    k,
    d1,
    v_ptr,
    valid,
    H,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    BC: tl.constexpr,
    DEPTH: tl.constexpr,
    ACT: tl.constexpr,
    OP: tl.constexpr,
):
    """Tile j of the first memory layer for the chunk's keys: W1_j, W2_j (rows j; W1_j
    again at depth 1), z = k W1_j, a = act(z), act'(z), u = d1 W2_j^T and the inner
    error d0 at this layer's output (depth 1: 2 (z - v_j); depth 2: u * act'(z))."""
    W1 = load_tile(st, DK, DT, 0, j * BT, BK, BT)
    if DEPTH == 2:
        z = mm(k, W1, OP)
        W2 = load_tile(st + DK * DT, DT, DV, j * BT, 0, BT, BV)
        a = act_fn(z, ACT)
        phi = act_grad(z, ACT)
        u = mm_nt(d1, W2, OP)
        d0 = u * phi
    else:
        z = mm_fine(k, W1, OP, True)  # d0 = 2 (z - v) cancels
        W2 = W1
        a = z
        phi = z
        u = z
        d0 = 2.0 * (z - load_tokens(v_ptr + j * BT, valid, DV - j * BT, BC, BT, H * DV))
    return W1, W2, z, a, phi, u, d0


@triton.jit
def memory_output_tile(k, W1, W2, ACT: tl.constexpr, OP: tl.constexpr):
    """(Depth 2) hidden tile j's activations a = act(k W1_j) and its share a W2_j of the
    memory's output M(k), which the inner error d1 = 2 (M(k) - v) compares with v: both
    products to about twice the operand precision (mm_fine), because that difference
    cancels."""
    a = act_fn(mm_fine(k, W1, OP, True), ACT)
    return a, mm_fine(a, W2, OP, False)


@triton.jit
def inner_errors(
    st,
    k,
    v,
    theta,
    max_norm,
    v_ptr,
    valid,
    H,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    BC: tl.constexpr,
    NT: tl.constexpr,
    DEPTH: tl.constexpr,
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
):
    """The chunk's coupled quantities, summed over hidden tiles: the last layer's inner
    error d1 (depth 2) and the clipped learning rate theta_eff with the clip's terms."""
    kf = k.to(tl.float32)
    sqa0 = rowsum(kf * kf)
    if DEPTH == 2:
        e = tl.zeros([BC, BV], dtype=tl.float32)
        sqa1 = tl.zeros([BC], dtype=tl.float32)
        for j in range(NT):
            W1 = load_tile(st, DK, DT, 0, j * BT, BK, BT)
            W2 = load_tile(st + DK * DT, DT, DV, j * BT, 0, BT, BV)
            a, out = memory_output_tile(k, W1, W2, ACT, OP)
            e += out
            sqa1 += rowsum(a * a)
        d1 = 2.0 * (e - v)
        sqd1 = rowsum(d1 * d1)
    else:
        d1 = v  # unused: a depth-1 memory has one layer
        sqa1 = sqa0 * 0.0
        sqd1 = sqa1
    if CLIP:
        sqd0 = sqa0 * 0.0
        for j in range(NT):
            W1, W2, z, a, phi, u, d0 = layer1_tile(
                st, j, k, d1, v_ptr, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
            )
            sqd0 += rowsum(d0 * d0)
        sq = sqa0 * sqd0 + sqa1 * sqd1
        raw = clip_scale(sq, max_norm)
        theta_eff = theta * tl.minimum(raw, 1.0)
    else:
        sqd0 = sqa0 * 0.0
        sq = sqd0
        raw = sqd0
        theta_eff = theta
    return d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1


@triton.jit
def end_coefficients(G, E, c, f, em, theta_eff, last, BC: tl.constexpr):
    """g = G[last, :], n = E[last, :] * theta_eff, and c, f, em at the last token: the
    coefficients of the end-of-chunk state W' = c_T W + f_T S - a^T (g d), S' = m_T S - a^T (n d)."""
    idx = tl.arange(0, BC)
    Elast = row_at(E, idx, last)
    return (
        row_at(G, idx, last),
        Elast,
        Elast * theta_eff,
        at_index(c, idx, last),
        at_index(f, idx, last),
        at_index(em, idx, last),
    )


@triton.jit
def chunk_step(
    src,
    dst,
    chunk,
    max_norm,
    rows,
    H,
    DK: tl.constexpr,
    DT: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    BC: tl.constexpr,
    NT: tl.constexpr,
    DEPTH: tl.constexpr,
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    WITH_OUTPUT: tl.constexpr,
):
    """One chunk: the state at `src` (the chunk start) advances to `dst` (may be `src`), and
    with WITH_OUTPUT the retrieval y is written at y_ptr (row-major [C, H * DV] view) and,
    with CLIP, each token's clip factor min(1, raw) at clip_ptr (row stride H). rows: the
    chunk's first rows of v, y and the clip factors (v_ptr, y_ptr, clip_ptr).
    chunk: its loaded inputs (q, k, v, theta, log_eta, log_retain) with the valid rows and
    the last token (program_chunk)."""
    q, k, v, theta, log_eta, log_retain, valid, last = chunk
    v_ptr, y_ptr, clip_ptr = rows
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1 = inner_errors(
        src, k, v, theta, max_norm, v_ptr, valid, H, DK, DT, DV, BK, BT, BV, BC, NT, DEPTH, ACT, CLIP, OP
    )
    if WITH_OUTPUT and CLIP:
        store_gate(clip_ptr, tl.minimum(raw, 1.0), valid, BC, H)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    g, Elast, n, cT, fT, mT = end_coefficients(G, E, c, f, em, theta_eff, last, BC)
    sG = operand(mm_nt(q, k, OP) * G, OP)
    d1o = operand(d1, OP)  # d1 as a matmul operand
    y1 = tl.zeros([BC, BV], dtype=tl.float32)
    s1 = tl.zeros([BC, BC], dtype=tl.float32)
    for j in range(NT):
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            src, j, k, d1o, v_ptr, valid, H, DK, DT, DV, BK, BT, BV, BC, DEPTH, ACT, OP
        )
        S1 = load_tile(src + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        if DEPTH == 2:
            S2 = load_tile(src + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
        if WITH_OUTPUT:
            # Retrieval: y_l = c (h_l W_l) + f (h_l S_l) - ((h_l a_l^T) * G) d_l; at depth 2
            # the second layer's terms (and its scores h1 a^T) are sums over hidden tiles.
            y0 = c[:, None] * mm(q, W1, OP) + f[:, None] * mm(q, S1, OP) - mm(sG, d0, OP)
            if DEPTH == 2:
                h1 = act_fn(y0, ACT)
                y1 += c[:, None] * mm(h1, W2, OP) + f[:, None] * mm(h1, S2, OP)
                s1 += mm_nt(h1, a, OP)
            else:
                store_tokens(y_ptr + j * BT, y0, valid, DV - j * BT, BC, BT, H * DV)
        W1n = cT * W1 + fT * S1 - mm_tn(k, g[:, None] * d0, OP)
        S1n = mT * S1 - mm_tn(k, n[:, None] * d0, OP)
        if DEPTH == 2:
            # the fp32 d1, scaled, then rounded once: rounding d1 first cost the gradients
            # of k, v and theta 15x in bf16 (tests/test_triton_kernels.py, bf16 case)
            W2n = cT * W2 + fT * S2 - mm_tn(a, g[:, None] * d1, OP)
            S2n = mT * S2 - mm_tn(a, n[:, None] * d1, OP)
        tl.debug_barrier()  # every thread has read tile j before it is overwritten
        store_tile(dst, W1n, DK, DT, 0, j * BT, BK, BT)
        store_tile(dst + L1 + L2, S1n, DK, DT, 0, j * BT, BK, BT)
        if DEPTH == 2:
            store_tile(dst + L1, W2n, DT, DV, j * BT, 0, BT, BV)
            store_tile(dst + 2 * L1 + L2, S2n, DT, DV, j * BT, 0, BT, BV)
    tl.debug_barrier()  # the next reader of dst sees every tile
    if WITH_OUTPUT:
        if DEPTH == 2:
            y1 -= mm(operand(s1 * G, OP), d1o, OP)
            store_tokens(y_ptr, y1, valid, DV, BC, BV, H * DV)


@triton.jit
def head_rows(bh, ci, T, H, CHUNK: tl.constexpr, BC: tl.constexpr):
    """Chunk ci's rows for (batch, head) bh: the first row's index in the [B*T*H, D] view,
    which tile rows are tokens, the last token."""
    t0, valid, last = chunk_rows(ci, T, CHUNK, tl.arange(0, BC))
    return ((bh // H).to(tl.int64) * T) * H + bh % H + t0 * H, valid, last


@triton.jit
def program_chunk(
    bh,
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    log_eta_ptr,
    log_retain_ptr,
    ci,
    T,
    H,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CHUNK: tl.constexpr,
    BC: tl.constexpr,
    OP: tl.constexpr,
):
    """Rows of chunk ci for (batch, head) bh (the program id of a one-program kernel): the
    first row's index in the [B*T*H, D] view, which tile rows are tokens, the last token,
    and the chunk's inputs (load_chunk)."""
    row0, valid, last = head_rows(bh, ci, T, H, CHUNK, BC)
    q, k, v, theta, log_eta, log_retain = load_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, row0, valid, H, DK, DV, BC, BK, BV, OP
    )
    return row0, valid, last, q, k, v, theta, log_eta, log_retain


@triton.jit(noinline=True)
def advance_chunk(
    src,
    dst,
    inputs,
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
    """Advance the state at src through chunk ci into dst, without output: the backward's
    replay, and the phased forward's update. inputs: the q, k, v, theta and log-gate
    pointers; pos: (ci, T, max_norm, H). Not inlined, so the loops around it cannot hoist
    its index, mask and pointer tensors into registers held across all chunks. It derives
    its program's token offset itself, for the same reason."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    pid = tl.program_id(0)
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        pid, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    chunk = (q, k, v, theta, log_eta, log_retain, valid, last)
    # No output without WITH_OUTPUT: v_ptr stands in for the unused y and clip pointers.
    v_rows = v_ptr + row0 * DV
    rows = (v_rows, v_ptr, v_ptr)
    chunk_step(src, dst, chunk, max_norm, rows, H, DK, DT, DV, BK, BT, BV, BC, NT, DEPTH, ACT, CLIP, OP, False)
