"""Chunked-scan kernels for the Titans neural memory.

naive   per-token reference (the definition)
chunk   exact chunk-parallel PyTorch path (runs everywhere)
"""

from .activations import ACTIVATIONS, get_activation
from .chunk import chunk_neural_memory
from .dispatch import neural_memory_scan, resolve_backend
from .naive import memory_mlp, naive_neural_memory
from .state import MemoryState

__all__ = [
    "ACTIVATIONS",
    "MemoryState",
    "chunk_neural_memory",
    "get_activation",
    "memory_mlp",
    "naive_neural_memory",
    "neural_memory_scan",
    "resolve_backend",
]
