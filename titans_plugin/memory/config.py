"""Configuration of one neural long-term memory (paper section 3.1)."""

from dataclasses import dataclass

from titans_plugin.kernels import ACTIVATIONS, BACKENDS, TRITON_DEPTHS
from titans_plugin.utils.fields import at_least_zero, fraction, integer, one_of, positive, setting

# Allowed values, for whoever validates a user's configuration (titans_plugin/config/titans.py).
GATE_MODES = ("token", "chunk")
__all__ = ["ACTIVATIONS", "BACKENDS", "GATE_MODES", "MemoryConfig", "TRITON_DEPTHS"]


@dataclass
class MemoryConfig:
    """One neural memory. Each field but `dim` is declared here once, with its default
    (which runs on CPU), its check and its help text; the `[titans]` section maps its
    memory fields onto these (titans_plugin/config/titans.py) and validates them with
    these checks. `dim` is the model width the memory reads from and writes back to.
    Trusted as given: a user's values are validated where they enter."""

    dim: int = 256
    n_heads: int = setting(4, integer(1), "memory heads")
    # 0, never the full width by accident: a head dim that grows with the model width
    # makes the memory quadratic in it
    head_dim: int = setting(0, integer(0, "(0 = model.dim // memory_heads)"), "memory head dim; 0 = dim // heads")
    depth: int = setting(2, integer(1, "(1 = linear memory)"), "layers of the memory MLP (1 = linear memory)")
    expansion: float = setting(4.0, positive(), "hidden width of the memory MLP, x head dim")
    activation: str = setting("silu", one_of(sorted(ACTIVATIONS)), "activation between memory layers")
    chunk_size: int = setting(64, integer(1), "tokens whose inner gradients share the chunk-start weights")
    conv_kernel: int = setting(4, integer(0, "(0 = no convolution)"), "depthwise causal conv after q/k/v (0 = none)")
    max_lr: float = setting(0.1, positive(), "upper bound of the inner learning rate theta")
    max_momentum: float = setting(1.0, fraction(closed_above=True), "upper bound of the momentum eta")
    max_forget: float = setting(1.0, fraction(closed_above=True), "upper bound of the forgetting alpha")
    # Gates at initialisation, as fractions of their maxima (the gate biases are set so).
    # A small lr_init and forget_init start the memory retaining and writing little, which
    # is what lets it hold a fact through far more filler than it was trained on.
    lr_init: float = setting(
        0.1,
        fraction(closed_above=False, note="(a fraction of titans.max_lr)"),
        "inner learning rate theta at initialisation, as a fraction of `max_lr`",
    )
    forget_init: float = setting(
        0.01,
        fraction(closed_above=False, note="(a fraction of titans.max_forget)"),
        "forgetting alpha at initialisation, as a fraction of `max_forget`; 1e-5 with `max_grad_norm = 4` for "
        "long contexts: recall at 8x the training length goes from chance to 95-100% "
        "([length generalisation](results.md#length-generalisation-the-long-context-setting))",
    )
    # "zero": the output projection starts at zero, so the memory adds nothing until it
    # has learned to (a function-preserving start when converting a trained Transformer)
    out_init: str = setting(
        "normal",
        one_of(["normal", "zero"]),
        "zero: the memory's output projection starts at zero, so a memory adds nothing until it learns to; with "
        "stacked MAL this makes a converted Transformer layer start as the layer it replaced "
        "([converting.md](converting.md#keeping-the-transformers-weights))",
    )
    # Per-token clip of the inner gradient (all layers, per head); 0 = off. On by default:
    # chunked updates with correlated keys and momentum near 1 overshoot (docs/memory.md).
    max_grad_norm: float = setting(
        1.0,
        at_least_zero("(0 = no clipping)"),
        "per-token inner-gradient clip, 0 = off ([why](memory.md#stability-input-norm-and-inner-gradient-clipping-"
        "measured)); 4 with `forget_init = 1e-5` for long contexts "
        "([measured](results.md#length-generalisation-the-long-context-setting))",
    )
    gate_mode: str = setting("token", one_of(GATE_MODES), "chunk: each chunk uses the gates of its first token")
    backend: str = setting(
        "auto",
        one_of(BACKENDS),
        "memory scan implementation; auto = on CUDA, the fastest kernel design that runs the configuration and "
        "passed its first-use self-check, timed once per configuration and batch x heads (gluon_cluster against "
        "triton on sm_90, triton_split against triton elsewhere; `TITANS_AUTO_RACE=0`: triton alone), `chunk` where "
        "none does (a one-time warning names why), the exact chunked PyTorch path elsewhere "
        "([kernels.md](kernels.md#choosing-a-backend)); chunk / triton force one (triton needs CUDA or "
        "`TRITON_INTERPRET=1`, and depth 1 or 2; forcing it where it cannot launch is an error); triton_split = "
        "triton with the state split across 4 (or 2) programs per (batch, head), on triton >= 3.9 "
        "([kernels.md](kernels.md#splitting-the-state-across-programs)); gluon_cluster = the forward by a Gluon "
        "kernel with the state in the shared memory of a cluster of sm_90 CTAs (depth 2, head dim 64, hidden 128 "
        "or 256, bf16, no packed documents), the backward by triton "
        "([kernels.md](kernels.md#the-gluon-cluster-forward)); naive = the per-token reference "
        "([kernels.md](kernels.md))",
    )

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.dim // self.n_heads

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
