"""Turning Transformers into Titans hybrids.

- `build_hybrid_model(base, spec)`: a new TitansTransformer with a llama3 model's sizes.
- `swap_layers(model, spec)`: replace chosen layers of an already-built model in place.

The contract a model must meet for `swap_layers` (torchtitan's llama3 Transformer meets it):
  * `model.layers` is an nn.ModuleDict keyed "0" .. "n_layers-1";
  * `model.model_args` has llama3's fields: dim, n_layers, n_heads, n_kv_heads,
    multiple_of, ffn_dim_multiplier, norm_eps (and optionally depth_init);
  * layers are called as `layer(h, freqs_cis, attention_masks=..., positions=...)` with
    `freqs_cis` a complex RoPE table [max_seq_len, head_dim/2] (attention_masks and
    positions None: sdpa with causal masks);
  * the model's `init_weights` calls each layer's `init_weights()`.
Untouched layers are not rebuilt, moved or re-initialised: their weights stay bit-identical.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from titans_plugin.config import TitansConfig, apply_overrides, parse_layer_spec
from titans_plugin.model import TitansModelArgs, TitansTransformer
from titans_plugin.model.layers import build_block

from . import stack


def titans_args_from_llama(base, titans: TitansConfig | None = None) -> TitansModelArgs:
    """TitansModelArgs with a llama3 model's sizes: a flavor name of the installed
    torchtitan's llama3 ("8B"), or 0.2.2's llama3 model args."""
    llama3 = stack.adapter("llama3")
    if isinstance(base, str):
        base = llama3.llama3_model_args(base)
    return TitansModelArgs(**llama3.titans_fields_from_llama(base), titans=titans or TitansConfig())


def build_hybrid_model(base, spec: str | Sequence[str], titans: TitansConfig | None = None) -> TitansTransformer:
    titans = dataclasses.replace(
        titans or TitansConfig(),
        pattern=spec if isinstance(spec, str) else "C",
        layers=[] if isinstance(spec, str) else list(spec),
    )
    return TitansTransformer(titans_args_from_llama(base, titans))


def _target_layers(n_layers: int, spec) -> dict[int, str]:
    """Which layers to replace: a mapping {index: letter}, or a spec where 'A' means keep."""
    if isinstance(spec, Mapping):
        return dict(enumerate(apply_overrides(["A"] * n_layers, spec)))
    return dict(enumerate(parse_layer_spec(spec, n_layers)))


def swap_layers(model: nn.Module, spec, titans: TitansConfig | None = None, keep_weights: bool = True) -> list[int]:
    """Replace layers in place. `spec`: a pattern string, a per-layer list, or a mapping
    {0-based index: letter}; layers whose letter is 'A' are left untouched. Returns the
    indices replaced. New layers are built on the replaced layer's device and dtype and
    initialised (unless on the meta device, where the model's init_weights will do it).

    keep_weights: every parameter the new block shares with the old one (same name and
    shape: attention wq/wk/wv/wo, feed-forward w1/w2/w3, attention_norm, ffn_norm) is
    copied from it; only what is new (memory, gates, persistent tokens, MAL's
    memory_norm) keeps its fresh initialisation. On the meta device there is nothing to
    copy yet: load the converted checkpoint instead."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleDict):
        raise ValueError("swap_layers needs model.layers to be an nn.ModuleDict keyed '0'..'n-1'")
    args: Any = model.model_args
    titans = titans or TitansConfig()
    targets = _target_layers(len(layers), spec)
    # validate the fields the swapped-in block types read, not those of titans.pattern
    dataclasses.replace(titans, layers=list(targets.values())).validate(args.dim, args.n_layers)
    replaced = []
    for index, letter in targets.items():
        if letter == "A":
            continue
        old = layers[str(index)]
        ref = next(old.parameters())
        with torch.device(ref.device):
            new = build_block(letter, index, args, titans)
        if ref.device.type != "meta":
            new.init_weights()
            if keep_weights:
                copy_shared_weights(old, new)
        layers[str(index)] = new.to(dtype=ref.dtype)
        replaced.append(index)
    return replaced


def shared_weights(old: nn.Module, new: nn.Module) -> list[str]:
    """Names of the parameters and buffers `new` shares with `old`: same name, same shape."""
    theirs = old.state_dict()
    return [k for k, v in new.state_dict().items() if k in theirs and theirs[k].shape == v.shape]


@torch.no_grad()
def copy_shared_weights(old: nn.Module, new: nn.Module) -> list[str]:
    """Copy every shared parameter (shared_weights) from old into new; returns their names."""
    theirs, mine = old.state_dict(), new.state_dict()
    names = shared_weights(old, new)
    for name in names:
        mine[name].copy_(theirs[name])
    return names
