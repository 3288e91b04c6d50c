"""Host side of the split-state scan, forward (split_forward.py) and backward
(split_backward.py): SPLIT programs per (batch, head), the same inputs and outputs as the
one-program `titans::memory_scan` op and its backward, and the same checkpoints, so either
backward can differentiate either forward.

`auto` runs it off sm_90 where it passed its self-check and the first-use race timed it
faster than the one-program kernels (kernels/design_race.py; docs/kernels.md, "Splitting
the state across programs")."""

import torch
import triton.language as tl
from torch import Tensor

from . import buffers
from .buffers import forward_outputs, launch_meta
from .config import backward_args, forward_args
from .split_forward import MEETINGS

TIMEOUT_S = 10.0  # a meeting that waits longer than this fails the launch


SPLIT_PROGRAMS = (4, 2)  # programs per (batch, head) the backend tries, in order


def split_programs(meta: dict, groups: int = 1, device=None) -> tuple[int, str | None]:
    """(programs per (batch, head), None) for the backend's split of this configuration
    with `groups` (batch, head) pairs on `device`: the largest of SPLIT_PROGRAMS that
    divides the hidden tiles and lets every program be resident; or (0, why none does)."""
    problem = None
    for split in SPLIT_PROGRAMS:
        problem = split_problem(meta, split) or (
            residency_problem(groups * split, device) if device is not None else None
        )
        if problem is None:
            return split, None
    return 0, problem


def residency_problem(programs: int, device) -> str | None:
    """Why `programs` programs cannot all be resident on `device` at once (None when they
    can). A split program holds 255 registers per thread (compile report), so one per SM
    is assumed until a GPU measures the occupancy; the cooperative launch would fail
    otherwise."""
    if device.type != "cuda":
        return None
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if programs > sms:
        return f"{programs} split programs (batch x heads x split) exceed the {sms} SMs that can hold them at once"
    return None


def split_problem(meta: dict, split: int) -> str | None:
    """Why the split scan cannot run this configuration with `split` programs (None
    when it can)."""
    if not hasattr(tl, "atomic_poll"):
        return "this triton has no tl.atomic_poll (the split scan needs triton >= 3.9)"
    if split < 2:
        return f"split must be an integer >= 2, got {split}"
    if meta["NT"] % split:
        return f"the {meta['NT']} hidden tiles of {meta['BT']} units do not divide among {split} programs"
    return None


