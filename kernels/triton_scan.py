"""Triton forward kernel of the chunked memory scan, and the per-chunk pieces it shares
with the backward (triton_scan_bwd.py).

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
S1, S2 (triton_op.pack_state). DT is the hidden width at depth 2 and D_v at depth 1.
Token tensors are contiguous [B, T, H, D]; gate tensors contiguous fp32 [B, T, H].
"""

import triton
import triton.language as tl

from .triton_chunk import (
    act_fn,
    act_grad,
    at_index,
    chunk_rows,
    clip_scale,
    copy_flat,
    decays,
    load_chunk,
    load_tile,
    load_tokens,
    mm,
    mm_nt,
    mm_tn,
    operand,
    restart_state,
    row_at,
    rowsum,
    store_tile,
    store_tokens,
)


@triton.jit
def layer1_tile(
    st, j, k, d1, v_ptr, valid, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr,
    BT: tl.constexpr, BV: tl.constexpr, BC: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
    OP: tl.constexpr,
):  # fmt: skip
    """Tile j of the first memory layer for the chunk's keys: W1_j, W2_j (rows j; W1_j
    again at depth 1), z = k W1_j, a = act(z), act'(z), u = d1 W2_j^T and the inner
    error d0 at this layer's output (depth 1: 2 (z - v_j); depth 2: u * act'(z))."""
    W1 = load_tile(st, DK, DT, 0, j * BT, BK, BT)
    z = mm(k, W1, OP)
    if DEPTH == 2:
        W2 = load_tile(st + DK * DT, DT, DV, j * BT, 0, BT, BV)
        a = act_fn(z, ACT)
        phi = act_grad(z, ACT)
        u = mm_nt(d1, W2, OP)
        d0 = u * phi
    else:
        W2 = W1
        a = z
        phi = z
        u = z
        d0 = 2.0 * (z - load_tokens(v_ptr + j * BT, valid, DV - j * BT, BC, BT, H * DV))
    return W1, W2, z, a, phi, u, d0


