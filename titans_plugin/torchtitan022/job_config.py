"""`[job] custom_config_module = "titans_plugin.torchtitan022.job_config"` adds the [titans]
TOML section (and --titans.* command-line overrides) to torchtitan's JobConfig."""

from dataclasses import dataclass, field

from titans_plugin.config import TitansConfig


@dataclass
class JobConfig:
    titans: TitansConfig = field(default_factory=TitansConfig)
