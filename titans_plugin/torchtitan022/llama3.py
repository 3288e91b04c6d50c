"""torchtitan 0.2.2's llama3: its sizes, and its state-dict adapter's names."""

import dataclasses

from titans_plugin.blocks.rope import RopeScaling
from titans_plugin.model.args import LLAMA_FIELDS


def llama3_flavors() -> dict:
    """torchtitan's llama3 model args per flavor; the flex/varlen variants differ only in
    attention kernels the plugin does not use."""
    from torchtitan.models.llama3 import llama3_args

    return {name: a for name, a in llama3_args.items() if getattr(a, "attn_type", "sdpa") == "sdpa"}


def llama3_model_args(flavor: str):
    """torchtitan's llama3 model args for a flavor name."""
    from torchtitan.models.llama3 import llama3_args

    if flavor not in llama3_args:
        raise ValueError(f"llama3 flavor must be one of {sorted(llama3_args)}, got {flavor!r}")
    return llama3_args[flavor]


def titans_fields_from_llama(base) -> dict:
    """TitansModelArgs fields with a llama3 model's sizes (its TransformerModelArgs)."""
    fields = {f: getattr(base, f) for f in LLAMA_FIELDS if hasattr(base, f)}
    scaling = getattr(base, "rope_scaling_args", None)
    if scaling is not None:
        fields["rope_scaling"] = RopeScaling(**dataclasses.asdict(scaling))
    return fields


def hf_state_dict_adapter(model_args):
    """torchtitan's llama3 Hugging Face adapter (its names and q/k permutation)."""
    from torchtitan.models.llama3.model.state_dict_adapter import Llama3StateDictAdapter

    return Llama3StateDictAdapter(model_args, None)
