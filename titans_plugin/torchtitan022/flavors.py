"""torchtitan 0.2.2's flavor table for model "titans": the plugin's sizes
(training/flavors.py) and every torchtitan llama3 sdpa flavor as `llama3_<name>`."""

from titans_plugin.training.flavors import TITANS_SIZES

from .args import TitansTrainArgs
from .llama3 import llama3_flavors, titans_fields_from_llama


def _flavors() -> dict[str, TitansTrainArgs]:
    flavors = {name: TitansTrainArgs(**sizes) for name, sizes in TITANS_SIZES.items()}
    for name, base in llama3_flavors().items():
        flavors[f"llama3_{name}"] = TitansTrainArgs(**titans_fields_from_llama(base))
    return flavors


TITANS_FLAVORS = _flavors()
