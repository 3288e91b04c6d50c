from .config import MemoryConfig
from .neural_memory import NeuralMemory, NeuralMemoryState, local_tensor

__all__ = ["MemoryConfig", "NeuralMemory", "NeuralMemoryState", "local_tensor"]
