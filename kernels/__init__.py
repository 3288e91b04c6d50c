"""Chunked-scan kernels for the Titans neural memory.

naive            per-token reference (the definition)
chunk_autograd   the chunked closed form through plain autograd (reference for chunk)
chunk            exact chunk-parallel PyTorch path with a hand-written backward (runs everywhere)
triton_op        Triton kernels (triton_scan.py) as torch custom ops (CUDA, or TRITON_INTERPRET=1)
"""

from .activations import ACTIVATIONS, get_activation
from .chunk import chunk_neural_memory
from .chunk_autograd import chunk_neural_memory_autograd
from .dispatch import neural_memory_scan, resolve_backend
from .naive import memory_mlp, naive_neural_memory
from .state import MemoryState
from .triton_op import triton_neural_memory

__all__ = [
    "ACTIVATIONS",
    "MemoryState",
    "chunk_neural_memory",
    "chunk_neural_memory_autograd",
    "get_activation",
    "memory_mlp",
    "naive_neural_memory",
    "neural_memory_scan",
    "resolve_backend",
    "triton_neural_memory",
]
