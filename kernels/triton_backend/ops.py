"""The Triton memory scan as torch custom ops: `titans::memory_scan` and its backward.

Custom ops (not raw kernel launches) because torch.compile(fullgraph=True) can trace
through an op with a fake implementation and a registered autograd formula, never
through a Triton launch from Python. Both ops take the memory state flattened to one fp32
buffer per (batch, head), [B, H, 2 * sum_l D_in * D_out] (W1, W2, S1, S2), so the
schema is the same for every depth.

The kernel module is imported on first launch, not at import time: triton reads
TRITON_INTERPRET when kernels are defined, and a machine without a working triton can
still use every other backend.
"""

import torch
from torch import Tensor

from ..activations import get_activation
from ..chunk_math import log_gates
from ..state import MemoryState, check_resets
from . import buffers, capability
from .buffers import forward_outputs, launch_meta, saved_shape
from .config import backward_args, checkpoint_interval, forward_args


@torch.library.custom_op("titans::memory_scan", mutates_args=())
def memory_scan(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k [B, T, H, DK], v [B, T, H, DV] (fp32/bf16/fp16, contiguous); theta and
    log-gates fp32 [B, T, H]; state fp32 [B, H, N]. resets int8 [B, n_chunks] with init
    fp32 [B, H, N / 2] (packed documents: a row restarts from its init weights, zero
    momentum, before every flagged chunk), or both empty. Returns y [B, T, H, DV] in q's
    dtype, the end state, the checkpoints [B, H, ceil(n_chunks / checkpoint_every), N]:
    the state at the start of every checkpoint_every-th chunk (empty unless save_states),
    and each token's clip factor min(1, max_grad_norm / |inner gradient|) fp32 [B, T, H]
    (empty when max_grad_norm is 0). split: programs per (batch, head); 1 runs the
    one-program kernel (forward.py), more the split-state kernel (split.py), whose
    backward is split the same way."""
    from .forward import scan_forward_kernel

    if split > 1:
        from .split import split_memory_scan

        return split_memory_scan(
            q, k, v, theta, log_eta, log_retain, state, resets, init, hidden, chunk_size, activation,
            max_grad_norm, save_states, checkpoint_every, split,
        )  # fmt: skip
    B, T, H = q.shape[:3]
    y, state_out, saved, theta, clip_factor = forward_outputs(
        q, v, theta, state, chunk_size, max_grad_norm, save_states, checkpoint_every
    )
    args = forward_args(launch_meta(q, v, hidden, chunk_size, activation, max_grad_norm, checkpoint_every, resets))
    scratch = buffers.empty((B * H, args["FSCRATCH"]), torch.float32, q.device)
    scan_forward_kernel[(B * H,)](
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        state_out,
        y,
        saved,
        scratch,
        resets,
        init,
        T,
        H,
        max_grad_norm,
        SAVE=save_states,
        **args,
    )
    return y, state_out, saved, clip_factor.clone()  # its own storage, as the fake says


def memory_scan_fake(
    q,
    k,
    v,
    theta,
    log_eta,
    log_retain,
    state,
    resets,
    init,
    hidden,
    chunk_size,
    activation,
    max_grad_norm,
    save_states,
    checkpoint_every,
    split,
):
    B, T, H = q.shape[:3]
    saved = saved_shape(B, H, T, chunk_size, checkpoint_every, state.shape[-1], save_states)
    clip_shape = (B, T, H) if max_grad_norm > 0 else (0,)
    return (
        q.new_empty(B, T, H, v.shape[3]),
        state.new_empty(state.shape),
        state.new_empty(saved),
        state.new_empty(clip_shape),
    )


memory_scan.register_fake(memory_scan_fake)


@torch.library.custom_op("titans::memory_scan_backward", mutates_args=())
def memory_scan_backward(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (q, k, v, theta, log_eta, log_retain, state, init) from the
    gradients of y and of the end state, recomputing the chunks of each checkpoint group
    (init's gradient is empty without resets). split: programs per (batch, head), as for
    the forward (1: backward.py; more: split_backward.py)."""
    if split > 1:
        from .split import split_memory_scan_backward

        return split_memory_scan_backward(  # type: ignore[return-value]  # eight gradients
            dy, dstate, q, k, v, theta, log_eta, log_retain, saved, resets, init, hidden, chunk_size, activation,
            max_grad_norm, checkpoint_every, split,
        )  # fmt: skip
    from .backward import scan_backward_kernel

    B, T, H = q.shape[:3]
    args = backward_args(launch_meta(q, v, hidden, chunk_size, activation, max_grad_norm, checkpoint_every, resets))
    grads, replay, scratch = buffers.backward_outputs(
        q, k, v, theta, dstate, init, checkpoint_every, B * H, args["SCRATCH"]
    )
    dq, dk, dv, *dgates, dstate0, dinit = grads
    scan_backward_kernel[(B * H,)](
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
        T,
        H,
        max_grad_norm,
        **args,
    )
    return grads  # type: ignore[return-value]  # eight tensors


@memory_scan_backward.register_fake
def _memory_scan_backward_fake(
    dy,
    dstate,
    q,
    k,
    v,
    theta,
    log_eta,
    log_retain,
    saved,
    resets,
    init,
    hidden,
    chunk_size,
    activation,
    max_grad_norm,
    checkpoint_every,
    split,
):
    return (
        q.new_empty(q.shape),
        k.new_empty(k.shape),
        v.new_empty(v.shape),
        theta.new_empty(theta.shape),
        theta.new_empty(theta.shape),
        theta.new_empty(theta.shape),
        dstate.new_empty(dstate.shape),
        init.new_empty(init.shape),
    )


def setup_context(ctx, inputs, output):
    """What the backward needs from a forward op with memory_scan's schema."""
    q, k, v, theta, log_eta, log_retain, state, resets, init = inputs[:9]
    hidden, chunk_size, activation, max_norm, save, every, split = inputs[9:]
    ctx.save_for_backward(q, k, v, theta, log_eta, log_retain, output[2], resets, init)
    ctx.meta = (hidden, chunk_size, activation, max_norm, save, every, split)
    ctx.state_shape = state.shape


def scan_backward(ctx, dy, dstate, _dsaved, _dclip_factor):
    """Autograd of a forward op with memory_scan's schema: memory_scan_backward over its
    checkpoints (ctx.meta's split picks the backward kernel)."""
    hidden, chunk_size, activation, max_norm, saved_states, every, split = ctx.meta
    if not saved_states:
        raise RuntimeError("titans::memory_scan ran with save_states=False; it cannot be differentiated")
    q, k, v, theta, log_eta, log_retain, saved, resets, init = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    if dstate is None:
        dstate = torch.zeros(ctx.state_shape, dtype=torch.float32, device=q.device)
    grads = memory_scan_backward(
        dy.contiguous(),
        dstate.float().contiguous(),
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        saved,
        resets,
        init,
        hidden,
        chunk_size,
        activation,
        max_norm,
        every,
        split,
    )
    *grads, dinit = grads
    return (*grads, None, dinit, None, None, None, None, None, None, None)


memory_scan.register_autograd(scan_backward, setup_context=setup_context)


def pack_state(state: MemoryState) -> Tensor:
    """(W1, [W2]), (S1, [S2]) each [B, H, D_in, D_out] -> one fp32 [B, H, N] buffer."""
    return pack_weights((*state.weights, *state.momentum))


def pack_weights(weights: tuple[Tensor, ...]) -> Tensor:
    """(W1, [W2]) each [B, H, D_in, D_out] -> one fp32 [B, H, N / 2] buffer: the weights
    half of pack_state's layout."""
    return torch.cat([w.float().reshape(*w.shape[:2], -1) for w in weights], dim=-1).contiguous()


def unpack_state(flat: Tensor, like: MemoryState) -> MemoryState:
    shapes = [w.shape for w in like.weights]
    sizes = [s[-2] * s[-1] for s in shapes] * 2
    parts = torch.split(flat, sizes, dim=-1)
    tensors = [p.reshape(*flat.shape[:2], *s[-2:]) for p, s in zip(parts, shapes * 2, strict=True)]
    L = len(shapes)
    return MemoryState(tuple(tensors[:L]), tuple(tensors[L:]))


def triton_neural_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    state: MemoryState,
    *,
    chunk_size: int = 64,
    activation: str = "silu",
    max_grad_norm: float | None = None,
    resets: Tensor | None = None,
    initial: MemoryState | None = None,
    checkpoint_every: int | None = None,
    stats: dict | None = None,
) -> tuple[Tensor, MemoryState]:
    """Same contract as chunk_neural_memory (q, k [B, T, H, D_k], v [B, T, H, D_v], gates
    [B, T, H], resets [B, n_chunks] with initial), computed by the Triton kernels in one
    launch, restarts included. y comes back in q's dtype (the chunked PyTorch path returns
    fp32); the state is fp32. Checks first that the kernels can run (`supports`)."""
    problem = supports(
        q, state, chunk_size=chunk_size, activation=activation, max_grad_norm=max_grad_norm, resets=resets is not None
    )
    if problem:
        raise ValueError(f"titans.backend = 'triton' cannot run here: {problem}; use 'auto' or 'chunk'")
    return launch(
        q,
        k,
        v,
        theta,
        eta,
        alpha,
        state,
        chunk_size=chunk_size,
        activation=activation,
        max_grad_norm=max_grad_norm,
        resets=resets,
        initial=initial,
        checkpoint_every=checkpoint_every,
        stats=stats,
    )


