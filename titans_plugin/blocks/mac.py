"""MAC, memory as context (paper section 4.1), in the paper's order. Per segment S(t):

    h      = M*_{t-1}(q(S(t)))                       read the memory from before the segment
    y      = Attn([persistent || h || S(t)])         full causal inside the segment
    u      = S(t) + y                                what the memory stores (see below)
    M_t    = update of M_{t-1} with u
    o      = y (x) M*_t(u)                           read with the updated memory, gate

What is stored is `titans.mac_memory_input`: "residual" (u = S(t) + y, the default) or
"attention" (u = y, the paper's equation read literally). The attention output alone
carries little of the token's identity (after training it is nearly uniform across a
segment), so a memory written with it cannot tell one stored fact from another; adding
the block's input, as the residual connection around the block would, restores that
and is what makes MAC recall (docs/blocks.md has the measurements).

Attention never crosses a segment boundary: what lies further back reaches a token only
through the memory. Token t sees h_s and x_s for s <= t in its segment, so the block is
causal; the update-then-read M*_t(u) is the memory's own causal scan.

A segment may be cut between calls (decoding): the cache keeps the segment's keys, the
memory weights from its start, and the retrieval stream's conv tail.

Packed documents: each document is moved to a slot that starts a segment (and a memory
chunk), so its segments are the ones it has alone; at its first segment the memory, the
segment weights that h is read from and the conv histories restart from the initial
state, and its RoPE positions count from its own start.
"""

import math
from typing import NamedTuple

import torch

from titans_plugin.memory import MemoryConfig, NeuralMemory, NeuralMemoryState, detached_copy

from .attention import masked_attention
from .base import TitansBlockBase
from .documents import DocumentLayout
from .gate import MemoryGate


class MACCache(NamedTuple):
    memory: NeuralMemoryState | None  # the update stream (over what is stored, u)
    segment_weights: tuple[torch.Tensor, ...]  # memory weights at the segment start
    query_tail: torch.Tensor | None  # conv tail of the retrieval queries (over x)
    segment_k: torch.Tensor  # [B, S, H_kv, D]: keys of h and x tokens in this segment
    segment_v: torch.Tensor
    segment_pos: torch.Tensor  # [S] absolute positions of those keys
    pos: int


