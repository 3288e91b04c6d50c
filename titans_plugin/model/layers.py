"""Building one layer: the block type's class, given exactly the settings it reads."""

from titans_plugin.blocks import BLOCK_TYPES, TitansBlockBase
from titans_plugin.config import TitansConfig


def build_block(letter: str, layer_id: int, model_args, titans: TitansConfig) -> TitansBlockBase:
    """model_args: anything with llama3's fields (dim, n_heads, n_kv_heads, multiple_of,
    ffn_dim_multiplier, norm_eps, depth_init, n_layers), e.g. torchtitan's llama3 model
    args or our TitansModelArgs; titans: a validated TitansConfig. The block receives the
    `[titans]` fields its `__init__` names, and a MemoryConfig when it takes a memory."""
    cls = BLOCK_TYPES[letter]
    settings = {name: getattr(titans, name) for name in cls.settings}
    if cls.has_memory:
        settings["memory"] = titans.memory_config(model_args.dim)
    return cls(layer_id, model_args, **settings)
