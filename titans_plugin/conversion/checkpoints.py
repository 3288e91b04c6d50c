"""A trained Transformer's weights on disk, read by name in torchtitan's llama3 naming.

Two formats, told apart by what the folder holds:

- a torchtitan DCP step folder (`.metadata`): names are already llama3's (ours too);
- a Hugging Face Llama folder (`*.safetensors`, sharded or not): names and the q/k row
  order are translated by torchtitan's own llama3 state-dict adapter, the one torchtitan
  uses for `checkpoint.initial_load_in_hf`.

Both read through DCP into whatever tensors they are given, so FSDP-sharded targets read
only their shard of each tensor (safetensors slices for Hugging Face): a process never
holds a whole 8B checkpoint.
"""

import glob
import json
import os
import re

import torch

from titans_plugin.training.llama3_names import titans_name
from titans_plugin.utils.dtensor import copy_whole

from . import stack


class DcpCheckpoint:
    kind = "torchtitan DCP"

    def __init__(self, path: str):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = path
        metadata = dcp.FileSystemReader(path).read_metadata()
        # A step folder also holds optimizer, scheduler and dataloader state under their
        # own prefixes; the model's weights are the tensors named like parameters, in
        # either torchtitan version's llama3 names (kept: our name -> the checkpoint's).
        weights = {
            k: tuple(m.size)
            for k, m in metadata.state_dict_metadata.items()
            if isinstance(m, TensorStorageMetadata) and not k.startswith(("optimizer.", "lr_scheduler."))
        }
        self.stored_name = {titans_name(k): k for k in weights}
        self.shapes = {ours: weights[theirs] for ours, theirs in self.stored_name.items()}

    def load(self, targets: dict) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.load({self.stored_name[k]: v for k, v in targets.items()}, checkpoint_id=self.path)


class HuggingFaceCheckpoint:
    kind = "Hugging Face safetensors"

    def __init__(self, path: str, model_args):
        from torch.distributed.checkpoint import HuggingFaceStorageReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = path
        self.config = _config(path)
        self._check_sizes(model_args)
        # the installed torchtitan's llama3 adapter: only its names and q/k permutation
        self.adapter = stack.adapter("llama3").hf_state_dict_adapter(model_args)
        self.reader = HuggingFaceStorageReader
        metadata = HuggingFaceStorageReader(path).read_metadata()
        self.shapes = {}
        for hf_name, m in metadata.state_dict_metadata.items():
            if not isinstance(m, TensorStorageMetadata):
                continue
            name = self._our_name(hf_name)
            if name is not None:  # rotary inv_freq: recomputed, not a weight
                self.shapes[name] = tuple(m.size)
        # Llama 3.2 1B/3B tie the output projection to the embedding and store it once;
        # torchtitan's llama3 keeps two matrices, so the output starts as a copy.
        self.tied = "output.weight" not in self.shapes and self.config.get("tie_word_embeddings", False)
        if self.tied and "tok_embeddings.weight" in self.shapes:
            self.shapes["output.weight"] = self.shapes["tok_embeddings.weight"]

    def _our_name(self, hf_name: str) -> str | None:
        pattern = re.sub(r"(\d+)", "{}", hf_name, count=1) if "layers" in hf_name else hf_name
        if pattern not in self.adapter.from_hf_map:
            raise ValueError(
                f"{self.path}: {hf_name} is not a Llama weight; torchtitan's llama3 adapter reads "
                f"{', '.join(sorted(self.adapter.from_hf_map))}"
            )
        name = self.adapter.from_hf_map[pattern]
        return None if name is None else name.format(*re.findall(r"\d+", hf_name)[:1])

    def load(self, targets: dict) -> None:
        """Read into `targets` (our names) in place. Hugging Face stores wq/wk rows in its
        rotate-half order: the adapter permutes a copy of each to that order, DCP fills it,
        and the adapter's inverse brings it back into ours. The permutation splits rows by
        head, which an FSDP shard need not hold whole (8 KV heads over 16 processes), so
        wq and wk are read whole, one layer at a time, and each process keeps its shard."""
        import torch.distributed.checkpoint as dcp

        if self.tied and "output.weight" in targets:
            targets = dict(targets)
            dcp.load({"model.embed_tokens.weight": targets.pop("output.weight")}, storage_reader=self.reader(self.path))
            if not targets:
                return
        whole = {
            name: torch.empty(t.shape, dtype=t.dtype, device=t.device)
            for name, t in targets.items()
            if name.endswith(PERMUTED)
        }
        in_hf_order = self.adapter.to_hf({**targets, **whole})
        dcp.load(in_hf_order, storage_reader=self.reader(self.path))
        with torch.no_grad():
            for name, value in self.adapter.from_hf(in_hf_order).items():
                target = targets[name]
                if value is not target:  # else read in place
                    copy_whole(target, value)

    def _check_sizes(self, model_args) -> None:
        """config.json against the model's sizes, before any tensor is read: a flavor with
        other RoPE settings or norm epsilon would load every weight and compute something
        else."""
        config = self.config
        scaling = config.get("rope_scaling") or None
        expected = {
            "hidden_size": ("dim", model_args.dim),
            "num_hidden_layers": ("n_layers", model_args.n_layers),
            "num_attention_heads": ("n_heads", model_args.n_heads),
            "num_key_value_heads": ("n_kv_heads", model_args.n_kv_heads or model_args.n_heads),
            "vocab_size": ("vocab_size", model_args.vocab_size),
            "rope_theta": ("rope_theta", model_args.rope_theta),
            "rms_norm_eps": ("norm_eps", model_args.norm_eps),
        }
        for key, (field, ours) in expected.items():
            if key in config and config[key] != ours:
                raise ValueError(
                    f"{self.path}/config.json has {key}={config[key]} and the hybrid's model.flavor has "
                    f"{field}={ours}: choose the flavor with the checkpoint's sizes"
                )
        ours = model_args.rope_scaling
        if "rope_scaling" in config and (scaling is None) != (ours is None):
            raise ValueError(
                f"{self.path}/config.json has rope_scaling={scaling} and the hybrid's model.flavor "
                f"{'has' if ours else 'has no'} RoPE scaling ({ours}): choose the flavor that matches"
            )
        if scaling is not None and ours is not None and scaling.get("factor") != ours.scaling_factor:
            raise ValueError(
                f"{self.path}/config.json has rope_scaling.factor={scaling.get('factor')} and the hybrid's "
                f"model.flavor has scaling_factor={ours.scaling_factor}"
            )


PERMUTED = ("attention.wq.weight", "attention.wk.weight")  # rows in rotate-half order on the Hub


def _config(path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def open_checkpoint(path: str, model_args) -> DcpCheckpoint | HuggingFaceCheckpoint:
    """The checkpoint in `path`, by its format; a clear error if it is neither."""
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint folder {path!r} does not exist")
    if os.path.exists(os.path.join(path, ".metadata")):
        return DcpCheckpoint(path)
    if glob.glob(os.path.join(path, "*.safetensors")):
        return HuggingFaceCheckpoint(path, model_args)
    raise ValueError(
        f"{path!r} is neither a torchtitan DCP step folder (no .metadata) nor a Hugging Face "
        "Llama folder (no *.safetensors)"
    )
