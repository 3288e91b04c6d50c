from .config import ACTIVATIONS, BACKENDS, GATE_MODES, TRITON_DEPTHS, MemoryConfig
from .lanes import DocumentLanes, longest_first
from .neural_memory import NeuralMemory, NeuralMemoryState

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "DocumentLanes",
    "GATE_MODES",
    "MemoryConfig",
    "NeuralMemory",
    "NeuralMemoryState",
    "TRITON_DEPTHS",
    "longest_first",
]
