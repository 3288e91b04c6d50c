"""The datasets and the tokenizer the plugin brings, for either torchtitan version.

  titans_stories / titans_stories_validation   the embedded corpus (no network)
  fineweb_edu                                   HuggingFaceFW/fineweb-edu sample-10BT (streaming)

Each adapter puts DATASETS into its torchtitan's dataset table (name -> path, loader,
text of a sample; the same three in 0.2.2 and 0.3.0)."""

import os
from functools import partial
from typing import NamedTuple

from titans_plugin.data.paths import CORPUS_FILE, TOKENIZER_DIR

BUILTIN_TOKENIZER = "builtin"  # 0.2.2's model.hf_assets_path value for the shipped tokenizer


def _load_stories(path: str, split: str):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=path, split="train")
    return ds.filter(lambda row: row["split"] == split)


def _load_fineweb_edu(path: str):
    from datasets import load_dataset

    return load_dataset(path, name="sample-10BT", split="train", streaming=True)


def _text(sample) -> str:
    return sample["text"]


class Dataset(NamedTuple):
    path: str
    loader: object
    text: object


DATASETS = {
    "titans_stories": Dataset(CORPUS_FILE, partial(_load_stories, split="train"), _text),
    "titans_stories_validation": Dataset(CORPUS_FILE, partial(_load_stories, split="validation"), _text),
    "fineweb_edu": Dataset("HuggingFaceFW/fineweb-edu", _load_fineweb_edu, _text),
}


def _is_hub_id(path: str) -> bool:
    """'org/name' is a Hugging Face dataset id; anything else is a local path."""
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~"))


def check_dataset(name: str, path: str | None, known, field: str, path_field: str) -> None:
    """Clear errors, naming the config field, before any data is read."""
    if name not in known:
        raise ValueError(f"{field} must be one of {sorted(known)}, got {name!r}")
    check_dataset_path(path, path_field)


def check_dataset_path(path: str | None, field: str) -> None:
    if path and not _is_hub_id(path) and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"{field}={path!r} does not exist")


def tokenizer_dir(path: str | None, field: str) -> str:
    """The tokenizer folder: the shipped one for "builtin" or nothing, else `path`."""
    if path in (BUILTIN_TOKENIZER, "", None):
        return TOKENIZER_DIR
    if not os.path.isdir(path):
        raise ValueError(
            f'{field}={path!r} is not a directory; use "{BUILTIN_TOKENIZER}" for the tokenizer shipped with '
            "titans_plugin, or a folder with tokenizer.json"
        )
    return path
