"""A trained model from the config it was trained with and a DCP step folder, on
whichever torchtitan is installed (the config is a 0.2.2 TOML, or a 0.3.0
`MODULE:FUNCTION`)."""

import os
from dataclasses import dataclass
from typing import Any

import torch

from titans_plugin.conversion import stack
from titans_plugin.model import TitansTransformer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Trained:
    model: TitansTransformer  # in eval mode
    tokenizer: Any  # torchtitan's tokenizer: encode(text, add_bos=, add_eos=), decode(ids), bos_id, eos_id
    seq_len: int  # the training length: the piece size for reading long inputs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        """The text's tokens, without BOS or EOS: a tokenizer whose own post-processor adds
        them (torchtitan's `hf_adds_bos` / `hf_adds_eos`) adds them even when asked not to."""
        ids = self.tokenizer.encode(text, add_bos=False, add_eos=False)
        if getattr(self.tokenizer, "hf_adds_bos", False) and ids[:1] == [self.tokenizer.bos_id]:
            ids = ids[1:]
        if getattr(self.tokenizer, "hf_adds_eos", False) and ids[-1:] == [self.tokenizer.eos_id]:
            ids = ids[:-1]
        return ids

    @property
    def prefix_id(self) -> int:
        """What a document starts with in training (BOS, else EOS): the context of its first token."""
        token = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
        if token is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a document with")
        return token


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_trained(
    config: str, checkpoint: str, *, device: str = "cpu", dtype: str = "float32", overrides: tuple[str, ...] = ()
) -> Trained:
    """The model `config` trains, with the weights of `checkpoint` (a step folder such as
    outputs/debug_mac/checkpoint/step-400), on `device` with parameters in `dtype`."""
    if not os.path.isfile(os.path.join(checkpoint, ".metadata")):
        raise ValueError(
            f"checkpoint={checkpoint!r} is not a torchtitan DCP step folder (no .metadata): "
            "name one such as outputs/<job>/checkpoint/step-<N>"
        )
    build = stack.adapter("build")
    job = build.load_job_config(config, *overrides)
    model = build.build_model(build.train_args(job))
    build.load_dcp_checkpoint(model, checkpoint)
    for param in model.parameters():  # parameters only: the RoPE table stays complex
        param.data = param.data.to(dtype_of(dtype))
    model.to(device).eval()
    return Trained(model, build.tokenizer_of(job), build.seq_len_of(job))
