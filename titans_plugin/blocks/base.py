"""What every block shares: llama3's pre-norm residual structure and feed-forward.

    h = x + mix(attention_norm(x))
    out = h + feed_forward(ffn_norm(h))

A block type defines `mix` (its sequence mixer), the cache that mix carries for
incremental decoding, and who it is: its layer-spec letter, the settings it reads (the
keyword-only parameters of its `__init__`, each a `[titans]` field of the same name; a
`memory` parameter takes the memory's MemoryConfig), and how many keys each query
attends to (for the FLOP count).
Submodule names follow torchtitan's llama3 TransformerBlock (attention, attention_norm,
ffn_norm, feed_forward) so its sharding plans and checkpoint keys apply to the parts we
share.
"""

import inspect
from typing import Any, ClassVar, cast

import torch
from torch import nn

from .attention import Attention
from .feed_forward import FeedForward, ffn_hidden_dim


class Carry:
    """Training from warmed memories (`titans.carry_memory`): a block called with
    `carry=Carry(state)` starts its memory from `state` (None: its learned initial memory)
    and its attention from nothing, and returns (out, the memory state to carry on, detached).

    A plain class, not a NamedTuple: FSDP2 casts the floating tensors of a block's inputs
    to its parameter dtype, walking NamedTuples, and the memory's state stays fp32."""

    __slots__ = ("state",)

    def __init__(self, state: Any):
        self.state = state


