"""Titans blocks: drop-in replacements for torchtitan's llama3 TransformerBlock.

BLOCK_TYPES is the registry: the layer spec's alphabet, the config validation and the
model builder all read it. A new block type is a TitansBlockBase subclass listed here.
A block is built from llama3-style sizes and the settings its `__init__` names
(titans_plugin/model/layers.py fills them from the `[titans]` section); it never reads
the section itself."""

from .attention_block import AttentionBlock, SlidingWindowBlock
from .base import Carry, TitansBlockBase
from .lmm import LMMBlock
from .mac import MACBlock
from .mag import MAGBlock
from .mal import MALBlock

BLOCK_TYPES: dict[str, type[TitansBlockBase]] = {
    cls.letter: cls for cls in (AttentionBlock, SlidingWindowBlock, MACBlock, MAGBlock, MALBlock, LMMBlock)
}


__all__ = [
    "AttentionBlock",
    "BLOCK_TYPES",
    "LMMBlock",
    "MACBlock",
    "MAGBlock",
    "MALBlock",
    "SlidingWindowBlock",
    "Carry",
    "TitansBlockBase",
]
