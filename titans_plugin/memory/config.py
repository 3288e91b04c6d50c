"""Configuration of one neural long-term memory (paper section 3.1)."""

from dataclasses import dataclass

from titans_plugin.kernels import ACTIVATIONS
from titans_plugin.kernels.dispatch import BACKENDS
from titans_plugin.kernels.triton_op import SUPPORTED_DEPTHS

GATE_MODES = ("token", "chunk")


@dataclass
class MemoryConfig:
    """Every field has a default that runs on CPU. `dim` is the model width the memory
    reads from and writes back to; it is filled in by the block that owns the memory."""

    dim: int = 256
    n_heads: int = 4
    head_dim: int | None = None  # None: dim // n_heads (never the full width by accident)
    depth: int = 2  # layers of the memory MLP; 1 is a linear (matrix) memory
    expansion: float = 4.0  # hidden width of a deep memory = expansion * head_dim
    activation: str = "silu"
    chunk_size: int = 64  # tokens whose inner gradients share the chunk-start weights
    conv_kernel: int = 4  # depthwise causal conv after q/k/v projections; 0 turns it off
    max_lr: float = 0.1  # theta_t in (0, max_lr): the inner learning rate
    max_momentum: float = 1.0  # eta_t in (0, max_momentum]
    max_forget: float = 1.0  # alpha_t in (0, max_forget]
    # Per-token clip of the inner gradient (all layers, per head); 0 = off. On by default:
    # chunked updates with correlated keys and momentum near 1 overshoot (docs/memory.md).
    max_grad_norm: float = 1.0
    gate_mode: str = "token"  # "chunk": each chunk uses the gates of its first token
    backend: str = "auto"  # auto = triton on CUDA, chunk elsewhere; chunk/triton force one; naive = per-token reference

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        return max(1, int(round(self.expansion * self.resolved_head_dim)))

    def layer_dims(self) -> list[tuple[int, int]]:
        """(D_in, D_out) of each memory layer."""
        d, h = self.resolved_head_dim, self.hidden_dim
        if self.depth == 1:
            return [(d, d)]
        return [(d, h)] + [(h, h)] * (self.depth - 2) + [(h, d)]

    def validate(self, prefix: str = "memory", names: dict[str, str] | None = None) -> None:
        """Raise ValueError naming the field and the allowed values. `names` maps a field
        to the name the user wrote it under (e.g. a TOML key), default prefix.field."""

        def bad(field: str, allowed: str, value) -> ValueError:
            label = (names or {}).get(field, f"{prefix}.{field}")
            return ValueError(f"{label} must be {allowed}, got {value!r}")

        if self.dim < 1:
            raise bad("dim", "an integer >= 1", self.dim)
        if self.n_heads < 1:
            raise bad("n_heads", "an integer >= 1", self.n_heads)
        if self.head_dim is None and self.dim % self.n_heads != 0:
            raise bad("n_heads", f"a divisor of the width dim={self.dim} (or set head_dim)", self.n_heads)
        if self.head_dim is not None and self.head_dim < 1:
            raise bad("head_dim", "an integer >= 1 or None", self.head_dim)
        if self.depth < 1:
            raise bad("depth", "an integer >= 1 (1 = linear memory)", self.depth)
        if self.expansion <= 0:
            raise bad("expansion", "a number > 0", self.expansion)
        if self.activation not in ACTIVATIONS:
            raise bad("activation", f"one of {sorted(ACTIVATIONS)}", self.activation)
        if self.chunk_size < 1:
            raise bad("chunk_size", "an integer >= 1", self.chunk_size)
        if self.conv_kernel < 0:
            raise bad("conv_kernel", "an integer >= 0 (0 = no convolution)", self.conv_kernel)
        if not self.max_lr > 0:
            raise bad("max_lr", "a number > 0", self.max_lr)
        if not 0 < self.max_momentum <= 1:
            raise bad("max_momentum", "in (0, 1]", self.max_momentum)
        if not 0 < self.max_forget <= 1:
            raise bad("max_forget", "in (0, 1]", self.max_forget)
        if self.max_grad_norm < 0:
            raise bad("max_grad_norm", "a number >= 0 (0 = no clipping)", self.max_grad_norm)
        if self.gate_mode not in GATE_MODES:
            raise bad("gate_mode", f"one of {list(GATE_MODES)}", self.gate_mode)
        if self.backend not in BACKENDS:
            raise bad("backend", f"one of {list(BACKENDS)}", self.backend)
        if self.backend == "triton" and self.depth not in SUPPORTED_DEPTHS:
            raise bad("depth", f"one of {list(SUPPORTED_DEPTHS)} with backend 'triton'", self.depth)
