"""LMM: the neural memory alone as the sequence mixer (paper section 4.4)."""

from titans_plugin.memory import NeuralMemory, NeuralMemoryState

from .base import TitansBlockBase


class LMMBlock(TitansBlockBase):
    letter = "M"
    variant = "lmm"
    description = "LMM (memory only)"
    has_memory = True

    def __init__(self, layer_id: int, model_args, titans):
        super().__init__(layer_id, model_args)
        self.memory = NeuralMemory(self._memory_config(model_args, titans))

    def mix(self, x, freqs_cis, cache: NeuralMemoryState | None):
        return self.memory(x, cache)
