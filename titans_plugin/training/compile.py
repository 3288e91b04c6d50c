"""Per-block torch.compile (both adapters compile each block, as torchtitan does)."""

from titans_plugin.model import TitansTransformer
from titans_plugin.utils.torch_internals import allow_compiled_versions, skip_forward_side_effects_when_recomputing

# torch.compile's own limit for one function: what each block type gets
VERSIONS_PER_BLOCK_TYPE = 8


def prepare_block_compile(model: TitansTransformer) -> None:
    """What torch.compile needs to compile every block of `model` whole (fullgraph).

    Activation checkpointing: a compiled block's recomputation cannot replay the forward's
    Python side effects (the memory records its statistics for the logger), so it skips
    them; without that, torchtitan 0.2.2 failed to compile any memory block under AC.

    torch.compile counts compiled versions per Python function, and every block type
    runs the same one (TitansBlockBase.forward, guarded on the block's class). Each type
    needs a few (training, evaluation, a carried forward, ...), so a hybrid of four or five
    types used up torch's 8 at its first evaluation and stopped. Room for 8 per type."""
    skip_forward_side_effects_when_recomputing()
    allow_compiled_versions(VERSIONS_PER_BLOCK_TYPE * len(set(model.layer_types)))  # blocks may be wrapped by now
