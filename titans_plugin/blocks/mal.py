"""MAL, memory as a layer (paper section 4.3):

x -> NeuralMemory([persistent || x]) -> y -> SW-Attn(y) -> o
"""

from typing import NamedTuple

from titans_plugin.memory import NeuralMemory, NeuralMemoryState

from .attention import KVCache
from .base import TitansBlockBase
from .prefixed_memory import make_persistent, run_prefixed_memory


class MALCache(NamedTuple):
    memory: NeuralMemoryState
    attention: KVCache


class MALBlock(TitansBlockBase):
    letter = "L"
    variant = "mal"
    description = "MAL (memory as layer)"
    config_fields = ("window", "n_persistent")
    has_memory = True

    def __init__(self, layer_id: int, model_args, titans):
        super().__init__(layer_id, model_args)
        self.memory = NeuralMemory(self._memory_config(model_args, titans))
        self.persistent = make_persistent(titans.n_persistent, model_args.dim)  # the memory's prefix
        self.attention = self._make_attention(model_args, titans.window)

    def mix(self, x, freqs_cis, cache: MALCache | None):
        y, mem = run_prefixed_memory(self.memory, self.persistent, x, None if cache is None else cache.memory)
        o, kv = self.attention(y, freqs_cis, None if cache is None else cache.attention)
        return o, MALCache(mem, kv)

    def attention_context(self, seq_len: int) -> int:
        return min(self.attention.window, seq_len)
