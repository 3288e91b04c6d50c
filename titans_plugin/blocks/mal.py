"""MAL, memory as a layer (paper section 4.3): the memory, then sliding-window attention.

`titans.mal_form = "stacked"` (default): two pre-norm residual sub-layers, like a
Transformer's attention and feed-forward,

    h   = x + NeuralMemory([persistent || memory_norm(x)])
    o   = h + SW-Attn(attention_norm(h))
    out = o + feed_forward(ffn_norm(o))

`"fused"`: one residual around both, out of the memory only through the attention's
value projection (checkpoints trained before the stacked form load with it):

    o   = x + SW-Attn(NeuralMemory([persistent || attention_norm(x)]))

In the fused form the gradient that reaches the memory is hundreds of times smaller than
in MAG at initialisation and MAL barely learns to recall; stacked, the memory writes to
the residual stream directly (docs/blocks.md has the measurements).
"""

from typing import NamedTuple

from torch import nn

from titans_plugin.memory import MemoryConfig, NeuralMemory, NeuralMemoryState

from .attention import KVCache
from .base import TitansBlockBase
from .documents import run_memory_on_documents
from .prefixed_memory import make_persistent, run_prefixed_memory


class MALCache(NamedTuple):
    memory: NeuralMemoryState
    attention: KVCache


class MALBlock(TitansBlockBase):
    letter = "L"
    variant = "mal"
    description = "MAL (memory as layer)"
    # its persistent prefix is cut from the memory output after the projection (fused:
    # and the attention reads it)
    whole_sequence_outputs = ("memory.wo",)

    def __init__(
        self, layer_id: int, model_args, *, memory: MemoryConfig, window: int, n_persistent: int, mal_form: str
    ):
        super().__init__(layer_id, model_args)
        self.stacked = mal_form == "stacked"
        self.joins_stream = "memory_output" if self.stacked else None
        if self.stacked:
            self.memory_norm = nn.RMSNorm(model_args.dim, eps=model_args.norm_eps)
            self.memory_output = nn.Identity()  # a hook for the tensor-parallel plan, as mixer_output
        self.memory = NeuralMemory(memory)
        self.persistent = make_persistent(n_persistent, model_args.dim)  # the memory's prefix
        self.attention = self._make_attention(model_args, window)

    def _memory(self, x, cache: MALCache | None, docs=None):
        if docs is not None:  # every document gets the persistent prefix
            # through the module: under tensor parallel its output is a local tensor
            prefix = None if self.persistent is None else self.persistent(1, x.dtype)[0]
            return run_memory_on_documents(self.memory, x, docs, prefix), None
        return run_prefixed_memory(self.memory, self.persistent, x, None if cache is None else cache.memory)

    def mix(self, x, freqs_cis, cache: MALCache | None, docs=None):
        """The fused form's mixer (x already normed)."""
        y, mem = self._memory(x, cache, docs)
        o, kv = self.attention(y, freqs_cis, None if cache is None else cache.attention, docs)
        return o, MALCache(mem, kv)

    def forward_cached(self, x, freqs_cis, cache: MALCache | None, docs=None):
        if not self.stacked:
            return super().forward_cached(x, freqs_cis, cache, docs)
        if docs is not None and cache is not None:
            raise ValueError("packed documents (docs) apply to a whole sequence, not to decoding with a cache")
        y, mem = self._memory(self.memory_norm(x), cache, docs)
        h = x + self.memory_output(y)
        a, kv = self.attention(self.attention_norm(h), freqs_cis, None if cache is None else cache.attention, docs)
        h = h + a
        return h + self.feed_forward(self.ffn_norm(h)), MALCache(mem, kv)

    def memory_of(self, cache: MALCache):
        return cache.memory.to_carry()

    def cache_from_memory(self, state: NeuralMemoryState, x, freqs_cis):
        return MALCache(state, None)  # type: ignore[arg-type]  # the attention starts afresh

    def stream_norms(self) -> list[str]:
        return super().stream_norms() + (["memory_norm"] if self.stacked else [])

    def sequence_start_parameters(self):
        prefix = [] if self.persistent is None else [self.persistent.tokens]
        return super().sequence_start_parameters() + prefix

    def attention_context(self, seq_len: int) -> int:
        return min(self.attention.window, seq_len)
