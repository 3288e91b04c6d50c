"""TitansConfig: the model-wide Titans settings (the [titans] TOML section), and the one
place they are validated.

Flat on purpose: a TOML section maps field for field. `validate` runs where a
configuration enters (torchtitan's update_from_config, the converter, the Python
builders) and names the TOML field and its allowed values; the blocks and the memory
below it trust what they are given."""

from dataclasses import dataclass, field

from titans_plugin.blocks import BLOCK_TYPES
from titans_plugin.memory import ACTIVATIONS, BACKENDS, GATE_MODES, TRITON_DEPTHS, MemoryConfig
from titans_plugin.spec import parse_layer_spec

ATTN_MASK_TYPES = ("causal", "block_causal")
CP_SCANS = ("serial", "parallel")


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
    lr_init: float = 0.1  # inner learning rate at initialisation, fraction of max_lr
    forget_init: float = 0.01  # forgetting at initialisation, fraction of max_forget
    memory_out_init: str = "normal"  # "zero": memory output projection starts at zero
    gate_mode: str = "token"
    kernel: str = "auto"  # auto (triton on CUDA, chunk elsewhere), chunk, triton, naive
    # attention around the memory
    segment_len: int = 128  # MAC
    window: int = 128  # MAG, MAL and W layers
    n_persistent: int = 4
    # what MAC's memory stores: "residual" = the block's (normed) input plus the attention
    # output, "attention" = the attention output alone (the paper's equation, literally)
    mac_memory_input: str = "residual"
    # MAL's layout: "stacked" = memory sub-layer then sliding-window sub-layer, each with its
    # own pre-norm residual; "fused" = SW-Attn(memory(x)) inside one residual
    mal_form: str = "stacked"
    # "causal": one sequence per row. "block_causal": rows pack documents that end with
    # EOS; every layer (attention masks, memory state and chunk grid, MAC segments)
    # treats each document as if it were alone (torchtitan llama3's mask type of that name)
    attn_mask_type: str = "causal"
    # context parallel: how a shard's memory scan continues from the shard before it.
    # "serial": waits for its end state (any memory). "parallel": scans from zero and adds
    # the start state when it arrives (exact for a linear memory, memory_depth = 1, without
    # the inner-gradient clip, max_grad_norm = 0; LMM and MAG layers; blocks/sharded_memory.py)
    cp_scan: str = "serial"

    def layer_types(self, n_layers: int) -> list[str]:
        if self.layers:
            return parse_layer_spec(self.layers, n_layers, field="titans.layers")
        return parse_layer_spec(self.pattern, n_layers, field="titans.pattern")

    def uses_memory(self, n_layers: int) -> bool:
        return any(BLOCK_TYPES[letter].has_memory for letter in self.layer_types(n_layers))

    def memory_config(self, dim: int) -> MemoryConfig:
        return MemoryConfig(
            dim=dim,
            n_heads=self.memory_heads,
            head_dim=self.memory_head_dim or None,
            depth=self.memory_depth,
            expansion=self.memory_expansion,
            activation=self.memory_activation,
            chunk_size=self.chunk_size,
            conv_kernel=self.conv_kernel,
            max_lr=self.max_lr,
            max_momentum=self.max_momentum,
            max_forget=self.max_forget,
            max_grad_norm=self.max_grad_norm,
            lr_init=self.lr_init,
            forget_init=self.forget_init,
            out_init=self.memory_out_init,
            gate_mode=self.gate_mode,
            backend=self.kernel,
        )

    def validate(self, dim: int, n_layers: int, seq_len: int | None = None) -> None:
        """Every check that can run before a model is built, naming the TOML field. Only
        the fields the chosen block types read are checked (blocks' config_fields)."""
        blocks = [BLOCK_TYPES[letter] for letter in set(self.layer_types(n_layers))]
        _one_of(self, "attn_mask_type", list(ATTN_MASK_TYPES))
        if any(b.has_memory for b in blocks):
            self._validate_memory(dim)
        used = {name for b in blocks for name in b.config_fields}
        for name in sorted(used):
            _BLOCK_FIELDS[name](self, seq_len)

    def _validate_memory(self, dim: int) -> None:
        _integer(self, "memory_heads", 1)
        _integer(self, "memory_head_dim", 0, "(0 = model.dim // memory_heads)")
        if not self.memory_head_dim and dim % self.memory_heads:
            _fail("memory_heads", f"a divisor of model.dim={dim} (or set titans.memory_head_dim)", self.memory_heads)
        _integer(self, "memory_depth", 1, "(1 = linear memory)")
        _check(self, "memory_expansion", self.memory_expansion > 0, "a number > 0")
        _one_of(self, "memory_activation", sorted(ACTIVATIONS))
        _integer(self, "chunk_size", 1)
        _integer(self, "conv_kernel", 0, "(0 = no convolution)")
        _check(self, "max_lr", self.max_lr > 0, "a number > 0")
        _check(self, "max_momentum", 0 < self.max_momentum <= 1, "in (0, 1]")
        _check(self, "max_forget", 0 < self.max_forget <= 1, "in (0, 1]")
        _check(self, "max_grad_norm", self.max_grad_norm >= 0, "a number >= 0 (0 = no clipping)")
        _check(self, "lr_init", 0 < self.lr_init < 1, "in (0, 1) (a fraction of titans.max_lr)")
        _check(self, "forget_init", 0 < self.forget_init < 1, "in (0, 1) (a fraction of titans.max_forget)")
        _one_of(self, "memory_out_init", ["normal", "zero"])
        _one_of(self, "gate_mode", list(GATE_MODES))
        _one_of(self, "kernel", list(BACKENDS))
        if self.kernel == "triton" and self.memory_depth not in TRITON_DEPTHS:
            _fail("memory_depth", f"one of {list(TRITON_DEPTHS)} with titans.kernel='triton'", self.memory_depth)
        _one_of(self, "cp_scan", list(CP_SCANS))
        if self.cp_scan == "parallel":  # the scan is affine in its start state only then
            _check(self, "memory_depth", self.memory_depth == 1, "1 with titans.cp_scan='parallel' (a linear memory)")
            _check(self, "max_grad_norm", self.max_grad_norm == 0, "0 with titans.cp_scan='parallel' (no clip)")