class TitansBlockBase(nn.Module):
    # Identity of a block type, read by the layer spec and the config validation: a new
    # block type is one class with these set and one entry in blocks/__init__.py.
    letter: ClassVar[str]
    variant: ClassVar[str]  # name of a model made only of this block ("mac")
    description: ClassVar[str]
    # Derived from __init__'s keyword-only parameters: the settings this block type reads
    # (validated only when a layer uses it), and whether it takes a memory.
    settings: ClassVar[tuple[str, ...]] = ()
    has_memory: ClassVar[bool] = False
    # Sequence parallel (adapter/tensor_parallel.py): the row-wise projections whose output
    # the block reads on the whole sequence (they stay all-reduced), the identity module
    # where such an output joins the stream, and norms over sub-layer outputs that keep
    # the rank's tokens (the stream's own norms, stream_norms, gather).
    whole_sequence_outputs: ClassVar[tuple[str, ...]] = ()
    joins_stream: str | None = None
    token_norms: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        params = inspect.signature(cls.__init__).parameters.values()
        keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        cls.has_memory = "memory" in keywords
        cls.settings = tuple(name for name in keywords if name != "memory")

    def __init__(self, layer_id: int, model_args):
        super().__init__()
        self.layer_id = layer_id
        dim = model_args.dim
        self.dim = dim
        self.attention_norm = nn.RMSNorm(dim, eps=model_args.norm_eps)
        self.ffn_norm = nn.RMSNorm(dim, eps=model_args.norm_eps)
        hidden = getattr(model_args, "ffn_hidden_dim", 0) or ffn_hidden_dim(
            dim, model_args.multiple_of, model_args.ffn_dim_multiplier
        )
        self.feed_forward = FeedForward(dim, hidden)
        # Identity; a hook for the tensor-parallel plan (adapter/tensor_parallel.py) where
        # a mixer's output covers the whole sequence and the stream is sequence-sharded.
        self.mixer_output = nn.Identity()
        if getattr(model_args, "depth_init", True):
            self.weight_init_std = 0.02 / (2 * (layer_id + 1)) ** 0.5
        else:
            self.weight_init_std = 0.02 / (2 * model_args.n_layers) ** 0.5

    @property
    def block_type(self) -> str:
        return self.letter

    @staticmethod
    def _make_attention(model_args, window: int | None = None, n_persistent: int = 0) -> Attention:
        return Attention(
            model_args.dim, model_args.n_heads, model_args.n_kv_heads, window=window, n_persistent=n_persistent
        )

    def mix(self, x: torch.Tensor, freqs_cis: torch.Tensor, cache, docs: torch.Tensor | None = None):
        """x [B, T, dim] (already normed) -> (out [B, T, dim], cache). docs [B, T]: the
        document index of every token of a packed batch (blocks/documents.py); every
        mixer then computes, for each document, what it computes for that document alone."""
        raise NotImplementedError

    def forward(self, x, freqs_cis, attention_masks=None, positions=None, shard=None, carry: Carry | None = None):
        """torchtitan's llama3 TransformerBlock signature. attention_masks: None (causal)
        or the document ids [B, T] that the model builds for
        titans.attn_mask_type = "block_causal". shard: context parallel, x is this
        SequenceShard of the sequence (context_parallel/transport.py). carry: see Carry;
        it goes through `__call__` so that torchtitan's activation checkpointing and
        compile wrappers see it."""
        if positions is not None:
            raise ValueError(f"{type(self).__name__} takes no positions (they must be None)")
        if shard is not None:
            return self.forward_shard(x, freqs_cis, shard)
        if carry is not None:
            if attention_masks is not None:
                raise ValueError("a carried memory (carry) continues one stream per row, not packed documents")
            start = None if carry.state is None else self.cache_from_memory(carry.state, x, freqs_cis)
            out, cache = self.forward_cached(x, freqs_cis, start)
            return out, self.memory_of(cache)
        out, _ = self.forward_cached(x, freqs_cis, None, docs=attention_masks)
        return out

    def forward_cached(self, x, freqs_cis, cache, docs: torch.Tensor | None = None):
        """Process x [B, T, dim] continuing from `cache` (None = start of the sequence)."""
        if docs is not None and cache is not None:
            raise ValueError("packed documents (docs) apply to a whole sequence, not to decoding with a cache")
        mixed, cache = self.mix(self.attention_norm(x), freqs_cis, cache, docs)
        return self._residual(x, self.mixer_output(mixed)), cache

    def stream_norms(self) -> list[str]:
        """Norms that read the residual stream (under sequence parallel: the rank's tokens)."""
        return ["attention_norm", "ffn_norm"]

    def _residual(self, x, mixed):
        h = x + mixed
        return h + self.feed_forward(self.ffn_norm(h))

    def forward_shard(self, x, freqs_cis, shard):
        """Context parallel. By default the block continues from the cache the previous
        shard ended with, as decoding would, and hands its own on: exact for every block,
        but each shard waits for the one before it. Blocks with parallel parts override."""

        def step(x, cache):
            out, cache = self.forward_cached(x, freqs_cis, cache)
            return out, self.cache_to_hand_over(cache)

        return shard.serial(step, x, self.sequence_start_parameters())

    def memory_of(self, cache):
        """The memory's part of an end-of-sequence cache, detached: what a carried
        training forward hands to the next one (None for a block without memory)."""
        return None

    def cache_from_memory(self, state, x: torch.Tensor, freqs_cis: torch.Tensor):
        """The cache that continues the memory from `state` (memory_of's) and starts
        everything else afresh at position 0."""
        return None

    def cache_to_hand_over(self, cache):
        """The part of the end-of-shard cache the next shard reads (all of it by default)."""
        return cache

    def sequence_start_parameters(self) -> list[nn.Parameter]:
        """Parameters read only where a sequence starts: the learned initial memory (and
        MAL's persistent prefix). Under context parallel only the first shard reads them."""
        memory = getattr(self, "memory", None)
        return [] if memory is None else list(memory.init_memory)

    def init_weights(self) -> None:
        """Children with an output projection (attention, memory, feed-forward) take the
        block's output std; the rest (norms, gate, persistent tokens) their own init."""
        for child in self.children():
            if hasattr(child, "init_weights"):
                cast(Any, child).init_weights(self.weight_init_std)
            elif hasattr(child, "reset_parameters"):
                cast(Any, child).reset_parameters()

    # -- cost, torchtitan's MFU convention (model/flops.py) ---------------------------
    def attention_context(self, seq_len: int) -> int:
        """Keys each query scores against in training over seq_len tokens."""
        return 0

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 per weight applied to every token, 12 per
        (query, key, head dim) score (forward two matmuls, x3 for training, not halved for
        causality), and for a memory 3x its scan's forward FLOPs. The learned initial
        memory weights are not applied to tokens directly: the scan counts their copies."""
        params = sum(p.numel() for p in self.parameters())
        flops = 0
        memory = getattr(self, "memory", None)
        if memory is not None:
            params -= sum(p.numel() for p in memory.init_memory.parameters())
            flops += 3 * memory.scan_flops_per_token()
        attention = getattr(self, "attention", None)
        if attention is not None:
            flops += 12 * attention.n_heads * attention.head_dim * self.attention_context(seq_len)
        return 6 * params + flops
