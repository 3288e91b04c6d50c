"""MAG, memory as a gate (paper section 4.2):

    x --+--> SW-Attn([persistent || x]) ---> y --+
        |                                       (x)--> o     (x) = MemoryGate
        +--> NeuralMemory(x) ---------------> m -+
"""

from typing import NamedTuple

from titans_plugin.memory import NeuralMemory, NeuralMemoryState

from .attention import KVCache
from .base import TitansBlockBase
from .config import MAGConfig
from .gate import MemoryGate


class MAGCache(NamedTuple):
    attention: KVCache
    memory: NeuralMemoryState


class MAGBlock(TitansBlockBase):
    block_type = "G"

    def __init__(self, layer_id: int, model_args, config: MAGConfig):
        super().__init__(layer_id, model_args)
        config = self._adopt_config(config, model_args)
        self.attention = self._make_attention(model_args, config.window, config.n_persistent)
        self.memory = NeuralMemory(config.memory)
        self.gate = MemoryGate(model_args.dim, eps=model_args.norm_eps)

    def mix(self, x, freqs_cis, cache: MAGCache | None):
        y, kv = self.attention(x, freqs_cis, None if cache is None else cache.attention)
        m, mem = self.memory(x, None if cache is None else cache.memory)
        return self.gate(y, m), MAGCache(kv, mem)
