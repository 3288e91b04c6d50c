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


class DcpCheckpoint:
    kind = "torchtitan DCP"

    def __init__(self, path: str):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = path
        metadata = dcp.FileSystemReader(path).read_metadata()
        # A step folder also holds optimizer, scheduler and dataloader state under their
        # own prefixes; the model's weights are the tensors named like parameters.
        self.shapes = {
            k: tuple(m.size)
            for k, m in metadata.state_dict_metadata.items()
            if isinstance(m, TensorStorageMetadata) and not k.startswith(("optimizer.", "lr_scheduler."))
        }

    def load(self, targets: dict) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.load(targets, checkpoint_id=self.path)


class HuggingFaceCheckpoint:
    kind = "Hugging Face safetensors"

    def __init__(self, path: str, model_args):
        from torch.distributed.checkpoint import HuggingFaceStorageReader
        from torchtitan.models.llama3.model.state_dict_adapter import Llama3StateDictAdapter

        self.path = path
        self.adapter = Llama3StateDictAdapter(model_args, None)  # only its names and q/k permutation
        self.reader = HuggingFaceStorageReader
        metadata = HuggingFaceStorageReader(path).read_metadata()
        self.shapes = {}
        for hf_name, m in metadata.state_dict_metadata.items():
            name = self._our_name(hf_name)
            if name is not None:  # rotary inv_freq: recomputed, not a weight
                self.shapes[name] = tuple(m.size)
        # Llama 3.2 1B/3B tie the output projection to the embedding and store it once;
        # torchtitan's llama3 keeps two matrices, so the output starts as a copy.
        self.tied = "output.weight" not in self.shapes and _config(path).get("tie_word_embeddings", False)
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
        and the adapter's inverse brings it back into ours."""
        import torch.distributed.checkpoint as dcp

        if self.tied and "output.weight" in targets:
            targets = dict(targets)
            dcp.load({"model.embed_tokens.weight": targets.pop("output.weight")}, storage_reader=self.reader(self.path))
            if not targets:
                return
        in_hf_order = self.adapter.to_hf(targets)
        dcp.load(in_hf_order, storage_reader=self.reader(self.path))
        with torch.no_grad():
            for name, value in self.adapter.from_hf(in_hf_order).items():
                if value is not targets[name]:
                    targets[name].copy_(value)


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