def _fail(name: str, allowed: str, value) -> None:
    raise ValueError(f"titans.{name} must be {allowed}, got {value!r}")


def _check(config: TitansConfig, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        _fail(name, allowed, getattr(config, name))


def _integer(config: TitansConfig, name: str, minimum: int, note: str = "") -> None:
    value = getattr(config, name)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    _check(config, name, ok, f"an integer >= {minimum}" + (f" {note}" if note else ""))


def _one_of(config: TitansConfig, name: str, allowed: list) -> None:
    _check(config, name, getattr(config, name) in allowed, f"one of {allowed}")


def _span(name: str):
    """A length that must fit in a training sequence (segment_len, window)."""

    def check(config: TitansConfig, seq_len: int | None) -> None:
        _integer(config, name, 1)
        value = getattr(config, name)
        if seq_len is not None and value > seq_len:
            raise ValueError(f"titans.{name}={value} must be <= training.seq_len={seq_len}")

    return check


def _count(name: str):
    def check(config: TitansConfig, seq_len: int | None) -> None:
        _integer(config, name, 0)

    return check


def _choice(name: str, allowed: tuple[str, ...]):
    def check(config: TitansConfig, seq_len: int | None) -> None:
        _one_of(config, name, list(allowed))

    return check


# How each block-type field (TitansBlockBase.config_fields) is checked.
_BLOCK_FIELDS = {
    "segment_len": _span("segment_len"),
    "window": _span("window"),
    "n_persistent": _count("n_persistent"),
    "mac_memory_input": _choice("mac_memory_input", ("residual", "attention")),
    "mal_form": _choice("mal_form", ("stacked", "fused")),
}
