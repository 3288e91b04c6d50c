"""MAL, memory as a layer (paper section 4.3):

    x -> NeuralMemory([persistent || x]) -> y -> SW-Attn(y) -> o
"""

from typing import NamedTuple

from titans_plugin.memory import NeuralMemory, NeuralMemoryState

from .attention import KVCache
from .base import TitansBlockBase
from .config import MALConfig
from .prefixed_memory import make_persistent, run_prefixed_memory


class MALCache(NamedTuple):
    memory: NeuralMemoryState
    attention: KVCache


class MALBlock(TitansBlockBase):
    block_type = "L"

    def __init__(self, layer_id: int, model_args, config: MALConfig):
        super().__init__(layer_id, model_args)
        config = self._adopt_config(config, model_args)
        self.memory = NeuralMemory(config.memory)
        self.persistent = make_persistent(config.n_persistent, model_args.dim)
        self.attention = self._make_attention(model_args, config.window)

    def mix(self, x, freqs_cis, cache: MALCache | None):
        y, mem = run_prefixed_memory(self.memory, self.persistent, x, None if cache is None else cache.memory)
        o, kv = self.attention(y, freqs_cis, None if cache is None else cache.attention)
        return o, MALCache(mem, kv)
