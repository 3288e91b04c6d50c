"""torchtitan 0.3.0's trainer with a `titans` section: `--titans.pattern GA` and every other
`[titans]` field on the command line (the model config reads them in update_from_config).

`hf_assets_path = "builtin"` (or `--hf_assets_path builtin`) selects the tokenizer shipped
with the plugin, as on 0.2.2."""

from dataclasses import dataclass, field

from torchtitan.trainer import Trainer

from titans_plugin.config import TitansConfig
from titans_plugin.training.datasets import BUILTIN_TOKENIZER, TOKENIZER_DIR

from .metrics import TitansMetricsProcessor


class TitansTrainer(Trainer):
    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        titans: TitansConfig = field(default_factory=TitansConfig)
        metrics: TitansMetricsProcessor.Config = field(default_factory=TitansMetricsProcessor.Config)

        def __post_init__(self):
            Trainer.Config.__post_init__(self)
            if self.hf_assets_path == BUILTIN_TOKENIZER:
                self.hf_assets_path = TOKENIZER_DIR
