"""One entry point for the memory scan: picks the implementation by backend name."""

import torch

from .chunk import chunk_neural_memory
from .naive import naive_neural_memory
from .state import MemoryState


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' is Triton on CUDA when it imports, the exact chunked PyTorch path elsewhere."""
    if backend != "auto":
        return backend
    if device.type == "cuda":
        try:
            from . import triton_ops  # noqa: F401
        except ImportError:
            return "chunk"
        return "triton"
    return "chunk"


def neural_memory_scan(
    q, k, v, theta, eta, alpha, state: MemoryState, *, chunk_size: int, activation: str,
    backend: str = "auto",
) -> tuple[torch.Tensor, MemoryState]:
    backend = resolve_backend(backend, q.device)
    if backend == "chunk":
        return chunk_neural_memory(q, k, v, theta, eta, alpha, state, chunk_size, activation)
    if backend == "naive":
        return naive_neural_memory(q, k, v, theta, eta, alpha, state, activation, chunk_size)
    if backend == "triton":
        from .triton_ops import triton_neural_memory

        return triton_neural_memory(q, k, v, theta, eta, alpha, state, chunk_size, activation)
    raise ValueError(f"memory backend must be one of auto, chunk, naive, triton; got {backend!r}")
