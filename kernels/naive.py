"""Per-token reference for the Titans neural memory. Slow on purpose, obviously correct.

For every token t, per batch element and head (paper, eqs. 9-15):
    surprise    g_t = grad_W || M_{t-1}(k_t) - v_t ||^2     (autograd, not hand-written)
    momentum    S_t = eta_t * S_{t-1} - theta_t * g_t
    forgetting  M_t = (1 - alpha_t) * M_{t-1} + S_t
    retrieval   y_t = M_t(q_t)                              (no update from q)
With max_grad_norm set, each token's gradient (all layers together, per head) is
scaled to norm at most max_grad_norm before it enters the momentum.
With chunk_size = b > 1 the only change is the paper's chunk-parallel approximation: the
gradient of token t is taken at the weights from the start of its chunk (positions 0, b,
2b, ...) instead of M_{t-1}; the recurrences stay token by token.
M is an MLP without biases: h -> act(h W_1) ... W_L (depth 1 is a matrix).
"""

from typing import cast

import torch

from .activations import get_activation
from .state import MemoryState, check_resets, state_dtype


def memory_mlp(x: torch.Tensor, weights, act) -> torch.Tensor:
    """Apply per-(batch, head) MLP weights [B, H, D_in, D_out] to x [B, H, ..., D_in]."""
    h = x
    for layer, w in enumerate(weights):
        h = h @ w
        if layer < len(weights) - 1:
            h = act(h)
    return h


def naive_neural_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    state: MemoryState,
    *,
    chunk_size: int = 1,
    activation: str = "silu",
    max_grad_norm: float | None = None,
    resets: torch.Tensor | None = None,
    initial: MemoryState | None = None,
    stats: dict | None = None,
) -> tuple[torch.Tensor, MemoryState]:
    """q, k: [B, T, H, D_k]; v: [B, T, H, D_v]; theta, eta, alpha: [B, T, H].

    Returns y [B, T, H, D_v] (in the state dtype) and the state after the last token.
    resets [B, n_chunks] with `initial` (dispatch.py's contract): the sequence is cut at
    every chunk where some row restarts, and each piece runs from the state the last one
    left, with the restarting rows set to `initial`."""
    if resets is not None:
        return _with_restarts(
            (q, k, v, theta, eta, alpha), state, resets, initial, chunk_size, activation, max_grad_norm, stats
        )
    act = get_activation(activation).fn
    dtype = state_dtype(q)
    weights = [w.to(dtype) for w in state.weights]
    momentum = [s.to(dtype) for s in state.momentum]
    outer_grad = torch.is_grad_enabled()
    outputs, factors = [], []
    for t in range(q.shape[1]):
        if t % chunk_size == 0:
            chunk_start = weights
        q_t, k_t, v_t = (x[:, t].to(dtype).unsqueeze(-2) for x in (q, k, v))  # [B, H, 1, D]
        theta_t, eta_t, alpha_t = (g[:, t].to(dtype)[..., None, None] for g in (theta, eta, alpha))
        with torch.enable_grad():
            # Under no_grad a view of a parameter still says requires_grad, with no graph.
            leaves = [w if outer_grad and w.requires_grad else w.detach().requires_grad_() for w in chunk_start]
            # Summing over batch and heads is fine: each (b, h) owns its weights.
            loss = (memory_mlp(k_t, leaves, act) - v_t).pow(2).sum()
            grads = torch.autograd.grad(loss, leaves, create_graph=outer_grad)
        if max_grad_norm:
            norm = torch.sqrt(cast(torch.Tensor, sum(g.pow(2).sum((-2, -1), keepdim=True) for g in grads)) + 1e-30)
            factor = torch.clamp(max_grad_norm / norm, max=1.0)
            grads = tuple(g * factor for g in grads)
            factors.append(factor.detach().reshape(factor.shape[:2]).float())
        if t % chunk_size == 0:
            chunk_start = leaves  # same values; keeps any graph through the leaves
            weights = leaves
        momentum = [eta_t * s - theta_t * g for s, g in zip(momentum, grads, strict=True)]
        weights = [(1 - alpha_t) * w + s for w, s in zip(weights, momentum, strict=True)]
        outputs.append(memory_mlp(q_t, weights, act).squeeze(-2))
    if stats is not None and max_grad_norm:
        B, T, H, _ = q.shape
        stats["clip_factor"] = torch.stack(factors, dim=1) if factors else q.new_ones(B, T, H, dtype=torch.float32)
    if not outputs:
        B, _, H, _ = q.shape
        return q.new_zeros(B, 0, H, weights[-1].shape[-1], dtype=dtype), MemoryState(tuple(weights), tuple(momentum))
    y = torch.stack(outputs, dim=1)
    return y, MemoryState(tuple(weights), tuple(momentum))


def _with_restarts(inputs, state, resets, initial, chunk_size, activation, max_grad_norm, stats):
    """The scan cut at every chunk where some row restarts. The pieces come from one
    split, whose backward is one concatenation (slicing every piece would zero-fill the
    whole input's gradient once per piece)."""
    n_chunks = check_resets(inputs[0], resets, initial, state, chunk_size)
    T = inputs[0].shape[1]
    cuts = resets.any(0).nonzero().flatten().tolist()  # one host sync per call
    bounds = sorted({0, *cuts, n_chunks})
    sizes = [
        min(last * chunk_size, T) - first * chunk_size for first, last in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    outs, piece_stats = [], []
    pieces = zip(*(x.split(sizes, dim=1) for x in inputs), strict=True)
    for first, piece in zip(bounds[:-1], pieces, strict=True):
        if first in cuts:
            state = state.reset_rows(resets[:, first], initial)
        piece_stats.append({})
        y, state = naive_neural_memory(
            *piece,
            state,
            chunk_size=chunk_size,
            activation=activation,
            max_grad_norm=max_grad_norm,
            stats=piece_stats[-1],
        )
        outs.append(y)
    if stats is not None and max_grad_norm:
        stats["clip_factor"] = torch.cat([p["clip_factor"] for p in piece_stats], dim=1)
    return torch.cat(outs, dim=1), state


def supports(q, state: MemoryState, **config) -> str | None:
    """The per-token reference runs every configuration, anywhere."""
    return None
