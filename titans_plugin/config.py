"""TitansConfig: the model-wide Titans settings (the [titans] TOML section).

Flat on purpose: a TOML section maps field for field. `block_config(letter)` turns it
into the per-block config dataclasses in blocks/config.py."""

from dataclasses import dataclass, field

from titans_plugin.blocks.config import (
    AttentionBlockConfig, LMMConfig, MACConfig, MAGConfig, MALConfig,
    check_non_negative, check_positive,
)
from titans_plugin.memory import MemoryConfig
from titans_plugin.spec import MEMORY_TYPES, parse_layer_spec


@dataclass
class TitansConfig:
    pattern: str = "C"  # a variant (mac, mag, mal, lmm, attention, swa) or a pattern like "CGA"
    layers: list[str] = field(default_factory=list)  # explicit per-layer letters; overrides pattern
    # neural memory
    memory_heads: int = 4
    memory_head_dim: int = 0  # 0: model dim // memory_heads
    memory_depth: int = 2
    memory_expansion: float = 4.0
    memory_activation: str = "silu"
    chunk_size: int = 64
    conv_kernel: int = 4
    max_lr: float = 0.1
    max_momentum: float = 1.0
    max_forget: float = 1.0
    max_grad_norm: float = 1.0  # per-token inner-gradient clip; 0 = off
    gate_mode: str = "token"
    kernel: str = "auto"  # auto (triton on CUDA, chunk elsewhere), chunk, triton, naive
    # attention around the memory
    segment_len: int = 128  # MAC
    window: int = 128  # MAG, MAL and W layers
    n_persistent: int = 4

    def layer_types(self, n_layers: int) -> list[str]:
        if self.layers:
            return parse_layer_spec(self.layers, n_layers, field="titans.layers")
        return parse_layer_spec(self.pattern, n_layers, field="titans.pattern")

    def memory_config(self, dim: int) -> MemoryConfig:
        return MemoryConfig(
            dim=dim, n_heads=self.memory_heads, head_dim=self.memory_head_dim or None,
            depth=self.memory_depth, expansion=self.memory_expansion,
            activation=self.memory_activation, chunk_size=self.chunk_size,
            conv_kernel=self.conv_kernel, max_lr=self.max_lr, max_momentum=self.max_momentum,
            max_forget=self.max_forget, max_grad_norm=self.max_grad_norm,
            gate_mode=self.gate_mode, backend=self.kernel,
        )

    def block_config(self, letter: str, dim: int):
        if letter == "A":
            return AttentionBlockConfig(window=None, n_persistent=0)
        if letter == "W":
            return AttentionBlockConfig(window=self.window, n_persistent=0)
        memory = self.memory_config(dim)
        if letter == "C":
            return MACConfig(segment_len=self.segment_len, n_persistent=self.n_persistent, memory=memory)
        if letter == "G":
            return MAGConfig(window=self.window, n_persistent=self.n_persistent, memory=memory)
        if letter == "L":
            return MALConfig(window=self.window, n_persistent=self.n_persistent, memory=memory)
        if letter == "M":
            return LMMConfig(n_persistent=0, memory=memory)
        raise ValueError(f"unknown layer type {letter!r}")

    def validate(self, dim: int, n_layers: int, seq_len: int | None = None) -> None:
        """Every check that can run before a model is built, naming the TOML field."""
        letters = set(self.layer_types(n_layers))
        if self.memory_head_dim < 0:
            raise ValueError(
                f"titans.memory_head_dim must be >= 0 (0 = dim // memory_heads), got {self.memory_head_dim}"
            )
        if letters & MEMORY_TYPES:
            self.memory_config(dim).validate(names=_TOML_NAMES)
        check_non_negative("titans", "n_persistent", self.n_persistent)
        if "C" in letters:
            check_positive("titans", "segment_len", self.segment_len)
            if seq_len is not None and self.segment_len > seq_len:
                raise ValueError(f"titans.segment_len={self.segment_len} must be <= training.seq_len={seq_len}")
        if letters & {"G", "L", "W"}:
            check_positive("titans", "window", self.window)
            if seq_len is not None and self.window > seq_len:
                raise ValueError(f"titans.window={self.window} must be <= training.seq_len={seq_len}")

    def uses_memory(self, n_layers: int) -> bool:
        return bool(set(self.layer_types(n_layers)) & MEMORY_TYPES)


# MemoryConfig field -> [titans] key
_TOML_NAMES = {
    "dim": "model.dim", "n_heads": "titans.memory_heads", "head_dim": "titans.memory_head_dim",
    "depth": "titans.memory_depth", "expansion": "titans.memory_expansion",
    "activation": "titans.memory_activation", "chunk_size": "titans.chunk_size",
    "conv_kernel": "titans.conv_kernel", "max_lr": "titans.max_lr",
    "max_momentum": "titans.max_momentum", "max_forget": "titans.max_forget",
    "gate_mode": "titans.gate_mode", "backend": "titans.kernel",
    "max_grad_norm": "titans.max_grad_norm",
}