@triton.jit
def inner_errors(
    st, k, v, theta, max_norm, v_ptr, valid, H, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, BC: tl.constexpr, NT: tl.constexpr,
    DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
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
            a = act_fn(mm(k, W1, OP), ACT)
            e += mm(a, W2, OP)
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
    src, dst, q, k, v, theta, le, lr, valid, last, max_norm, v_ptr, y_ptr, H, DK: tl.constexpr,
    DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr, OP: tl.constexpr,
    WITH_OUTPUT: tl.constexpr,
):  # fmt: skip
    """One chunk: the state at `src` (the chunk start) advances to `dst` (may be `src`), and
    with WITH_OUTPUT the retrieval y is written at y_ptr (row-major [C, H * DV] view)."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV if DEPTH == 2 else 0
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1 = inner_errors(
        src, k, v, theta, max_norm, v_ptr, valid, H, DK, DT, DV, BK, BT, BV, BC, NT, DEPTH, ACT, CLIP, OP
    )
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    g, Elast, n, cT, fT, mT = end_coefficients(G, E, c, f, em, theta_eff, last, BC)
    sG = operand(mm_nt(q, k, OP) * G, OP)
    d1o = operand(d1, OP)  # from here on d1 is only a matmul operand
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
            W2n = cT * W2 + fT * S2 - mm_tn(a, g[:, None] * d1o, OP)
            S2n = mT * S2 - mm_tn(a, n[:, None] * d1o, OP)
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
def program_chunk(
    q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK: tl.constexpr, DV: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """This program's (batch, head) rows of chunk ci: the first row's index in the [B*T*H, D]
    view, which tile rows are tokens, the last token, and the chunk's inputs (load_chunk)."""
    pid = tl.program_id(0)
    tok0 = ((pid // H).to(tl.int64) * T) * H + pid % H
    t0, valid, last = chunk_rows(ci, T, CHUNK, tl.arange(0, BC))
    row0 = tok0 + t0 * H
    q, k, v, theta, le, lr = load_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, row0, valid, H, DK, DV, BC, BK, BV, OP
    )
    return row0, valid, last, q, k, v, theta, le, lr


@triton.jit(noinline=True)
def save_checkpoint(state_ptr, saved_ptr, ci, T, CHUNK: tl.constexpr, NSTATE: tl.constexpr, CKPT: tl.constexpr):
    """Copy this program's state to its checkpoint slot if chunk ci starts a group (not
    inlined, for the same reason as forward_chunk)."""
    if ci % CKPT == 0:
        pid = tl.program_id(0).to(tl.int64)
        n_ckpt = tl.cdiv(tl.cdiv(T, CHUNK), CKPT)
        copy_flat(state_ptr + pid * NSTATE, saved_ptr + (pid * n_ckpt + ci // CKPT) * NSTATE, NSTATE, 1024)


@triton.jit(noinline=True)
def advance_chunk(
    src, dst, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, max_norm, H, DK: tl.constexpr,
    DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, BC: tl.constexpr, NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
    CLIP: tl.constexpr, OP: tl.constexpr,
):  # fmt: skip
    """Advance the state at src through chunk ci into dst, without output: the backward's
    replay, and the phased forward's update. Not inlined (scalars only), so the loops
    around it cannot hoist its index, mask and pointer tensors into registers held across
    all chunks. It derives its program's token offset itself, for the same reason."""
    row0, valid, last, q, k, v, theta, le, lr = program_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    # No output without WITH_OUTPUT: v_ptr stands in for the unused y pointer.
    chunk_step(
        src, dst, q, k, v, theta, le, lr, valid, last, max_norm, v_ptr + row0 * DV, v_ptr, H, DK, DT, DV, BK,
        BT, BV, BC, NT, DEPTH, ACT, CLIP, OP, False,
    )  # fmt: skip


@triton.jit(noinline=True)
def update_phase(
    state_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, max_norm, H, DK: tl.constexpr,
    DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, BC: tl.constexpr, NT: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr,
    OP: tl.constexpr, NSTATE: tl.constexpr,
):  # fmt: skip
    """Phased forward (depth 2): this program's state advanced through chunk ci in place
    (advance_chunk), the state's address derived here so that the chunk loop holds
    nothing more across the call."""
    st = state_ptr + tl.program_id(0).to(tl.int64) * NSTATE
    advance_chunk(
        st, st, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, max_norm, H, DK, DT, DV, BK, BT, BV,
        CHUNK, BC, NT, 2, ACT, CLIP, OP,
    )  # fmt: skip


@triton.jit
def forward_scratch(fs, BC: tl.constexpr, BV: tl.constexpr):
    """The phased forward's scratch (fp32, per program; triton_op.forward_scratch sizes
    it): d1 and the retrieval's partial y1 [BC, BV], the layer-2 scores s1 [BC, BC],
    theta_eff [BC], then layer 1's output h1 [BC, DT]."""
    d1 = fs
    y1 = d1 + BC * BV
    s1 = y1 + BC * BV
    th = s1 + BC * BC
    h1 = th + BC
    return d1, y1, s1, th, h1


@triton.jit(noinline=True)
def layer1_phase(
    state_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, scratch_ptr, ci, T, max_norm, H,
    DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, BC: tl.constexpr, NT: tl.constexpr, ACT: tl.constexpr, CLIP: tl.constexpr,
    OP: tl.constexpr, NSTATE: tl.constexpr, FSCRATCH: tl.constexpr,
):  # fmt: skip
    """Phased forward (depth 2), first phase: chunk ci's inner errors and layer 1's
    retrieval h1 = act(c (q W1) + f (q S1) - ((q k^T) * G) d0) from the chunk-start state,
    tile by tile, into the forward scratch with d1 and theta_eff."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    pid = tl.program_id(0)
    st = state_ptr + pid.to(tl.int64) * NSTATE
    row0, valid, last, q, k, v, theta, le, lr = program_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1 = inner_errors(
        st, k, v, theta, max_norm, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, NT, 2, ACT, CLIP, OP
    )
    A, E, P, G, c, em, f = decays(lr, le, theta_eff, valid, BC, OP)
    sG = operand(mm_nt(q, k, OP) * G, OP)
    d1o = operand(d1, OP)
    d1p, y1p, s1p, thp, h1p = forward_scratch(scratch_ptr + pid.to(tl.int64) * FSCRATCH, BC, BV)
    for j in range(NT):
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            st, j, k, d1o, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, 2, ACT, OP
        )
        S1 = load_tile(st + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        y0 = c[:, None] * mm(q, W1, OP) + f[:, None] * mm(q, S1, OP) - mm(sG, d0, OP)
        store_tile(h1p, act_fn(y0, ACT), BC, DT, 0, j * BT, BC, BT)
    store_tile(d1p, d1, BC, BV, 0, 0, BC, BV)
    tl.store(thp + tl.arange(0, BC), theta_eff)
    tl.debug_barrier()


@triton.jit(noinline=True)
def layer2_phase(
    state_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, scratch_ptr, ci, T, H, DK: tl.constexpr,
    DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, BC: tl.constexpr, NT: tl.constexpr, ACT: tl.constexpr, OP: tl.constexpr,
    NSTATE: tl.constexpr, FSCRATCH: tl.constexpr,
):  # fmt: skip
    """Phased forward (depth 2), second phase: layer 2's tile sums y1 = sum_j c (h1 W2) +
    f (h1 S2) and s1 = sum_j h1 a^T from the chunk-start state, into the forward scratch
    (output_phase finishes y once advance_chunk has updated the state)."""
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    pid = tl.program_id(0)
    st = state_ptr + pid.to(tl.int64) * NSTATE
    row0, valid, last, q, k, v, theta, le, lr = program_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1p, y1p, s1p, thp, h1p = forward_scratch(scratch_ptr + pid.to(tl.int64) * FSCRATCH, BC, BV)
    A, E, P, G, c, em, f = decays(lr, le, tl.load(thp + tl.arange(0, BC)), valid, BC, OP)
    y1 = tl.zeros([BC, BV], dtype=tl.float32)
    s1 = tl.zeros([BC, BC], dtype=tl.float32)
    for j in range(NT):
        a = act_fn(mm(k, load_tile(st, DK, DT, 0, j * BT, BK, BT), OP), ACT)
        W2 = load_tile(st + L1, DT, DV, j * BT, 0, BT, BV)
        S2 = load_tile(st + 2 * L1 + L2, DT, DV, j * BT, 0, BT, BV)
        h1 = load_tile(h1p, BC, DT, 0, j * BT, BC, BT)
        y1 += c[:, None] * mm(h1, W2, OP) + f[:, None] * mm(h1, S2, OP)
        s1 += mm_nt(h1, a, OP)
    store_tile(y1p, y1, BC, BV, 0, 0, BC, BV)
    store_tile(s1p, s1, BC, BC, 0, 0, BC, BC)
    tl.debug_barrier()


@triton.jit(noinline=True)
def output_phase(
    q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, y_ptr, scratch_ptr, ci, T, H, DK: tl.constexpr,
    DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    OP: tl.constexpr, FSCRATCH: tl.constexpr,
):  # fmt: skip
    """Phased forward (depth 2), last phase: y = y1 - ((s1 * G) d1) from layer2_phase's
    sums, written out."""
    pid = tl.program_id(0)
    row0, valid, last, q, k, v, theta, le, lr = program_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1p, y1p, s1p, thp, h1p = forward_scratch(scratch_ptr + pid.to(tl.int64) * FSCRATCH, BC, BV)
    A, E, P, G, c, em, f = decays(lr, le, tl.load(thp + tl.arange(0, BC)), valid, BC, OP)
    s1G = operand(load_tile(s1p, BC, BC, 0, 0, BC, BC) * G, OP)
    y = load_tile(y1p, BC, BV, 0, 0, BC, BV) - mm(s1G, load_tile(d1p, BC, BV, 0, 0, BC, BV), OP)
    store_tokens(y_ptr + row0 * DV, y, valid, DV, BC, BV, H * DV)
    tl.debug_barrier()  # the next chunk's layer1_phase overwrites the scratch


@triton.jit(noinline=True)
def forward_chunk(
    state_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, y_ptr, ci, T, max_norm, H,
    DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, BC: tl.constexpr, NT: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
    CLIP: tl.constexpr, OP: tl.constexpr, NSTATE: tl.constexpr,
):  # fmt: skip
    """Load chunk ci and advance the state through it, writing its output. Not inlined (so
    it takes scalars only): the chunk loop would otherwise hoist this body's index, mask
    and pointer tensors and hold them in registers for the whole sequence. It derives its
    program's state and token offsets itself, so the caller holds fewer values across it.
    Where this one walk spills, the kernel runs the phases instead (PHASED)."""
    pid = tl.program_id(0)
    st = state_ptr + pid.to(tl.int64) * NSTATE
    row0, valid, last, q, k, v, theta, le, lr = program_chunk(
        q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    chunk_step(
        st, st, q, k, v, theta, le, lr, valid, last, max_norm, v_ptr + row0 * DV, y_ptr + row0 * DV, H, DK, DT,
        DV, BK, BT, BV, BC, NT, DEPTH, ACT, CLIP, OP, True,
    )  # fmt: skip


@triton.jit
def scan_forward_kernel(
    q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, state_ptr, y_ptr, saved_ptr, scratch_ptr, resets_ptr,
    init_ptr, T, H, max_norm, DK: tl.constexpr, DT: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr,
    BT: tl.constexpr, BV: tl.constexpr, NT: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    DEPTH: tl.constexpr, ACT: tl.constexpr, NSTATE: tl.constexpr, CKPT: tl.constexpr, CLIP: tl.constexpr,
    SAVE: tl.constexpr, OP: tl.constexpr, RESETS: tl.constexpr, PHASED: tl.constexpr, FSCRATCH: tl.constexpr,
):  # fmt: skip
    """One program per (batch, head) walks the chunks in order. state_ptr holds the initial
    state on entry and the end state on exit. With SAVE, the state at the start of every
    CKPT-th chunk is copied to saved_ptr ([B*H, n_checkpoints, NSTATE]): the backward's
    checkpoints, from which it recomputes the chunks in between. With RESETS (packed
    documents), a row restarts from its initial weights (init_ptr) before every chunk
    that resets_ptr flags; a checkpoint holds the restarted state. With PHASED (depth 2),
    scratch_ptr is the phased forward's scratch ([B*H, FSCRATCH] fp32; unused otherwise)."""
    for ci in range(tl.cdiv(T, CHUNK)):
        if RESETS:
            restart_state(
                state_ptr + tl.program_id(0).to(tl.int64) * NSTATE, init_ptr, resets_ptr, ci, T, H, CHUNK, NSTATE
            )
        if SAVE:
            save_checkpoint(state_ptr, saved_ptr, ci, T, CHUNK, NSTATE, CKPT)
        if PHASED:
            layer1_phase(
                state_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, scratch_ptr, ci, T, max_norm, H, DK,
                DT, DV, BK, BT, BV, CHUNK, BC, NT, ACT, CLIP, OP, NSTATE, FSCRATCH,
            )  # fmt: skip
            layer2_phase(
                state_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, scratch_ptr, ci, T, H, DK, DT, DV,
                BK, BT, BV, CHUNK, BC, NT, ACT, OP, NSTATE, FSCRATCH,
            )  # fmt: skip
            update_phase(
                state_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, ci, T, max_norm, H, DK, DT, DV, BK,
                BT, BV, CHUNK, BC, NT, ACT, CLIP, OP, NSTATE,
            )  # fmt: skip
            output_phase(
                q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, y_ptr, scratch_ptr, ci, T, H, DK, DV, BK, BV,
                CHUNK, BC, OP, FSCRATCH,
            )  # fmt: skip
        else:
            forward_chunk(
                state_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, le_ptr, lr_ptr, y_ptr, ci, T, max_norm, H, DK, DT,
                DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP, NSTATE,
            )  # fmt: skip
