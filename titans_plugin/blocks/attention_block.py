"""'A' and 'W' layers: plain attention (full causal or sliding window) in our block frame.

An 'A' layer computes what torchtitan's llama3 TransformerBlock computes (same parameter
names and shapes) and adds incremental decoding; 'W' is the sliding-window baseline."""

from .base import TitansBlockBase


class AttentionBlock(TitansBlockBase):
    letter = "A"
    variant = "attention"
    description = "full causal attention"

    def __init__(self, layer_id: int, model_args, window: int | None = None):
        super().__init__(layer_id, model_args)
        self.attention = self._make_attention(model_args, window)

    def mix(self, x, freqs_cis, cache, docs=None):
        return self.attention(x, freqs_cis, cache, docs)

    def forward_shard(self, x, freqs_cis, shard):
        """Context parallel: no state chain, only the earlier keys (blocks/attention.py)."""
        return self._residual(x, self.attention.forward_shard(self.attention_norm(x), freqs_cis, shard))

    def attention_context(self, seq_len: int) -> int:
        window = self.attention.window
        return seq_len if window is None else min(window, seq_len)


class SlidingWindowBlock(AttentionBlock):
    letter = "W"
    variant = "swa"
    description = "sliding-window attention"

    def __init__(self, layer_id: int, model_args, *, window: int):
        super().__init__(layer_id, model_args, window)
