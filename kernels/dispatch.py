"""One entry point for the memory scan: picks the implementation by backend name."""

import warnings

import torch

from . import self_check
from .chunk import chunk_neural_memory
from .naive import naive_neural_memory
from .state import MemoryState, check_resets
from .triton_op import launch_problem, triton_neural_memory, unsupported_reason

BACKENDS = ("auto", "chunk", "naive", "triton")
AUTO_TRITON_DEVICES = ("cuda",)  # where "auto" uses the Triton kernels (tests add "cpu": the interpreter)
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def resolve_backend(
    backend: str,
    q: torch.Tensor,
    state: MemoryState,
    activation: str,
    chunk_size: int = 64,
    max_grad_norm: float | None = None,
    resets: bool = False,
) -> str:
    """'auto' is the Triton kernels on CUDA wherever they support the configuration
    (depth 1 or 2, fp32/bf16/fp16 inputs), compile within the device's shared memory and
    pass their first-use self-check on the device (kernels/self_check.py); the exact
    chunked PyTorch path everywhere else. On CUDA a fallback is warned about once, with its
    reason. Forcing 'triton' where it cannot run, or where it failed its self-check, is an
    error, never a silent fallback."""
    if backend not in BACKENDS:
        raise ValueError(f"memory backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "triton":
        failed = self_check.failure(q, state, chunk_size, activation, max_grad_norm, resets)
        if failed:
            raise RuntimeError(f"titans.kernel = 'triton': {failed}; use 'auto' (falls back to 'chunk') or 'chunk'")
        return backend
    if backend != "auto":
        return backend
    if q.device.type not in AUTO_TRITON_DEVICES:
        return "chunk"
    reason = unsupported_reason(len(state.weights), activation, q.dtype, q.device) or launch_problem(
        q, state, chunk_size, activation, max_grad_norm, resets
    )
    if reason is None:
        reason = self_check.failure(q, state, chunk_size, activation, max_grad_norm, resets)
    if reason is None:
        return "triton"
    _warn_once(f"memory backend 'auto' uses 'chunk' on this {q.device.type.upper()} device: {reason}")
    return "chunk"


def neural_memory_scan(
    q,
    k,
    v,
    theta,
    eta,
    alpha,
    state: MemoryState,
    *,
    chunk_size: int,
    activation: str,
    max_grad_norm: float | None = None,
    backend: str = "auto",
    resets: torch.Tensor | None = None,
    initial: MemoryState | None = None,
) -> tuple[torch.Tensor, MemoryState]:
    """q, k: [B, T, H, D_k]; v: [B, T, H, D_v]; theta, eta, alpha: [B, T, H].

    resets [B, ceil(T / chunk_size)] (bool): row b restarts from `initial` (its weights,
    zero momentum) before chunk i where resets[b, i], as if a new sequence began there:
    packed documents, each laid out by the memory to start at a chunk boundary.
    The chunked path restarts rows inside its chunk loop and the Triton kernels inside
    theirs (one launch); the per-token reference is cut at every chunk where some row
    restarts and runs on each piece.
    """
    backend = resolve_backend(backend, q, state, activation, chunk_size, max_grad_norm, resets is not None)
    if resets is not None and backend != "naive":  # restarts inside its own chunk loop
        check_resets(q, resets, initial, state, chunk_size)
        args = (q, k, v, theta, eta, alpha, state, chunk_size, activation, max_grad_norm)
        if backend == "chunk":
            return chunk_neural_memory(*args, resets, initial)
        return triton_neural_memory(*args, resets=resets, initial=initial)
    if resets is not None:
        return _scan_with_resets(
            (q, k, v, theta, eta, alpha), state, resets, initial, chunk_size, activation, max_grad_norm, backend
        )
    return _scan(backend, (q, k, v, theta, eta, alpha), state, chunk_size, activation, max_grad_norm)


def _scan_with_resets(inputs, state, resets, initial, chunk_size, activation, max_grad_norm, backend):
    """The scan cut at every chunk where some row restarts. The pieces come from one
    split, whose backward is one concatenation (slicing every piece would zero-fill the
    whole input's gradient once per piece)."""
    n_chunks = check_resets(inputs[0], resets, initial, state, chunk_size)
    T = inputs[0].shape[1]
    cuts = resets.any(0).nonzero().flatten().tolist()  # one host sync per call
    bounds = sorted({0, *cuts, n_chunks})
    sizes = [min(last * chunk_size, T) - first * chunk_size for first, last in zip(bounds[:-1], bounds[1:])]
    outs = []
    for first, piece in zip(bounds, zip(*(x.split(sizes, dim=1) for x in inputs))):
        if first in cuts:
            state = state.reset_rows(resets[:, first], initial)
        y, state = _scan(backend, piece, state, chunk_size, activation, max_grad_norm)
        outs.append(y)
    return torch.cat(outs, dim=1), state


def _scan(backend, inputs, state, chunk_size, activation, max_grad_norm):
    args = (*inputs, state)
    if backend == "chunk":
        return chunk_neural_memory(*args, chunk_size, activation, max_grad_norm)
    if backend == "triton":
        return triton_neural_memory(*args, chunk_size, activation, max_grad_norm)
    return naive_neural_memory(*args, activation, chunk_size, max_grad_norm)
