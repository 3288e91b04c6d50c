"""One entry point for the memory scan: picks the implementation by backend name."""

import warnings

import torch

from .chunk import chunk_neural_memory
from .naive import naive_neural_memory
from .state import MemoryState
from .triton_op import launch_problem, triton_neural_memory, unsupported_reason

BACKENDS = ("auto", "chunk", "naive", "triton")
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
) -> str:
    """'auto' is the Triton kernels on CUDA wherever they support the configuration
    (depth 1 or 2, fp32/bf16/fp16 inputs) and compile within the device's shared memory,
    the exact chunked PyTorch path everywhere else; on CUDA a fallback is warned about
    once, with its reason. Forcing 'triton' where it cannot run is an error, never a
    silent fallback."""
    if backend not in BACKENDS:
        raise ValueError(f"memory backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if q.device.type != "cuda":
        return "chunk"
    reason = unsupported_reason(len(state.weights), activation, q.dtype, q.device) or launch_problem(
        q, state, chunk_size, activation, max_grad_norm
    )
    if reason is None:
        return "triton"
    _warn_once(f"memory backend 'auto' uses 'chunk' on this CUDA device: {reason}")
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
) -> tuple[torch.Tensor, MemoryState]:
    backend = resolve_backend(backend, q, state, activation, chunk_size, max_grad_norm)
    args = (q, k, v, theta, eta, alpha, state)
    if backend == "chunk":
        return chunk_neural_memory(*args, chunk_size, activation, max_grad_norm)
    if backend == "triton":
        return triton_neural_memory(*args, chunk_size, activation, max_grad_norm)
    return naive_neural_memory(*args, activation, chunk_size, max_grad_norm)
