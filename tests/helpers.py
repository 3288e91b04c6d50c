"""Shared builders for the tests: random but well-conditioned memory inputs."""

import torch
import torch.nn.functional as F

from titans_plugin.kernels import MemoryState


def memory_inputs(B=2, T=13, H=3, D=5, depth=2, hidden=7, dtype=torch.float64, seed=0,
                  requires_grad=False, momentum=True):
    """q, k, v, theta, eta, alpha and an initial state, as the module would produce them
    (L2-normalised q and k, gates strictly inside their ranges)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    q = F.normalize(rnd(B, T, H, D), dim=-1)
    k = F.normalize(rnd(B, T, H, D), dim=-1)
    v = rnd(B, T, H, D)
    theta = 0.3 * torch.rand(B, T, H, generator=g, dtype=dtype)
    eta = torch.rand(B, T, H, generator=g, dtype=dtype)
    alpha = 0.2 * torch.rand(B, T, H, generator=g, dtype=dtype)
    dims = [D] + [hidden] * (depth - 1) + [D]
    w = tuple(rnd(B, H, dims[i], dims[i + 1]) / dims[i] ** 0.5 for i in range(depth))
    s = tuple(0.1 * rnd(B, H, dims[i], dims[i + 1]) if momentum else torch.zeros(B, H, dims[i], dims[i + 1], dtype=dtype)
              for i in range(depth))
    tensors = [q, k, v, theta, eta, alpha, *w, *s]
    if requires_grad:
        for t in tensors:
            t.requires_grad_()
    return (q, k, v, theta, eta, alpha), MemoryState(w, s)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def flat(state: MemoryState) -> list[torch.Tensor]:
    return list(state.weights) + list(state.momentum)
