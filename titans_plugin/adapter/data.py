"""Datasets and tokenizer for torchtitan.

Registered in torchtitan's dataset table:
  titans_stories / titans_stories_validation   the embedded corpus (no network)
  fineweb_edu                                   HuggingFaceFW/fineweb-edu sample-10BT (streaming)
  (c4 and c4_validation are torchtitan's own)
`model.hf_assets_path = "builtin"` selects the tokenizer shipped with the plugin.
"""

import os
from functools import partial

from torchtitan.components.tokenizer import HuggingFaceTokenizer
from torchtitan.hf_datasets import DatasetConfig, text_datasets
from torchtitan.hf_datasets.text_datasets import build_text_dataloader

from titans_plugin.data.paths import CORPUS_FILE, TOKENIZER_DIR

BUILTIN_TOKENIZER = "builtin"


def _load_stories(path: str, split: str):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=path, split="train")
    return ds.filter(lambda row: row["split"] == split)


def _load_fineweb_edu(path: str):
    from datasets import load_dataset

    return load_dataset(path, name="sample-10BT", split="train", streaming=True)


def _text(sample) -> str:
    return sample["text"]


DATASETS = {
    "titans_stories": DatasetConfig(CORPUS_FILE, partial(_load_stories, split="train"), _text),
    "titans_stories_validation": DatasetConfig(CORPUS_FILE, partial(_load_stories, split="validation"), _text),
    "fineweb_edu": DatasetConfig("HuggingFaceFW/fineweb-edu", _load_fineweb_edu, _text),
}


def register_datasets() -> None:
    for name, cfg in DATASETS.items():
        text_datasets.DATASETS.setdefault(name, cfg)


def _is_hub_id(path: str) -> bool:
    """'org/name' is a Hugging Face dataset id; anything else is a local path."""
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~"))


def check_dataset(job_config) -> None:
    """Clear errors, naming the TOML field, before any data is read."""
    t = job_config.training
    if t.dataset not in text_datasets.DATASETS:
        raise ValueError(f"training.dataset must be one of {sorted(text_datasets.DATASETS)}, got {t.dataset!r}")
    if t.dataset_path and not _is_hub_id(t.dataset_path) and not os.path.exists(os.path.expanduser(t.dataset_path)):
        raise ValueError(f"training.dataset_path={t.dataset_path!r} does not exist")


def build_dataloader(dp_world_size, dp_rank, tokenizer, job_config, infinite: bool = True):
    check_dataset(job_config)
    return build_text_dataloader(dp_world_size, dp_rank, tokenizer, job_config, infinite)


def tokenizer_path(job_config) -> str:
    path = job_config.model.hf_assets_path
    if path in (BUILTIN_TOKENIZER, "", None):
        return TOKENIZER_DIR
    if not os.path.isdir(path):
        raise ValueError(
            f'model.hf_assets_path={path!r} is not a directory; use "{BUILTIN_TOKENIZER}" for the '
            "tokenizer shipped with titans_plugin, or a folder with tokenizer.json"
        )
    return path


def build_tokenizer(job_config):
    return HuggingFaceTokenizer(tokenizer_path(job_config))
