"""torchtitan 0.3.0 config -> model outside torchrun: the steps the trainer takes before its
first step, for tools (evaluations, upcycling) and tests that need the model a config
describes, built exactly as training builds it.

    config = load_job_config("titans_plugin:titans_debug_mac", "--titans.pattern", "GA")
    model = build_model(train_args(config))
    load_dcp_checkpoint(model, "outputs/debug_mac/checkpoint/step-400")
"""

import copy

from titans_plugin.training.build import build_model, load_dcp_checkpoint

__all__ = ["build_model", "load_dcp_checkpoint", "load_job_config", "seq_len_of", "tokenizer_of", "train_args"]


def load_job_config(config: str, *overrides: str):
    """`MODULE:FUNCTION` (as `--module MODULE --config FUNCTION`) plus command-line
    overrides, parsed as `torchtitan.train` parses them."""
    from torchtitan.config import ConfigManager

    module, sep, function = config.partition(":")
    if not sep or not module or not function:
        raise ValueError(
            f"a torchtitan 0.3 config is named MODULE:FUNCTION (titans_plugin:titans_debug_mac), got {config!r}"
        )
    return ConfigManager().parse_args(["--module", module, "--config", function, *overrides])


def train_args(config):
    """The model arguments the trainer would build: the config's model, updated (and
    validated) from its titans, training and parallelism sections."""
    spec = config.model_spec
    if spec is None or not hasattr(spec.model, "args"):
        name = None if spec is None else spec.name
        raise ValueError(f"the config's model_spec must be a Titans model, got {name!r}")
    model_config = copy.deepcopy(spec.model)
    model_config.update_from_config(config=config)
    return model_config.args


def tokenizer_of(config):
    """The tokenizer training uses (`hf_assets_path`; "builtin": the shipped one)."""
    from titans_plugin.training.datasets import tokenizer_dir

    from .data import tokenizer

    return tokenizer(tokenizer_dir(config.hf_assets_path, "hf_assets_path"))


def seq_len_of(config) -> int:
    return config.training.seq_len
