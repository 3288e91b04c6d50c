from .config import ACTIVATIONS, BACKENDS, GATE_MODES, TRITON_DEPTHS, MemoryConfig
from .neural_memory import NeuralMemory, NeuralMemoryState

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "GATE_MODES",
    "MemoryConfig",
    "NeuralMemory",
    "NeuralMemoryState",
    "TRITON_DEPTHS",
]
