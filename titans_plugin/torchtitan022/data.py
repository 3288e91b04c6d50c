"""torchtitan 0.2.2's dataset table, dataloader and tokenizer, with the plugin's datasets
(titans_plugin/training/datasets.py). `model.hf_assets_path = "builtin"` selects the
tokenizer shipped with the plugin."""

from torchtitan.components.tokenizer import HuggingFaceTokenizer
from torchtitan.hf_datasets import DatasetConfig, text_datasets
from torchtitan.hf_datasets.text_datasets import build_text_dataloader

from titans_plugin.training import datasets
from titans_plugin.training.datasets import DATASETS, tokenizer_dir


def register_datasets() -> None:
    for name, d in DATASETS.items():
        text_datasets.DATASETS.setdefault(name, DatasetConfig(d.path, d.loader, d.text))


def check_dataset(job_config) -> None:
    """Clear errors, naming the TOML field, before any data is read."""
    t = job_config.training
    datasets.check_dataset(
        t.dataset, t.dataset_path, text_datasets.DATASETS, "training.dataset", "training.dataset_path"
    )


def build_dataloader(dp_world_size, dp_rank, tokenizer, job_config, infinite: bool = True):
    check_dataset(job_config)
    return build_text_dataloader(dp_world_size, dp_rank, tokenizer, job_config, infinite)


def build_tokenizer(job_config):
    return HuggingFaceTokenizer(tokenizer_dir(job_config.model.hf_assets_path, "model.hf_assets_path"))


def tokenizer(path: str):
    """torchtitan's tokenizer for a folder with tokenizer.json."""
    return HuggingFaceTokenizer(path)
