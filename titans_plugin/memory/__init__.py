from .config import ACTIVATIONS, BACKENDS, GATE_MODES, TRITON_DEPTHS, MemoryConfig
from .lanes import DocumentLanes, place_documents
from .neural_memory import NeuralMemory, NeuralMemoryState, detached_copy

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "DocumentLanes",
    "GATE_MODES",
    "MemoryConfig",
    "NeuralMemory",
    "NeuralMemoryState",
    "TRITON_DEPTHS",
    "detached_copy",
    "place_documents",
]
