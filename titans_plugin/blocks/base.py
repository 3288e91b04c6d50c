"""What every block shares: llama3's pre-norm residual structure and feed-forward.

    h = x + mix(attention_norm(x))
    out = h + feed_forward(ffn_norm(h))

A block type only defines `mix` (its sequence mixer) and the cache that mix carries for
incremental decoding. Submodule names follow torchtitan's llama3 TransformerBlock
(attention, attention_norm, ffn_norm, feed_forward) so its sharding plans and checkpoint
keys apply to the parts we share.
"""

import torch
from torch import nn

from .attention import Attention
from .config import with_memory_dim
from .feed_forward import FeedForward, ffn_hidden_dim


class TitansBlockBase(nn.Module):
    block_type: str = "?"

    def __init__(self, layer_id: int, model_args):
        super().__init__()
        self.layer_id = layer_id
        dim = model_args.dim
        self.dim = dim
        self.attention_norm = nn.RMSNorm(dim, eps=model_args.norm_eps)
        self.ffn_norm = nn.RMSNorm(dim, eps=model_args.norm_eps)
        self.feed_forward = FeedForward(
            dim, ffn_hidden_dim(dim, model_args.multiple_of, model_args.ffn_dim_multiplier)
        )
        if getattr(model_args, "depth_init", True):
            self.weight_init_std = 0.02 / (2 * (layer_id + 1)) ** 0.5
        else:
            self.weight_init_std = 0.02 / (2 * model_args.n_layers) ** 0.5

    def _adopt_config(self, config, model_args):
        """Keep the block's config, its memory (if any) reading the model width, validated."""
        config = with_memory_dim(config, model_args.dim)
        config.validate()
        self.config = config
        return config

    @staticmethod
    def _make_attention(model_args, window: int | None = None, n_persistent: int = 0) -> Attention:
        return Attention(model_args.dim, model_args.n_heads, model_args.n_kv_heads,
                         window=window, n_persistent=n_persistent)

    def mix(self, x: torch.Tensor, freqs_cis: torch.Tensor, cache):
        """x [B, T, dim] (already normed) -> (out [B, T, dim], cache)."""
        raise NotImplementedError

    def forward(self, x, freqs_cis, attention_masks=None, positions=None):
        """Same signature as torchtitan's llama3 TransformerBlock."""
        if attention_masks is not None or positions is not None:
            raise ValueError(
                f"{type(self).__name__} supports model.attn_type='sdpa' with causal masks only "
                "(attention_masks and positions must be None)"
            )
        out, _ = self.forward_cached(x, freqs_cis, None)
        return out

    def forward_cached(self, x, freqs_cis, cache):
        """Process x [B, T, dim] continuing from `cache` (None = start of the sequence)."""
        mixed, cache = self.mix(self.attention_norm(x), freqs_cis, cache)
        h = x + mixed
        return h + self.feed_forward(self.ffn_norm(h)), cache

    def init_weights(self) -> None:
        for norm in (self.attention_norm, self.ffn_norm):
            norm.reset_parameters()
        # Every other child (attention, memory, gate) takes the output-projection std.
        for child in self.children():
            if hasattr(child, "init_weights"):
                child.init_weights(self.weight_init_std)
