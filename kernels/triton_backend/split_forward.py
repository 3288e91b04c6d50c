"""The memory scan's forward with one (batch, head)'s state split across SPLIT programs.

The one-program forward (forward.py) walks every hidden tile of the state each chunk, so
a (batch, head) is one program however large its state. Here SPLIT programs share a
(batch, head): program s owns the hidden tiles [s * NT / SPLIT, (s + 1) * NT / SPLIT) of
W1, W2, S1 and S2 (at depth 1, the columns of W and S), keeps them where the one-program
kernel keeps them (the same flat state and checkpoints), and reads and writes no other
program's tiles. A chunk is split_step.split_chunk, or where that one walk spills, the
three phases of split_phases.py.

The hidden units couple only through sums over the tiles (step.py), so a chunk needs
three meetings of the SPLIT programs (exchange.all_reduce: a program-order sum, the same
bits in every program):
    0. depth 2: the last layer's pre-error e = sum_j act(k W1_j) W2_j, which gives d1;
    1. with the clip: the norms sum_j |a_j|^2 and sum_j |d0_j|^2, which give theta_eff;
    2. depth 2: the retrieval y = sum_j (c h1_j W2_j + f h1_j S2_j - ((h1_j a_j^T) * G) d1).
Depth 1 without the clip has no coupling at all. The clip factors and, at depth 2, the
output are stored by program 0 of the group; at depth 1 each program stores its own
columns of the output.

Each meeting's counter is used once (counters [B*H, n_chunks, 3] int32, zeroed by the
host) and has its slots (exchange.place says why consecutive meetings never share them).
Launch with every program resident (`launch_cooperative_grid=True`); a program whose
partners do not arrive within TIMEOUT_NS records 0 in ok_ptr and goes on with wrong values,
so the host raises instead of returning them. On CPU it runs in devtools/threaded_grid.py,
one thread per program. Needs triton's `tl.atomic_poll` (3.9).
"""

import triton
import triton.language as tl

from .split_phases import MEETINGS, split_layer1_phase, split_output_phase, split_update_phase
from .split_step import copy_shard, split_chunk


@triton.jit
def split_forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    log_eta_ptr,
    log_retain_ptr,
    state_ptr,
    y_ptr,
    saved_ptr,
    resets_ptr,
    init_ptr,
    slots_ptr,
    counters_ptr,
    ok_ptr,
    scratch_ptr,
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
    SPLIT: tl.constexpr,
    SLOT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
    PHASED: tl.constexpr,
    FSCRATCH: tl.constexpr,
):
    """SPLIT programs per (batch, head) (grid B * H * SPLIT; NT a multiple of SPLIT) walk
    the chunks in order; forward.scan_forward_kernel's arguments and outputs (one walk, no
    phases), plus the exchange's slots ([B*H, MEETINGS, 2, SPLIT, SLOT] fp32, SLOT >= BC * BV),
    counters ([B*H, n_chunks, MEETINGS] int32, zeroed) and ok_ptr ([B*H*SPLIT] int32:
    1 where every meeting of that program was complete). With PHASED (depth 2, where the
    one walk spills: config.phased_forward), a chunk runs as three non-inlined phases that
    hand on through scratch_ptr ([B*H*SPLIT, FSCRATCH] fp32), as the one-program forward's
    phases do."""
    NTS: tl.constexpr = NT // SPLIT
    pid = tl.program_id(0)
    bh, s = pid // SPLIT, pid % SPLIT
    st = state_ptr + bh.to(tl.int64) * NSTATE
    n_chunks = tl.cdiv(T, CHUNK)
    inputs = (q_ptr, k_ptr, v_ptr, theta_ptr, log_eta_ptr, log_retain_ptr)
    xch = (slots_ptr, counters_ptr, n_chunks)
    ok = tl.full([], 1, tl.int32)
    for ci in range(n_chunks):
        if RESETS:
            if tl.load(resets_ptr + (bh // H).to(tl.int64) * n_chunks + ci) != 0:
                copy_shard(init_ptr + bh.to(tl.int64) * (NSTATE // 2), st, s, False, DK, DT, DV, BK, BT, BV, NTS, DEPTH)
            tl.debug_barrier()  # the chunk reads what other threads of this program wrote
        if SAVE:
            if ci % CKPT == 0:
                slot = saved_ptr + (bh.to(tl.int64) * tl.cdiv(n_chunks, CKPT) + ci // CKPT) * NSTATE
                copy_shard(st, slot, s, True, DK, DT, DV, BK, BT, BV, NTS, DEPTH)
        pos = (ci, T, max_norm, H)
        if PHASED and DEPTH == 2:
            fs = scratch_ptr + pid.to(tl.int64) * FSCRATCH
            ok = ok & split_layer1_phase(
                st, inputs, fs, xch, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, ACT, CLIP, OP, SPLIT, SLOT, TIMEOUT_NS
            )
            ok = ok & split_output_phase(
                st, inputs, y_ptr, fs, xch, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, ACT, CLIP, OP,
                SPLIT, SLOT, TIMEOUT_NS,
            )  # fmt: skip
            split_update_phase(st, inputs, fs, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, ACT, OP, SPLIT)
        else:
            ok = ok & split_chunk(
                st, inputs, y_ptr, xch, pos, DK, DT, DV, BK, BT, BV, CHUNK, BC, NTS, DEPTH, ACT, CLIP, OP,
                SPLIT, SLOT, TIMEOUT_NS, MEETINGS, True,
            )  # fmt: skip
    tl.store(ok_ptr + pid, ok)
