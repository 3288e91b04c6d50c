"""torchtitan 0.3.0's entry module for Titans models:

    torchrun --nproc_per_node N -m torchtitan.train --module titans_plugin --config titans_debug_mac

torchtitan imports `titans_plugin.config_registry` for `--module titans_plugin` and calls
the named function. One function per shipped TOML (train_configs/), each training what that
TOML trains on 0.2.2; `--titans.<field>` overrides any `[titans]` field. Importing this
module registers the plugin's datasets and, without an accelerator, the CPU support."""

from titans_plugin.torchtitan030.configs import hybridize
from titans_plugin.torchtitan030.configs import titans_config as _from_toml
from titans_plugin.torchtitan030.trainer import TitansTrainer

__all__ = ["hybridize"]


def titans_debug_mac() -> TitansTrainer.Config:
    """The main job: a small MAC hybrid on CPU on the embedded corpus."""
    return _from_toml("debug_mac.toml")


def titans_debug_mag() -> TitansTrainer.Config:
    return _from_toml("debug_mag.toml")


def titans_debug_mal() -> TitansTrainer.Config:
    return _from_toml("debug_mal.toml")


def titans_debug_lmm() -> TitansTrainer.Config:
    return _from_toml("debug_lmm.toml")


def titans_debug_attention() -> TitansTrainer.Config:
    """The Transformer baseline at the debug size."""
    return _from_toml("debug_attention.toml")


def titans_debug_swa() -> TitansTrainer.Config:
    """The sliding-window baseline at the debug size."""
    return _from_toml("debug_swa.toml")


def titans_paper_170m_mac() -> TitansTrainer.Config:
    return _from_toml("paper_170m_mac.toml")


def titans_paper_340m_mac() -> TitansTrainer.Config:
    return _from_toml("paper_340m_mac.toml")


def titans_paper_400m_mac() -> TitansTrainer.Config:
    return _from_toml("paper_400m_mac.toml")


def titans_paper_760m_mac() -> TitansTrainer.Config:
    return _from_toml("paper_760m_mac.toml")


def titans_llama3_8b_mag() -> TitansTrainer.Config:
    """torchtitan's llama3 8B sizes as a MAG hybrid (converted from its 0.2.2 TOML)."""
    return _from_toml("llama3_8b_titans_mag.toml")