def split_memory_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor,
    log_retain: Tensor,
    state: Tensor,
    resets: Tensor,
    init: Tensor,
    hidden: int,
    chunk_size: int,
    activation: str,
    max_grad_norm: float,
    save_states: bool,
    checkpoint_every: int,
    split: int,
    timeout_s: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`titans::memory_scan` (ops.py: the arguments and the four outputs) with `split`
    programs per (batch, head). Raises if the configuration cannot be split, or if a
    program's partners did not all arrive at a meeting (its values would be wrong)."""
    from .split_forward import split_forward_kernel

    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    B, T, H = q.shape[:3]
    meta = forward_args(launch_meta(q, v, hidden, chunk_size, activation, max_grad_norm, checkpoint_every, resets))
    problem = split_problem(meta, split)
    if problem:
        raise ValueError(f"split forward: {problem}")
    args = {name: meta[name] for name in _KERNEL_META}
    y, state_out, saved, theta, clip_factor = forward_outputs(
        q, v, theta, state, chunk_size, max_grad_norm, save_states, checkpoint_every
    )
    n_chunks = -(-T // chunk_size)
    slot = meta["BC"] * meta["BV"]
    slots = buffers.empty((B * H, MEETINGS, 2, split, slot), torch.float32, q.device)
    counters = torch.zeros(B * H, n_chunks, MEETINGS, dtype=torch.int32, device=q.device)
    ok = torch.zeros(B * H * split, dtype=torch.int32, device=q.device)
    scratch = buffers.empty((B * H * split, meta["FSCRATCH"]), torch.float32, q.device)
    split_forward_kernel[(B * H * split,)](
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        state_out,
        y,
        saved,
        resets,
        init,
        slots,
        counters,
        ok,
        scratch,
        T,
        H,
        max_grad_norm,
        SAVE=save_states,
        SPLIT=split,
        SLOT=slot,
        TIMEOUT_NS=int(timeout_s * 1e9),
        launch_cooperative_grid=True,  # all programs resident, or the launch fails
        **args,
    )
    _raise_if_stuck("split forward", ok, timeout_s)
    return y, state_out, saved, clip_factor.clone()


def _raise_if_stuck(what: str, ok: Tensor, timeout_s: float) -> None:
    stuck = int((ok == 0).sum())
    if stuck:
        raise RuntimeError(
            f"{what}: {stuck} of {ok.numel()} programs waited more than {timeout_s} s for a partner "
            "at a meeting; its outputs are wrong and were not returned"
        )


def backward_slots(meta: dict) -> tuple[int, int]:
    """fp32 per program per meeting of the split backward's two exchanges
    (split_backward.py): MEETINGS, the pre-error [BC, BV] or the clip's norms; SUMS, its
    largest share (the chunk scratch from dd1 to the vectors, and the vectors' summed rows)."""
    BC, BK, BV = meta["BC"], meta["BK"], meta["BV"]
    registers = max(BC * BV, 2 * BC)
    shared = BC * BV + 2 * BC * BK + 2 * BC * BC + 5 * BC + 3 + 2 * BC
    return registers, max(shared, BC * max(BK, BV))


def split_memory_scan_backward(
    dy: Tensor,
    dstate: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor,
    log_retain: Tensor,
    saved: Tensor,
    resets: Tensor,
    init: Tensor,
    hidden: int,
    chunk_size: int,
    activation: str,
    max_grad_norm: float,
    checkpoint_every: int,
    split: int,
    timeout_s: float | None = None,
) -> tuple[Tensor, ...]:
    """`titans::memory_scan_backward` (ops.py: the arguments and the eight gradients) with
    `split` programs per (batch, head). Raises if the configuration cannot be split, or if
    a program's partners did not all arrive at a meeting (its gradients would be wrong)."""
    from .split_backward import MEETINGS as BACKWARD_MEETINGS
    from .split_backward import SUMS, split_backward_kernel

    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    B, T, H = q.shape[:3]
    args = backward_args(launch_meta(q, v, hidden, chunk_size, activation, max_grad_norm, checkpoint_every, resets))
    problem = split_problem(args, split)
    if problem:
        raise ValueError(f"split backward: {problem}")
    meetings, sums = int(BACKWARD_MEETINGS), int(SUMS)
    grads, replay, scratch = buffers.backward_outputs(
        q, k, v, theta, dstate, init, checkpoint_every, B * H * split, args["SCRATCH"]
    )
    dq, dk, dv, *dgates, dstate0, dinit = grads
    n_chunks = -(-T // chunk_size)
    slot, sum_slot = backward_slots(args)
    slots = buffers.empty((B * H, meetings, 2, split, slot), torch.float32, q.device)
    counters = torch.zeros(B * H, n_chunks, meetings, dtype=torch.int32, device=q.device)
    sum_slots = buffers.empty((B * H, sums, 2, split, sum_slot), torch.float32, q.device)
    sum_counters = torch.zeros(B * H, n_chunks, sums, dtype=torch.int32, device=q.device)
    ok = torch.zeros(B * H * split, dtype=torch.int32, device=q.device)
    split_backward_kernel[(B * H * split,)](
        dy,
        dstate0,
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        saved,
        replay,
        scratch,
        dq,
        dk,
        dv,
        *dgates,
        resets,
        init,
        dinit,
        slots,
        counters,
        sum_slots,
        sum_counters,
        ok,
        T,
        H,
        max_grad_norm,
        SPLIT=split,
        SLOT=slot,
        SUM_SLOT=sum_slot,
        TIMEOUT_NS=int(timeout_s * 1e9),
        launch_cooperative_grid=True,  # all programs resident, or the launch fails
        **args,
    )
    _raise_if_stuck("split backward", ok, timeout_s)
    return grads


# The one-program forward's compile-time arguments, which the split forward takes too.
_KERNEL_META = (
    "DK", "DT", "DV", "BK", "BT", "BV", "NT", "CHUNK", "BC", "DEPTH", "ACT", "NSTATE", "CKPT", "CLIP", "OP",
    "RESETS", "PHASED", "FSCRATCH", "num_warps", "maxnreg",
)  # fmt: skip
