"""torchtitan 0.3.0's dataset table and tokenizer, with the plugin's datasets
(titans_plugin/training/datasets.py). `hf_assets_path = "builtin"` selects the tokenizer
shipped with the plugin (TitansTrainer.Config)."""

from torchtitan.components.tokenizer import HuggingFaceTokenizer
from torchtitan.hf_datasets import DatasetConfig, text_datasets

from titans_plugin.training.datasets import DATASETS


def register_datasets() -> None:
    for name, d in DATASETS.items():
        text_datasets.DATASETS.setdefault(name, DatasetConfig(d.path, d.loader, d.text))


def tokenizer(path: str):
    """torchtitan's tokenizer for a folder with tokenizer.json."""
    return HuggingFaceTokenizer.Config().build(tokenizer_path=path)