class MACBlock(TitansBlockBase):
    letter = "C"
    variant = "mac"
    description = "MAC (memory as context)"
    # per segment, retrieved tokens feed the attention, whose output feeds the update
    whole_sequence_outputs = ("attention.wo", "memory.wo")
    joins_stream = "mixer_output"

    def __init__(
        self,
        layer_id: int,
        model_args,
        *,
        memory: MemoryConfig,
        segment_len: int,
        n_persistent: int,
        mac_memory_input: str,
        gate_scale_init: float = 1.0,
    ):
        super().__init__(layer_id, model_args)
        self.segment_len = segment_len
        self.store_residual = mac_memory_input == "residual"
        self.attention = self._make_attention(model_args, None, n_persistent)
        self.memory = NeuralMemory(memory)
        self.gate = MemoryGate(model_args.dim, eps=model_args.norm_eps, scale_init=gate_scale_init)

    def _empty_cache(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> MACCache:
        # Empty key/value tensors shaped like this rank's projections (tensor parallel
        # holds a subset of the heads): project one token and keep none of it.
        k, v = self.attention.project_kv(x[:, :1], freqs_cis, 0)
        empty_k, empty_v = k[:, :0], v[:, :0]
        weights = self.memory.initial_state(x.shape[0]).weights
        no_pos = torch.zeros(0, dtype=torch.long, device=x.device)
        return MACCache(None, weights, None, empty_k, empty_v, no_pos, 0)

    def mix(self, x, freqs_cis, cache: MACCache | None, docs=None):
        if docs is not None:
            return self._mix_documents(x, freqs_cis, docs), None
        cache = cache or self._empty_cache(x, freqs_cis)
        L = self.segment_len
        outs, start = [], 0
        if self.training:
            self.memory.collect_stats()  # the statistics of every segment, not the last one's
        while start < x.shape[1]:
            if cache.pos % L == 0 and cache.pos > 0 and cache.segment_k.shape[1]:
                cache = self._begin_segment(cache)
            n = min(L - cache.pos % L, x.shape[1] - start)
            o, cache = self._segment_piece(x[:, start : start + n], freqs_cis, cache)
            outs.append(o)
            start += n
        if self.training:
            self.memory.merge_stats()
        return torch.cat(outs, dim=1), cache

    def _mix_documents(self, x, freqs_cis, docs):
        L = self.segment_len
        layout = DocumentLayout.build(docs, align=math.lcm(L, self.memory.config.chunk_size))
        xs = layout.pack(x)
        cache = self._empty_cache(xs, freqs_cis)
        initial = cache.segment_weights
        outs = []
        if self.training:
            self.memory.collect_stats()
        for start in range(0, xs.shape[1], L):
            sl = slice(start, start + L)
            if start:
                cache = self._begin_segment(cache)
            new_doc = layout.starts[:, start].view(-1, 1, 1, 1)
            weights = tuple(torch.where(new_doc, i, w) for i, w in zip(initial, cache.segment_weights, strict=True))
            cache = cache._replace(segment_weights=weights)
            o, cache = self._segment_piece(xs[:, sl], freqs_cis, cache, layout.positions[:, sl], layout.starts[:, sl])
            outs.append(o)
        if self.training:
            self.memory.merge_stats()
        return layout.unpack(torch.cat(outs, dim=1))

    def memory_of(self, cache: MACCache):
        """The update stream's state and the retrieval queries' conv tail."""
        assert cache.memory is not None  # a segment has been stored
        # a slice of the segment's queries: copied, as NeuralMemoryState.detach copies its slices
        tail = None if cache.query_tail is None else detached_copy(cache.query_tail)
        return cache.memory.to_carry(), tail

    def cache_from_memory(self, state, x, freqs_cis):
        """A first segment at position 0 that reads the memory as `state` left it."""
        memory, query_tail = state
        fresh = self._empty_cache(x, freqs_cis)
        return fresh._replace(memory=memory, segment_weights=memory.memory.weights, query_tail=query_tail)

    def cache_to_hand_over(self, cache: MACCache) -> MACCache:
        """A shard that ends on a segment boundary hands over only the memory: the next
        shard starts a segment, which attends to none of this one's keys."""
        if cache.pos % self.segment_len == 0 and cache.segment_k.shape[1]:
            return self._begin_segment(cache)
        return cache

    def _begin_segment(self, cache: MACCache) -> MACCache:
        """A new segment reads the memory as the previous segment left it."""
        empty_k = cache.segment_k[:, :0]
        assert cache.memory is not None  # a segment has been stored
        return cache._replace(
            segment_weights=cache.memory.memory.weights,
            segment_k=empty_k,
            segment_v=cache.segment_v[:, :0],
            segment_pos=cache.segment_pos[:0],
        )

    def _segment_piece(self, x, freqs_cis, cache: MACCache, rope_pos=None, starts=None):
        """Tokens x [B, n, dim] that all lie in one segment. Packed documents: rope_pos
        [B, n] positions within each document, starts [B, n] document starts."""
        B, n, _ = x.shape
        pos = cache.pos
        rope_pos = pos if rope_pos is None else rope_pos
        q_mem, query_tail = self.memory.query(x, cache.query_tail, starts)
        h = self.memory.read(q_mem, cache.segment_weights, x)  # M*_{t-1}(q_t)
        q, kx, vx = self.attention.project(x, freqs_cis, rope_pos)
        kh, vh = self.attention.project_kv(h, freqs_cis, rope_pos)
        positions = torch.arange(pos, pos + n, device=x.device)
        seg_k = torch.cat([cache.segment_k, kh, kx], dim=1)
        seg_v = torch.cat([cache.segment_v, vh, vx], dim=1)
        seg_pos = torch.cat([cache.segment_pos, positions, positions])
        pk, pv = self.attention.persistent_kv()
        y = masked_attention(q, seg_k, seg_v, positions, seg_pos, None, pk, pv)
        y = self.attention.wo(y.reshape(B, n, -1))
        u = x + y if self.store_residual else y
        m, memory = self.memory(u, cache.memory, starts)  # update with u, then read M*_t(u_t)
        cache = MACCache(memory, cache.segment_weights, query_tail, seg_k, seg_v, seg_pos, pos + n)
        return self.gate(y, m), cache

    def attention_context(self, seq_len: int) -> int:
        """A segment's own tokens and their retrieved memories, plus the persistent tokens."""
        return 2 * min(self.segment_len, seq_len) + self.attention.n_persistent

    def flops_per_token(self, seq_len: int) -> int:
        # The read before attending is one more pass of every query through the memory.
        return super().flops_per_token(seq_len) + 3 * self.memory.read_flops_per_token()
