"""Small models and well-conditioned memory inputs for tests and benchmarks, and the
random linear functional that their gradient comparisons differentiate."""

import torch
import torch.nn.functional as F

from titans_plugin.config import TitansConfig
from titans_plugin.kernels import MemoryState
from titans_plugin.model import TitansModelArgs, TitansTransformer

# Memory, chunk, segment and window sizes small enough that a 23-token sequence crosses
# several chunks, segments and windows.
TINY_TITANS = dict(memory_heads=2, memory_head_dim=8, chunk_size=4, segment_len=6, window=5, n_persistent=2)


def tiny_args(pattern: str, n_layers: int | None = None, **titans) -> TitansModelArgs:
    """Width 32, 4 heads of which 2 KV heads, vocabulary 50, layer pattern `pattern` (and
    [titans] overrides)."""
    return TitansModelArgs(
        dim=32,
        n_layers=n_layers or max(2, len(pattern)),
        n_heads=4,
        n_kv_heads=2,
        vocab_size=50,
        multiple_of=16,
        max_seq_len=64,
        titans=TitansConfig(pattern=pattern, **{**TINY_TITANS, **titans}),
    )


def tiny_model(pattern: str, n_layers: int | None = None, seed=0, **titans) -> TitansTransformer:
    """A fp64 model of tiny_args."""
    torch.manual_seed(seed)
    return TitansTransformer(tiny_args(pattern, n_layers, **titans)).double()


def debug_model(pattern: str, seq_len: int, **overrides) -> TitansTransformer:
    """The debug flavor's sizes (dim 128, 4 layers) with debug_mac.toml's [titans]
    settings (and [titans] overrides), fp32: the model the CPU benchmarks measure."""
    torch.manual_seed(0)
    titans = TitansConfig(
        pattern=pattern,
        memory_heads=4,
        memory_expansion=2.0,
        chunk_size=32,
        segment_len=128,
        window=128,
        n_persistent=4,
        **overrides,
    )
    args = TitansModelArgs(
        dim=128, n_layers=4, n_heads=4, vocab_size=2048, multiple_of=64, max_seq_len=seq_len, titans=titans
    )
    return TitansTransformer(args)


def memory_inputs(
    B=2, T=13, H=3, D=5, depth=2, hidden=7, dtype=torch.float64, seed=0, requires_grad=False, momentum=True
):
    """q, k, v, theta, eta, alpha and an initial state, as the module would produce them
    (L2-normalised q and k, gates strictly inside their ranges)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    q = F.normalize(rnd(B, T, H, D), dim=-1)
    k = F.normalize(rnd(B, T, H, D), dim=-1)
    v = rnd(B, T, H, D)
    theta = 0.3 * torch.rand(B, T, H, generator=g, dtype=dtype)
    eta = torch.rand(B, T, H, generator=g, dtype=dtype)
    alpha = 0.2 * torch.rand(B, T, H, generator=g, dtype=dtype)
    dims = [D] + [hidden] * (depth - 1) + [D]
    w = tuple(rnd(B, H, dims[i], dims[i + 1]) / dims[i] ** 0.5 for i in range(depth))
    s = tuple(
        0.1 * rnd(B, H, dims[i], dims[i + 1]) if momentum else torch.zeros(B, H, dims[i], dims[i + 1], dtype=dtype)
        for i in range(depth)
    )
    tensors = [q, k, v, theta, eta, alpha, *w, *s]
    if requires_grad:
        for t in tensors:
            t.requires_grad_()
    return (q, k, v, theta, eta, alpha), MemoryState(w, s)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def flat(state: MemoryState) -> list[torch.Tensor]:
    return list(state.weights) + list(state.momentum)


def grads(out: torch.Tensor, state: MemoryState, leaves, seed=1) -> tuple[torch.Tensor, ...]:
    """Gradients w.r.t. `leaves` of a random linear functional of the output and the final
    state (computed in fp64 whatever their dtype, so low-precision runs compare fairly)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum(
        (t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum()
        for t in [out, *flat(state)]
    )
    return torch.autograd.grad(loss, leaves)
