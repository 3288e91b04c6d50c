"""TitansTransformer: llama3's embedding/norm/output around a stack of hybrid blocks.

Module names and the forward signature follow torchtitan's llama3 Transformer
(tok_embeddings, layers["i"], norm, output, freqs_cis), so torchtitan's trainer,
checkpointing and the parallelisation code treat it like a llama3 model."""

from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from titans_plugin.blocks import Carry, TitansBlockBase
from titans_plugin.blocks.documents import check_document_ids, document_ids
from titans_plugin.blocks.rope import precompute_freqs_cis
from titans_plugin.context_parallel import contiguous_shard, flush_sends
from titans_plugin.context_parallel.transport import map_tree

from .args import TitansModelArgs
from .carry import MemoryCarry
from .layers import build_block


def caches_to_hold(caches: list) -> list:
    """Caches to keep past the next forward (a stream's, carried from piece to piece):
    detached, and copied where a tensor is a view into a larger storage (window keys,
    pending memory inputs and conv tails are slices of a piece's projections, which holding
    the view would keep alive); a tensor that is its whole storage (a growing full-attention
    cache) is kept as it is."""

    def own(t):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.detach()
        return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()

    return map_tree(own, caches)


class TitansTransformer(nn.Module):
    # True: forward returns the final norm's output and the loss applies `output` itself
    # (torchtitan 0.3's chunked loss sets it)
    _skip_lm_head: bool = False
    tok_embeddings: nn.Embedding
    layers: nn.ModuleDict
    norm: nn.RMSNorm
    output: nn.Linear
    freqs_cis: torch.Tensor

    def __init__(self, model_args: TitansModelArgs):
        super().__init__()
        self.layer_types = model_args.layer_types()  # validated once, where the args were resolved
        self.model_args = model_args
        self.vocab_size = model_args.vocab_size
        self.n_layers = model_args.n_layers
        self.tok_embeddings = nn.Embedding(model_args.vocab_size, model_args.dim)
        self.register_buffer("freqs_cis", self._precompute_freqs_cis(), persistent=False)
        self.layers = nn.ModuleDict()
        for i, letter in enumerate(self.layer_types):
            self.layers[str(i)] = build_block(letter, i, model_args, model_args.titans)
        self.norm = nn.RMSNorm(model_args.dim, eps=model_args.norm_eps)
        self.output = nn.Linear(model_args.dim, model_args.vocab_size, bias=False)
        if model_args.tie_embeddings:
            self.tok_embeddings.weight = self.output.weight
        self.sequence_group: dist.ProcessGroup | None = None  # context parallel: the ranks that share each sequence
        titans = model_args.titans
        self.memory_carry = MemoryCarry(titans.carry_memory if titans.carries_memory(self.n_layers) else 0)
        self.init_weights()

    def blocks(self) -> list[TitansBlockBase]:
        """The layers, in order."""
        return [cast(TitansBlockBase, layer) for layer in self.layers.values()]

    def shard_sequence(self, group) -> None:
        """Context parallel over `group` (a process group): from now on forward receives
        one shard of each sequence (torchtitan shards the batch before the model) and
        exchanges with the other shards what the blocks need (context_parallel/transport.py)."""
        self.sequence_group = group

    def _precompute_freqs_cis(self) -> torch.Tensor:
        a = self.model_args
        return precompute_freqs_cis(a.dim // a.n_heads, a.max_seq_len, a.rope_theta, a.rope_scaling)

    def cover_positions(self, length: int) -> None:
        """Grow the RoPE table to at least `length` positions (reading or generating past
        the training length); positions it already has keep their exact values."""
        if length <= self.freqs_cis.shape[0]:
            return
        self.model_args.max_seq_len = 1 << (length - 1).bit_length()  # doubling: few regrowths
        kept = self.freqs_cis
        with torch.device(kept.device):
            grown = self._precompute_freqs_cis()
        grown[: kept.shape[0]] = kept  # bit for bit, wherever the old table was computed
        self.freqs_cis = grown

    def init_weights(self, buffer_device: torch.device | None = None) -> None:
        """torchtitan builds on the meta device and calls this after materialising."""
        buffer_device = buffer_device or self.freqs_cis.device
        with torch.device(buffer_device):
            self.freqs_cis = self._precompute_freqs_cis()
        if self.model_args.tie_embeddings:  # one matrix, initialised as the output
            self.tok_embeddings.weight = self.output.weight  # re-tie after a meta-device build
        else:
            nn.init.normal_(self.tok_embeddings.weight)
        for layer in self.blocks():
            layer.init_weights()
        self.norm.reset_parameters()
        std = self.model_args.dim**-0.5
        nn.init.trunc_normal_(self.output.weight, std=std, a=-3 * std, b=3 * std)

    def get_attention_masks(self, input_batch, tokenizer, extra_inputs=None):
        """titans.attn_mask_type = "block_causal": the document index of every token
        (documents end with the tokenizer's EOS), which forward hands to every block.
        Plain causal models build their masks inside each block; torchtitan treats
        TypeError as 'no masks'."""
        if self.model_args.titans.attn_mask_type != "block_causal":
            raise TypeError("Titans models build their causal masks inside each block")
        if tokenizer.eos_id is None:
            raise ValueError("titans.attn_mask_type='block_causal' needs a tokenizer with an EOS token")
        return document_ids(input_batch, tokenizer.eos_id)

    def forward(self, tokens: torch.Tensor, attention_masks=None, positions=None) -> torch.Tensor:
        """attention_masks: None, or document ids [B, T] (get_attention_masks) for a
        packed batch. positions [B, T]: context parallel only, where in the sequence the
        trainer's shard of tokens lies."""
        if self.sequence_group is not None:
            if attention_masks is not None:
                raise ValueError("packed documents (attention_masks) cannot run under context parallel")
            if self._carries_memory():
                raise ValueError("titans.carry_memory > 1 cannot run under context parallel")
            return self._forward_shard(tokens, positions)
        if positions is not None:
            raise ValueError("positions are given only under context parallel (shard_sequence)")
        if attention_masks is not None:
            check_document_ids(attention_masks, tokens.shape)
        h = self.tok_embeddings(tokens)
        if self._carries_memory():
            if attention_masks is not None:
                raise ValueError("titans.carry_memory > 1 cannot train on packed documents (attention_masks)")
            ends = []
            for layer, start in zip(self.blocks(), self.memory_carry.starts(tokens, len(self.layers)), strict=True):
                h, end = layer(h, self.freqs_cis, carry=Carry(start))
                ends.append(end)
            self.memory_carry.keep(ends, tokens)
        else:
            for layer in self.blocks():
                h = layer(h, self.freqs_cis, attention_masks=attention_masks)
        return self._head(self.norm(h))

    def _carries_memory(self) -> bool:
        """Training forwards only: evaluation neither reads nor moves the carried state."""
        return self.memory_carry.every > 1 and self.training and torch.is_grad_enabled()

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return h if self._skip_lm_head else self.output(h)

    def _forward_shard(self, tokens: torch.Tensor, positions) -> torch.Tensor:
        assert self.sequence_group is not None
        shard, tokens, restore = contiguous_shard(self.sequence_group, tokens, positions)
        h = self.tok_embeddings(tokens)
        for layer in self.blocks():
            h = layer(h, self.freqs_cis, shard=shard.for_block())
        flush_sends()  # the next shard has what this forward sent once its own forward is done
        # the norm first: under sequence parallel it gathers the shard's tokens
        return self._head(restore(self.norm(h)))

    @torch.no_grad()
    def forward_cached(self, tokens: torch.Tensor, caches: list | None = None, starts: torch.Tensor | None = None):
        """Incremental decoding: logits for `tokens` [B, T] continuing from `caches`
        (None at the start). Feeding a sequence in any pieces gives the full-pass logits.

        starts [T] or [B, T] (bool): a new document begins at these tokens (position 0
        included) and starts from empty caches, as it would alone; the same positions in
        every row (rows of a batch share their caches' position)."""
        if starts is None:
            return self._forward_cached(tokens, caches)
        starts = starts.expand(tokens.shape)
        if (starts != starts[:1]).any():
            raise ValueError("forward_cached: starts must mark the same positions in every row")
        cuts = starts[0].nonzero().flatten().tolist()
        bounds = sorted({0, *cuts, tokens.shape[1]})
        outs = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            out, caches = self._forward_cached(tokens[:, lo:hi], None if lo in cuts else caches)
            outs.append(out)
        return torch.cat(outs, dim=1), caches

    def forward_stream(self, tokens: torch.Tensor, caches: list | None = None):
        """Training on a stream longer than one backward pass (truncated backpropagation
        through time): logits for `tokens` [B, T] continuing from `caches`, with gradients,
        and the caches to continue from, detached, so the next piece's backward ends here.
        Row b of the next call continues row b of this one (caches_to_hold: none keeps this
        piece's projections alive through the next piece's backward)."""
        logits, caches = self._forward_cached(tokens, caches)
        return logits, caches_to_hold(caches)

    def _forward_cached(self, tokens: torch.Tensor, caches: list | None):
        h = self.tok_embeddings(tokens)
        caches = caches or [None] * len(self.layers)
        new_caches = []
        for layer, cache in zip(self.blocks(), caches, strict=True):
            h, cache = layer.forward_cached(h, self.freqs_cis, cache)
            new_caches.append(cache)
        return self.output(self.norm(h)), new_caches
