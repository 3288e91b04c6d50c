"""torchtitan 0.2.2 TOML -> model outside torchrun: the steps torchtitan's trainer takes before its first
step, for tools (benchmarks, evaluations, probes) and tests that need a model built from a
user's config exactly as training builds it.

    job = load_job_config("train_configs/debug_mac.toml", "--titans.pattern", "GA")
    model = build_model(train_args(job))
    load_dcp_checkpoint(model, "outputs/debug_mac/checkpoint/step-400")
"""

import copy

from titans_plugin.training.build import build_model, load_dcp_checkpoint

__all__ = ["build_model", "load_dcp_checkpoint", "load_job_config", "seq_len_of", "tokenizer_of", "train_args"]


def load_job_config(config_file: str, *overrides: str):
    """Parse a TOML plus command-line overrides as `torchtitan.train` does (the config's
    `[job] custom_config_module` adds the `[titans]` section)."""
    from torchtitan.config import ConfigManager

    return ConfigManager().parse_args(["--job.config_file", config_file, *overrides])


def train_args(job):
    """The model arguments the trainer would build: the flavor's, updated (and validated)
    from the job's [titans], [training] and [parallelism] sections."""
    from torchtitan.protocols.train_spec import get_train_spec

    from . import MODEL_NAME

    flavors = get_train_spec(MODEL_NAME).model_args
    if job.model.flavor not in flavors:
        raise ValueError(f"model.flavor must be one of {sorted(flavors)}, got {job.model.flavor!r}")
    args = copy.deepcopy(flavors[job.model.flavor])
    args.update_from_config(job)
    return args


def tokenizer_of(job):
    """The tokenizer training uses (`model.hf_assets_path`; "builtin": the shipped one)."""
    from .data import build_tokenizer

    return build_tokenizer(job)


def seq_len_of(job) -> int:
    return job.training.seq_len
