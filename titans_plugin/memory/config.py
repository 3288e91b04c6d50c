"""Configuration of one neural long-term memory (paper section 3.1)."""

from dataclasses import dataclass

from titans_plugin.kernels import ACTIVATIONS, BACKENDS, TRITON_DEPTHS

# Allowed values, for whoever validates a user's configuration (titans_plugin/config.py).
GATE_MODES = ("token", "chunk")
__all__ = ["ACTIVATIONS", "BACKENDS", "GATE_MODES", "MemoryConfig", "TRITON_DEPTHS"]


@dataclass
class MemoryConfig:
    """Every field has a default that runs on CPU. `dim` is the model width the memory
    reads from and writes back to. Trusted as given: the user's `[titans]` section is
    validated where it enters (titans_plugin/config.py)."""

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
    # Gates at initialisation, as fractions of their maxima (the gate biases are set so).
    # A small lr_init and forget_init start the memory retaining and writing little, which
    # is what lets it hold a fact through far more filler than it was trained on.
    lr_init: float = 0.1
    forget_init: float = 0.01
    # "zero": the output projection starts at zero, so the memory adds nothing until it
    # has learned to (a function-preserving start when converting a trained Transformer)
    out_init: str = "normal"
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

    def scan_flops_per_token(self) -> int:
        """Forward FLOPs per token of the chunked scan, all heads (see kernels/chunk.py)."""
        C = self.chunk_size
        per_head = 2 * C * C  # A @ E inside a chunk, amortised over its C tokens
        for layer, (d_in, d_out) in enumerate(self.layer_dims()):
            mm = 2 * d_in * d_out
            per_head += mm  # keys through the chunk-start memory
            per_head += mm if layer > 0 else 0  # delta back through W^T
            per_head += 2 * mm  # query through W0 and S0
            per_head += 2 * C * (d_in + d_out)  # masked scores and scores @ delta
            per_head += 2 * mm  # end-of-chunk weight and momentum updates, amortised
        return per_head * self.n_heads

    def read_flops_per_token(self) -> int:
        """Forward FLOPs per token of a read with fixed weights (one pass through the MLP)."""
        return 2 * sum(d_in * d_out for d_in, d_out in self.layer_dims()) * self.n_heads
