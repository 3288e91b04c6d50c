"""MAG, memory as a gate (paper section 4.2):

x --+--> SW-Attn([persistent || x]) ---> y --+
    |                                       (x)--> o     (x) = MemoryGate
    +--> NeuralMemory(x) ---------------> m -+
"""

from typing import NamedTuple

from titans_plugin.context_parallel import run_sharded_memory
from titans_plugin.memory import MemoryConfig, NeuralMemory, NeuralMemoryState

from .attention import KVCache
from .base import TitansBlockBase
from .documents import run_memory_on_documents
from .gate import MemoryGate


class MAGCache(NamedTuple):
    attention: KVCache
    memory: NeuralMemoryState


class MAGBlock(TitansBlockBase):
    letter = "G"
    variant = "mag"
    description = "MAG (memory as gate)"
    token_norms = ("gate.norm_y", "gate.norm_m")  # the gate reads both sub-layers per token

    def __init__(
        self,
        layer_id: int,
        model_args,
        *,
        memory: MemoryConfig,
        window: int,
        n_persistent: int,
        cp_scan: str,
        gate_scale_init: float = 1.0,
    ):
        super().__init__(layer_id, model_args)
        self.attention = self._make_attention(model_args, window, n_persistent)
        self.memory = NeuralMemory(memory)
        self.gate = MemoryGate(model_args.dim, eps=model_args.norm_eps, scale_init=gate_scale_init)
        self.parallel_scan = cp_scan == "parallel"

    def mix(self, x, freqs_cis, cache: MAGCache | None, docs=None):
        if docs is not None:
            y, _ = self.attention(x, freqs_cis, None, docs)
            return self.gate(y, run_memory_on_documents(self.memory, x, docs)), None
        y, kv = self.attention(x, freqs_cis, None if cache is None else cache.attention)
        m, mem = self.memory(x, None if cache is None else cache.memory)
        return self.gate(y, m), MAGCache(kv, mem)

    def memory_of(self, cache: MAGCache):
        return cache.memory.to_carry()

    def cache_from_memory(self, state: NeuralMemoryState, x, freqs_cis):
        return MAGCache(None, state)  # type: ignore[arg-type]  # no keys yet: the attention starts afresh

    def forward_shard(self, x, freqs_cis, shard):
        """Context parallel: the attention runs first, needing only the earlier keys,
        while the previous shard may still be scanning; then the memory continues from
        the state that shard hands over (context_parallel/memory.py)."""
        xn = self.attention_norm(x)
        y = self.attention.forward_shard(xn, freqs_cis, shard)
        m = run_sharded_memory(self.memory, xn, shard, self.sequence_start_parameters(), self.parallel_scan)
        return self._residual(x, self.gate(y, m))

    def attention_context(self, seq_len: int) -> int:
        return min(self.attention.window, seq_len) + self.attention.n_persistent
