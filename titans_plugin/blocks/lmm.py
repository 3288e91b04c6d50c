"""LMM: the neural memory alone as the sequence mixer (paper section 4.4)."""

from titans_plugin.memory import NeuralMemory, NeuralMemoryState

from .base import TitansBlockBase
from .config import LMMConfig
from .prefixed_memory import make_persistent, run_prefixed_memory


class LMMBlock(TitansBlockBase):
    block_type = "M"

    def __init__(self, layer_id: int, model_args, config: LMMConfig):
        super().__init__(layer_id, model_args)
        config = self._adopt_config(config, model_args)
        self.memory = NeuralMemory(config.memory)
        self.persistent = make_persistent(config.n_persistent, model_args.dim)

    def mix(self, x, freqs_cis, cache: NeuralMemoryState | None):
        return run_prefixed_memory(self.memory, self.persistent, x, cache)
