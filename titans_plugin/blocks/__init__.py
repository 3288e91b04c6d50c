"""Titans blocks: drop-in replacements for torchtitan's llama3 TransformerBlock.

BLOCK_TYPES is the registry: the layer spec's alphabet, the config validation and the
model builder all read it. A new block type is a TitansBlockBase subclass listed here."""

from .attention_block import AttentionBlock, SlidingWindowBlock
from .base import TitansBlockBase
from .lmm import LMMBlock
from .mac import MACBlock
from .mag import MAGBlock
from .mal import MALBlock

BLOCK_TYPES: dict[str, type[TitansBlockBase]] = {
    cls.letter: cls for cls in (AttentionBlock, SlidingWindowBlock, MACBlock, MAGBlock, MALBlock, LMMBlock)
}


def build_block(letter: str, layer_id: int, model_args, titans) -> TitansBlockBase:
    """model_args: anything with llama3's fields (dim, n_heads, n_kv_heads, multiple_of,
    ffn_dim_multiplier, norm_eps, depth_init, n_layers), e.g. torchtitan's
    TransformerModelArgs or our TitansModelArgs; titans: a validated TitansConfig."""
    return BLOCK_TYPES[letter](layer_id, model_args, titans)


__all__ = [
    "AttentionBlock",
    "BLOCK_TYPES",
    "LMMBlock",
    "MACBlock",
    "MAGBlock",
    "MALBlock",
    "SlidingWindowBlock",
    "TitansBlockBase",
    "build_block",
]
