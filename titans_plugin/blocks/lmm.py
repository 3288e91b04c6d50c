"""LMM: the neural memory alone as the sequence mixer (paper section 4.4)."""

from titans_plugin.memory import NeuralMemory, NeuralMemoryState

from .base import TitansBlockBase
from .documents import run_memory_on_documents


class LMMBlock(TitansBlockBase):
    letter = "M"
    variant = "lmm"
    description = "LMM (memory only)"
    has_memory = True

    def __init__(self, layer_id: int, model_args, titans):
        super().__init__(layer_id, model_args)
        self.memory = NeuralMemory(self._memory_config(model_args, titans))

    def mix(self, x, freqs_cis, cache: NeuralMemoryState | None, docs=None):
        if docs is not None:
            return run_memory_on_documents(self.memory, x, docs), None
        return self.memory(x, cache)
