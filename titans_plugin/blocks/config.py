"""Per-block configuration. Model-wide sizes (width, heads, FFN) come from the model args
the block is built with; these hold only what a block type adds."""

import dataclasses
from dataclasses import dataclass, field

from titans_plugin.memory import MemoryConfig


def check_positive(prefix: str, name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{prefix}.{name} must be an integer >= 1{extra}, got {value!r}")


def check_non_negative(prefix: str, name: str, value) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{prefix}.{name} must be an integer >= 0, got {value!r}")


@dataclass
class AttentionBlockConfig:
    window: int | None = None  # None: full causal attention
    n_persistent: int = 0

    def validate(self, prefix: str = "attention") -> None:
        check_positive(prefix, "window", self.window, allow_none=True)
        check_non_negative(prefix, "n_persistent", self.n_persistent)


@dataclass
class MACConfig:
    segment_len: int = 128  # attention is full causal inside a segment, memory across
    n_persistent: int = 4
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def validate(self, prefix: str = "mac") -> None:
        check_positive(prefix, "segment_len", self.segment_len)
        check_non_negative(prefix, "n_persistent", self.n_persistent)
        self.memory.validate(f"{prefix}.memory")


@dataclass
class MAGConfig:
    window: int = 128
    n_persistent: int = 4
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def validate(self, prefix: str = "mag") -> None:
        check_positive(prefix, "window", self.window)
        check_non_negative(prefix, "n_persistent", self.n_persistent)
        self.memory.validate(f"{prefix}.memory")


@dataclass
class MALConfig:
    window: int = 128
    n_persistent: int = 4  # prepended to the memory's input, as in the paper
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def validate(self, prefix: str = "mal") -> None:
        check_positive(prefix, "window", self.window)
        check_non_negative(prefix, "n_persistent", self.n_persistent)
        self.memory.validate(f"{prefix}.memory")


@dataclass
class LMMConfig:
    n_persistent: int = 0  # optional prefix for the memory's input
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def validate(self, prefix: str = "lmm") -> None:
        check_non_negative(prefix, "n_persistent", self.n_persistent)
        self.memory.validate(f"{prefix}.memory")


def with_memory_dim(config, dim: int):
    """A copy of a block config whose memory reads and writes the model width."""
    if not hasattr(config, "memory"):
        return config
    return dataclasses.replace(config, memory=dataclasses.replace(config.memory, dim=dim))