def supports(q: Tensor, state: MemoryState, *, chunk_size, activation, max_grad_norm=None, resets=False) -> str | None:
    """Why the kernels cannot run this configuration here (None when they can): the
    configuration itself, then the device's per-block limits."""
    get_activation(activation)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    return capability.unsupported_reason(len(state.weights), activation, q.dtype, q.device) or (
        capability.launch_problem(q, state, chunk_size, activation, max_grad_norm, resets)
    )


def split_supports(
    q: Tensor, state: MemoryState, *, chunk_size, activation, max_grad_norm=None, resets=False
) -> str | None:
    """`supports` for the split-state scan (split.py): the one-program kernels' checks
    (the same phases and limits), then the split's own: triton's tl.atomic_poll, hidden tiles
    that divide among the programs, and every program resident at once."""
    config = dict(chunk_size=chunk_size, activation=activation, max_grad_norm=max_grad_norm, resets=resets)
    problem = supports(q, state, **config)
    if problem:
        return problem
    from .split import split_programs

    meta = capability.state_meta(q, state, chunk_size, activation, max_grad_norm, resets)
    return split_programs(meta, q.shape[0] * q.shape[2], q.device)[1]


def split_count(
    q: Tensor, state, *, chunk_size, activation, max_grad_norm=None, resets=False, pairs: int | None = None
) -> int:
    """Programs per (batch, head) the split-state scan of q runs (0: none fits), or with
    `pairs` (batch, head) pairs instead of q's: it depends on how many must be resident."""
    from .split import split_programs

    meta = capability.state_meta(q, state, chunk_size, activation, max_grad_norm, resets)
    return split_programs(meta, pairs or q.shape[0] * q.shape[2], q.device)[0]


