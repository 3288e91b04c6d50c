"""'A' and 'W' layers: plain attention (full causal or sliding window) in our block frame.

An 'A' layer computes what torchtitan's llama3 TransformerBlock computes (same parameter
names and shapes) and adds incremental decoding; 'W' is the sliding-window baseline."""

from .base import TitansBlockBase
from .config import AttentionBlockConfig


class AttentionBlock(TitansBlockBase):
    block_type = "A"

    def __init__(self, layer_id: int, model_args, config: AttentionBlockConfig):
        super().__init__(layer_id, model_args)
        config = self._adopt_config(config, model_args)
        self.block_type = "A" if config.window is None else "W"
        self.attention = self._make_attention(model_args, config.window, config.n_persistent)

    def mix(self, x, freqs_cis, cache):
        return self.attention(x, freqs_cis, cache)
