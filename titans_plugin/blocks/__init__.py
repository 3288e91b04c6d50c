"""Titans blocks: drop-in replacements for torchtitan's llama3 TransformerBlock."""

from .attention_block import AttentionBlock
from .base import TitansBlockBase
from .config import AttentionBlockConfig, LMMConfig, MACConfig, MAGConfig, MALConfig
from .lmm import LMMBlock
from .mac import MACBlock
from .mag import MAGBlock
from .mal import MALBlock

BLOCK_CLASSES = {
    "A": AttentionBlock, "W": AttentionBlock,
    "C": MACBlock, "G": MAGBlock, "L": MALBlock, "M": LMMBlock,
}


def build_block(letter: str, layer_id: int, model_args, block_config) -> TitansBlockBase:
    """model_args: anything with llama3's fields (dim, n_heads, n_kv_heads, multiple_of,
    ffn_dim_multiplier, norm_eps, depth_init, n_layers), e.g. torchtitan's
    TransformerModelArgs or our TitansModelArgs."""
    return BLOCK_CLASSES[letter](layer_id, model_args, block_config)


__all__ = [
    "AttentionBlock", "AttentionBlockConfig", "BLOCK_CLASSES", "LMMBlock", "LMMConfig",
    "MACBlock", "MACConfig", "MAGBlock", "MAGConfig", "MALBlock", "MALConfig",
    "TitansBlockBase", "build_block",
]
