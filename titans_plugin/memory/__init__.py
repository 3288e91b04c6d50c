from .config import MemoryConfig
from .neural_memory import NeuralMemory, NeuralMemoryState

__all__ = ["MemoryConfig", "NeuralMemory", "NeuralMemoryState"]
