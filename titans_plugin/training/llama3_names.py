"""torchtitan llama3 parameter names in the Titans model.

The Titans model keeps torchtitan 0.2.2's llama3 names (a 0.2.2 llama3 checkpoint's names
are already ours). torchtitan 0.3.0 renamed two:

    layers.{i}.attention.qkv_linear.w{q,k,v}.weight  ->  layers.{i}.attention.w{q,k,v}.weight
    lm_head.weight                                   ->  output.weight

Pure string mapping, so a checkpoint of either version reads without torchtitan installed."""

import re

_QKV_030 = re.compile(r"^layers\.(\d+)\.attention\.qkv_linear\.(w[qkv])\.weight$")
_QKV_OURS = re.compile(r"^layers\.(\d+)\.attention\.(w[qkv])\.weight$")


def titans_name(name: str) -> str:
    """A llama3 parameter's name (either version) in the Titans model."""
    if _QKV_030.match(name):
        return _QKV_030.sub(r"layers.\1.attention.\2.weight", name)
    return "output.weight" if name == "lm_head.weight" else name


def llama3_030_name(name: str) -> str:
    """A Titans (0.2.2 llama3) parameter's name in torchtitan 0.3.0's llama3."""
    if _QKV_OURS.match(name):
        return _QKV_OURS.sub(r"layers.\1.attention.qkv_linear.\2.weight", name)
    return "lm_head.weight" if name == "output.weight" else name
