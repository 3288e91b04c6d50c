"""LMM: the neural memory alone as the sequence mixer (paper section 4.4)."""

from titans_plugin.context_parallel import run_sharded_memory
from titans_plugin.memory import MemoryConfig, NeuralMemory, NeuralMemoryState

from .base import TitansBlockBase
from .documents import run_memory_on_documents


class LMMBlock(TitansBlockBase):
    letter = "M"
    variant = "lmm"
    description = "LMM (memory only)"

    def __init__(self, layer_id: int, model_args, *, memory: MemoryConfig, cp_scan: str):
        super().__init__(layer_id, model_args)
        self.memory = NeuralMemory(memory)
        self.parallel_scan = cp_scan == "parallel"

    def mix(self, x, freqs_cis, cache: NeuralMemoryState | None, docs=None):
        if docs is not None:
            return run_memory_on_documents(self.memory, x, docs), None
        return self.memory(x, cache)

    def memory_of(self, cache: NeuralMemoryState):
        return cache.to_carry()

    def cache_from_memory(self, state: NeuralMemoryState, x, freqs_cis):
        return state

    def forward_shard(self, x, freqs_cis, shard):
        """Context parallel: only the memory's scan continues from the previous shard
        (context_parallel/memory.py); the feed-forward does not wait for the next one."""
        m = run_sharded_memory(
            self.memory, self.attention_norm(x), shard, self.sequence_start_parameters(), self.parallel_scan
        )
        return self._residual(x, self.mixer_output(m))
