"""Per-block torch.compile (both adapters compile each block, as torchtitan does)."""

from titans_plugin.model import TitansTransformer
from titans_plugin.utils.torch_internals import allow_compiled_versions

# torch.compile's own limit for one function: what each block type gets
VERSIONS_PER_BLOCK_TYPE = 8


def make_room_for_block_types(model: TitansTransformer) -> None:
    """torch.compile counts compiled versions per Python function, and every block type
    runs the same one (TitansBlockBase.forward, guarded on the block's class). Each type
    needs a few (training, evaluation, a carried forward, ...), so a hybrid of four or five
    types used up torch's 8 at its first evaluation and stopped. Room for 8 per type."""
    allow_compiled_versions(VERSIONS_PER_BLOCK_TYPE * len(set(model.layer_types)))  # blocks may be wrapped by now
