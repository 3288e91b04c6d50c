"""Triton forward kernel of the chunked memory scan: one program per (batch, head) walks the
chunks in order (step.py has a chunk's work and the state layout). Where its one walk
spills (sm_80, and sm_90 above 64-wide tiles), a depth-2 chunk runs as four non-inlined
phases that meet through a small per-program scratch (PHASED)."""

import triton
import triton.language as tl

from .pieces import (
    act_fn,
    copy_flat,
    decays,
    load_tile,
    mm,
    mm_nt,
    operand,
    restart_state,
    store_gate,
    store_tile,
    store_tokens,
)
from .step import advance_chunk, chunk_step, inner_errors, layer1_tile, program_chunk


@triton.jit
def clip_factors(theta_ptr, T):
    """Where the clip factors go ([B, T, H] fp32): right after theta in the same buffer
    (ops.memory_scan allocates them together), so that the chunk loop holds no pointer
    more than without them (one more held pointer spills on sm_80)."""
    return theta_ptr + tl.cast(T, tl.int64) * tl.num_programs(0)


@triton.jit(noinline=True)
def save_checkpoint(state_ptr, saved_ptr, ci, T, CHUNK: tl.constexpr, NSTATE: tl.constexpr, CKPT: tl.constexpr):
    """Copy this program's state to its checkpoint slot if chunk ci starts a group (not
    inlined, for the same reason as forward_chunk)."""
    if ci % CKPT == 0:
        pid = tl.program_id(0).to(tl.int64)
        n_ckpt = tl.cdiv(tl.cdiv(T, CHUNK), CKPT)
        copy_flat(state_ptr + pid * NSTATE, saved_ptr + (pid * n_ckpt + ci // CKPT) * NSTATE, NSTATE, 1024)


@triton.jit(noinline=True)
def update_phase(
    state_ptr,
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
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    NSTATE: tl.constexpr,
):
    """Phased forward (depth 2): this program's state advanced through chunk ci in place
    (advance_chunk), the state's address derived here so that the chunk loop holds
    nothing more across the call."""
    st = state_ptr + tl.program_id(0).to(tl.int64) * NSTATE
    advance_chunk(st, st, inputs, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, 2, ACT, CLIP, OP)


@triton.jit
def forward_scratch(fs, BC: tl.constexpr, BV: tl.constexpr):
    """The phased forward's scratch (fp32, per program; config.forward_scratch sizes
    it): d1 and the retrieval's partial y1 [BC, BV], the layer-2 scores s1 [BC, BC],
    the clip factor min(1, raw) [BC] (1 without a clip; the later phases take theta_eff =
    theta * it, the same product layer1_phase took, and output_phase writes it out), then
    layer 1's output h1 [BC, DT]."""
    d1 = fs
    y1 = d1 + BC * BV
    s1 = y1 + BC * BV
    th = s1 + BC * BC
    h1 = th + BC
    return d1, y1, s1, th, h1


@triton.jit(noinline=True)
def layer1_phase(
    state_ptr,
    inputs,
    scratch_ptr,
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
    ACT: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    NSTATE: tl.constexpr,
    FSCRATCH: tl.constexpr,
):
    """Phased forward (depth 2), first phase: chunk ci's inner errors and layer 1's
    retrieval h1 = act(c (q W1) + f (q S1) - ((q k^T) * G) d0) from the chunk-start state,
    tile by tile, into the forward scratch with d1 and each token's clip factor (theta_eff
    = theta * factor)."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    pid = tl.program_id(0)
    st = state_ptr + pid.to(tl.int64) * NSTATE
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        pid, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1, theta_eff, raw, sq, sqa0, sqd0, sqa1, sqd1 = inner_errors(
        st, k, v, theta, max_norm, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, NT, 2, ACT, CLIP, OP
    )
    d1p, y1p, s1p, thp, h1p = forward_scratch(scratch_ptr + pid.to(tl.int64) * FSCRATCH, BC, BV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta_eff, valid, BC, OP)
    sG = operand(mm_nt(q, k, OP) * G, OP)
    d1o = operand(d1, OP)
    for j in range(NT):
        W1, W2, z, a, phi, u, d0 = layer1_tile(
            st, j, k, d1o, v_ptr + row0 * DV, valid, H, DK, DT, DV, BK, BT, BV, BC, 2, ACT, OP
        )
        S1 = load_tile(st + L1 + L2, DK, DT, 0, j * BT, BK, BT)
        y0 = c[:, None] * mm(q, W1, OP) + f[:, None] * mm(q, S1, OP) - mm(sG, d0, OP)
        store_tile(h1p, act_fn(y0, ACT), BC, DT, 0, j * BT, BC, BT)
    store_tile(d1p, d1, BC, BV, 0, 0, BC, BV)
    if CLIP:
        tl.store(thp + tl.arange(0, BC), tl.minimum(raw, 1.0))
    else:
        tl.store(thp + tl.arange(0, BC), theta * 0.0 + 1.0)
    tl.debug_barrier()


@triton.jit(noinline=True)
def layer2_phase(
    state_ptr,
    inputs,
    scratch_ptr,
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
    ACT: tl.constexpr,
    OP: tl.constexpr,
    NSTATE: tl.constexpr,
    FSCRATCH: tl.constexpr,
):
    """Phased forward (depth 2), second phase: layer 2's tile sums y1 = sum_j c (h1 W2) +
    f (h1 S2) and s1 = sum_j h1 a^T from the chunk-start state, into the forward scratch
    (output_phase finishes y once advance_chunk has updated the state)."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    L1: tl.constexpr = DK * DT
    L2: tl.constexpr = DT * DV
    pid = tl.program_id(0)
    st = state_ptr + pid.to(tl.int64) * NSTATE
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        pid, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1p, y1p, s1p, thp, h1p = forward_scratch(scratch_ptr + pid.to(tl.int64) * FSCRATCH, BC, BV)
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta * tl.load(thp + tl.arange(0, BC)), valid, BC, OP)
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
    inputs,
    y_ptr,
    scratch_ptr,
    pos,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CHUNK: tl.constexpr,
    BC: tl.constexpr,
    CLIP: tl.constexpr,
    OP: tl.constexpr,
    FSCRATCH: tl.constexpr,
):
    """Phased forward (depth 2), last phase: y = y1 - ((s1 * G) d1) from layer2_phase's
    sums, written out, and with CLIP the chunk's clip factors."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    pid = tl.program_id(0)
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        pid, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    d1p, y1p, s1p, thp, h1p = forward_scratch(scratch_ptr + pid.to(tl.int64) * FSCRATCH, BC, BV)
    factor = tl.load(thp + tl.arange(0, BC))
    A, E, P, G, c, em, f = decays(log_retain, log_eta, theta * factor, valid, BC, OP)
    s1G = operand(load_tile(s1p, BC, BC, 0, 0, BC, BC) * G, OP)
    y = load_tile(y1p, BC, BV, 0, 0, BC, BV) - mm(s1G, load_tile(d1p, BC, BV, 0, 0, BC, BV), OP)
    store_tokens(y_ptr + row0 * DV, y, valid, DV, BC, BV, H * DV)
    if CLIP:
        store_gate(clip_factors(theta_ptr, T) + row0, factor, valid, BC, H)
    tl.debug_barrier()  # the next chunk's layer1_phase overwrites the scratch


@triton.jit(noinline=True)
def forward_chunk(
    state_ptr,
    inputs,
    y_ptr,
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
    NSTATE: tl.constexpr,
):
    """Load chunk ci and advance the state through it, writing its output. Not inlined (so
    it takes scalars only): the chunk loop would otherwise hoist this body's index, mask
    and pointer tensors and hold them in registers for the whole sequence. It derives its
    program's state and token offsets itself, so the caller holds fewer values across it.
    Where this one walk spills, the kernel runs the phases instead (PHASED)."""
    q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr = inputs
    ci, T, max_norm, H = pos
    pid = tl.program_id(0)
    st = state_ptr + pid.to(tl.int64) * NSTATE
    row0, valid, last, q, k, v, theta, log_eta, log_retain = program_chunk(
        pid, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr, ci, T, H, DK, DV, BK, BV, CHUNK, BC, OP
    )
    chunk = (q, k, v, theta, log_eta, log_retain, valid, last)
    v_rows, y_rows, clip_rows = v_ptr + row0 * DV, y_ptr + row0 * DV, clip_factors(theta_ptr, T) + row0
    out = (v_rows, y_rows, clip_rows)
    chunk_step(st, st, chunk, max_norm, out, H, DK, DT, DV, BK, BT, BV, BC, NT, DEPTH, ACT, CLIP, OP, True)


@triton.jit
def scan_forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    log_eta_ptr,
    log_retain_ptr,
    state_ptr,
    y_ptr,
    saved_ptr,
    scratch_ptr,
    resets_ptr,
    init_ptr,
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
    PHASED: tl.constexpr,
    FSCRATCH: tl.constexpr,
):
    """One program per (batch, head) walks the chunks in order. state_ptr holds the initial
    state on entry and the end state on exit. With CLIP, each token's clip factor
    min(1, max_norm / |inner gradient|) goes right after theta (clip_factors). With SAVE,
    the state at the start of every CKPT-th chunk is copied to saved_ptr ([B*H, n_checkpoints, NSTATE]): the backward's
    checkpoints, from which it recomputes the chunks in between. With RESETS (packed
    documents), a row restarts from its initial weights (init_ptr) before every chunk
    that resets_ptr flags; a checkpoint holds the restarted state. With PHASED (depth 2),
    scratch_ptr is the phased forward's scratch ([B*H, FSCRATCH] fp32; unused otherwise)."""
    inputs = (q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr)
    for ci in range(tl.cdiv(T, CHUNK)):
        pos = (ci, T, max_norm, H)
        if RESETS:
            restart_state(
                state_ptr + tl.program_id(0).to(tl.int64) * NSTATE, init_ptr, resets_ptr, ci, T, H, CHUNK, NSTATE
            )
        if SAVE:
            save_checkpoint(state_ptr, saved_ptr, ci, T, CHUNK, NSTATE, CKPT)
        if PHASED:
            layer1_phase(
                state_ptr,
                inputs,
                scratch_ptr,
                pos,
                DK,
                DT,
                DV,
                BK,
                BT,
                BV,
                CHUNK,
                BC,
                NT,
                ACT,
                CLIP,
                OP,
                NSTATE,
                FSCRATCH,
            )
            layer2_phase(
                state_ptr, inputs, scratch_ptr, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, ACT, OP, NSTATE, FSCRATCH
            )
            update_phase(state_ptr, inputs, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, ACT, CLIP, OP, NSTATE)
            output_phase(inputs, y_ptr, scratch_ptr, pos, DK, DV, BK, BV, CHUNK, BC, CLIP, OP, FSCRATCH)
        else:
            forward_chunk(
                state_ptr, inputs, y_ptr, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP, NSTATE
            )
