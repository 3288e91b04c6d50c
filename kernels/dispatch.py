"""One entry point for the memory scan: picks the implementation by backend name."""

import torch

from .chunk import chunk_neural_memory
from .naive import naive_neural_memory
from .state import MemoryState


BACKENDS = ("auto", "chunk", "naive")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' is the exact chunked PyTorch path on every device. (The Triton kernels of
    the kernel issue will make 'auto' pick them on CUDA; until they exist, no backend
    name promises them.)"""
    return "chunk" if backend == "auto" else backend


def neural_memory_scan(
    q, k, v, theta, eta, alpha, state: MemoryState, *, chunk_size: int, activation: str,
    max_grad_norm: float | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, MemoryState]:
    backend = resolve_backend(backend, q.device)
    args = (q, k, v, theta, eta, alpha, state)
    if backend == "chunk":
        return chunk_neural_memory(*args, chunk_size, activation, max_grad_norm)
    if backend == "naive":
        return naive_neural_memory(*args, activation, chunk_size, max_grad_norm)
    raise ValueError(f"memory backend must be one of {list(BACKENDS)}, got {backend!r}")
