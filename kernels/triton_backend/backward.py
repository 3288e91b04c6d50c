"""Triton backward kernel of the chunked memory scan.

One program per (batch, head) walks the checkpoint groups in reverse. For a group it
copies the saved checkpoint (the state at the group's first chunk) into a replay buffer
and re-runs the forward's chunk step without output (`advance_chunk`) to rebuild the start
state of every chunk in the group (CKPT states of replay per program); then it
differentiates the group's chunks last to first with `backward_chunk`. The gradient of the
state after the current chunk lives in a per-program fp32 buffer (dstate_ptr), tiled like
the state and rewritten in place.

`backward_chunk` is chunk.py's chain rule at hidden-tile granularity, as eleven phases
(backward_state.py: phases 0-4, backward_inputs.py: 5-10), each a non-inlined function
taking its pointers grouped as `work` (chunk-start state, state gradient, the two
scratches), `io` (dy and the inputs), `grads` (the input gradients) and `pos` (chunk index,
T, the clip's threshold, H). The tiles couple through sums that must be complete
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

from .backward_inputs import (
    bwd_finish,
    bwd_gate_grads,
    bwd_key_path,
    bwd_layer2_scores,
    bwd_score_grads,
    bwd_store_inputs,
)
from .backward_scratch import N_VEC
from .backward_state import bwd_end_state, bwd_inner_errors, bwd_layer1_outputs, bwd_retrieval, bwd_retrieval_layer2
from .pieces import (
    copy_flat,
    restart_state,
    zero_flat,
)
from .step import advance_chunk


@triton.jit
def backward_chunk(
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
    """Gradients of chunk ci. src: its start state; dst: on entry the gradient of the state
    after the chunk, on exit that of the state before it; scr: [3, BC, DT] tile scratch; cs:
    the chunk scratch. Eleven phases (seven at depth 1), each a call of its own: a phase's
    registers hold only what it works on, and what the next one needs goes through the
    scratch (L2). pos: (chunk index, T, the clip's threshold, H, this program's index in its
    group, the group's (batch, head)); a one-program kernel is a group of one, and NT
    counts the tiles this program walks (tiles s * NT to s * NT + NT - 1)."""
    bwd_inner_errors(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_end_state(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    if DEPTH == 2:
        bwd_layer1_outputs(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
        bwd_retrieval_layer2(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_retrieval(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    if DEPTH == 2:
        bwd_layer2_scores(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_score_grads(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_gate_grads(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_key_path(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    if DEPTH == 2:
        bwd_finish(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
    bwd_store_inputs(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)


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
    dy_ptr,
    dstate_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    log_eta_ptr,
    log_retain_ptr,
    saved_ptr,
    replay_ptr,
    scratch_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    dtheta_ptr,
    dlog_eta_ptr,
    dlog_retain_ptr,
    resets_ptr,
    init_ptr,
    dinit_ptr,
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
    OP: tl.constexpr,
    RESETS: tl.constexpr,
    SCRATCH: tl.constexpr,
):
    """dstate_ptr holds the gradient of the end state on entry and that of the initial state
    on exit. replay_ptr: [B*H, CKPT, NSTATE]; scratch_ptr: [B*H, SCRATCH] (fp32): the tile scratch
    [3, BC, DT], then the chunk scratch (chunk_scratch; config.backward_scratch). With
    RESETS, the replay restarts rows where the forward did, and the gradient of a
    restarted chunk's start state goes to dinit_ptr ([B*H, NSTATE / 2], zeroed by the
    caller) instead of to the chunk before."""
    pid = tl.program_id(0)
    pid64 = pid.to(tl.int64)
    dst = dstate_ptr + pid64 * NSTATE
    replay = replay_ptr + pid64 * CKPT * NSTATE
    tl.static_assert(
        3 * BC * DT + 2 * BC * BV + 2 * BC * BK + 2 * BC * BC + N_VEC * BC + BC * (BK if BK > BV else BV) <= SCRATCH
    )
    scr = scratch_ptr + pid64 * SCRATCH
    cs = scr + 3 * BC * DT
    inputs = (q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr)
    io = (dy_ptr, q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr)  # no starred tuples in compiled Triton
    grads = (dq_ptr, dk_ptr, dv_ptr, dtheta_ptr, dlog_eta_ptr, dlog_retain_ptr)
    n_chunks = tl.cdiv(T, CHUNK)
    n_ckpt = tl.cdiv(n_chunks, CKPT)
    for rg in range(n_ckpt):
        gi = n_ckpt - 1 - rg
        c0 = gi * CKPT
        n_in_group = tl.minimum(CKPT, n_chunks - c0)
        copy_flat(saved_ptr + (pid64 * n_ckpt + gi) * NSTATE, replay, NSTATE, 1024)
        tl.debug_barrier()
        for i in range(n_in_group - 1):  # rebuild the start states of the group's chunks
            src, dst_state = replay + i * NSTATE, replay + (i + 1) * NSTATE
            step = (c0 + i, T, max_norm, H)
            advance_chunk(src, dst_state, inputs, step, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
            if RESETS:
                restart_state(replay + (i + 1) * NSTATE, init_ptr, resets_ptr, c0 + i + 1, T, H, CHUNK, NSTATE)
        for r in range(n_in_group):
            i = n_in_group - 1 - r
            work = (replay + i * NSTATE, dst, scr, cs)
            pos = (c0 + i, T, max_norm, H, 0, pid)
            backward_chunk(work, io, grads, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NT, DEPTH, ACT, CLIP, OP)
            if RESETS:
                restart_gradient(dst, dinit_ptr, resets_ptr, c0 + i, T, H, CHUNK, NSTATE)