def launch_split(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor, state, **config):
    """The split-state scan, once `split_supports` has found nothing
    against it (`launch`'s arguments)."""
    chunk_size, activation, max_grad_norm = config["chunk_size"], config["activation"], config.get("max_grad_norm")
    resets = config.get("resets") is not None
    split = split_count(
        q, state, chunk_size=chunk_size, activation=activation, max_grad_norm=max_grad_norm, resets=resets
    )
    return launch(q, k, v, theta, eta, alpha, state, **config, split=split)


def launch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    state: MemoryState,
    *,
    chunk_size: int,
    activation: str,
    max_grad_norm: float | None = None,
    resets: Tensor | None = None,
    initial: MemoryState | None = None,
    checkpoint_every: int | None = None,
    stats: dict | None = None,
    split: int = 1,
    op=None,
) -> tuple[Tensor, MemoryState]:
    """The Triton scan, once `supports` has found nothing against it; with split > 1 the
    forward runs `split` programs per (batch, head) (split.py; `split_supports` first).
    op: the forward op, memory_scan (looked up when called) or one with its schema and
    autograd (the Gluon cluster scan's, gluon_backend/cluster.py)."""
    B, T, H, _ = q.shape
    if T == 0:
        if stats is not None and max_grad_norm:
            stats["clip_factor"] = q.new_ones(B, 0, H, dtype=torch.float32)
        return q.new_zeros(B, 0, H, state.weights[-1].shape[-1]), state
    log_eta, log_retain = log_gates(eta, alpha, torch.float32)
    hidden = state.weights[0].shape[-1] if len(state.weights) == 2 else 0
    flat = pack_state(state)
    if resets is None:
        flags, init = q.new_zeros(0, dtype=torch.int8), flat.new_zeros(0)
    else:
        check_resets(q, resets, initial, state, chunk_size)  # the kernels read row b of both
        assert initial is not None
        flags, init = resets.to(torch.int8), pack_weights(initial.weights)
    inputs = (q, k.to(q.dtype), v.to(q.dtype), theta.float(), log_eta, log_retain, flat, flags, init)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    if checkpoint_every is None:
        checkpoint_every = checkpoint_interval(flat.shape[-1], chunk_size)
    elif checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every}")
    y, flat_out, _, clip_factor = (op or memory_scan)(
        *(t.contiguous() for t in inputs),
        hidden,
        chunk_size,
        activation,
        float(max_grad_norm or 0.0),
        save,
        checkpoint_every,
        split,
    )
    if stats is not None and max_grad_norm:
        stats["clip_factor"] = clip_factor.detach()
    return y, unpack_state(flat_out, state)
