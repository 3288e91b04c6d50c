"""The chunked closed form differentiated by plain autograd (paper section 3.2).

The chunk loop over chunk.py's `chunk_forward` (plain differentiable tensor ops), left to
autograd: the reference the hand-written backward in chunk.py is tested against, with
the forward shared so that the test isolates the backward (the forward itself is checked
against the per-token loop in naive.py). It keeps every chunk's intermediates for
backward and supports double backward; chunk.py's autograd.Function is the fast path.

The sequence is cut into chunks of `chunk_size` tokens at absolute positions 0, b, 2b, ...
Inside a chunk every inner gradient is taken at the chunk-start weights W0 (so all of
them are batched matmuls), momentum is a linear recurrence and the decays are cumulative
products. Per head, with log-gates log_retain = log(1 - alpha), log_eta = log(eta):

    A[t, s] = prod_{s<j<=t} (1 - alpha_j)     E[s, i] = prod_{i<j<=s} eta_j     (lower-triangular)
    G = (A @ E) * theta[None, :]              c_t = prod_{j<=t} (1 - alpha_j)
    f = A @ prod_{j<=.} eta_j

and with the per-token gradient of layer l written as an outer product a_s^T delta_s,

    W_t = c_t W0 + f_t S0 - sum_{s<=t} G[t, s] a_s^T delta_s.

Retrieval y_t = M_t(q_t) therefore runs layer by layer as a masked linear attention with
G in place of a plain learning rate (the TTT-MLP dual form), with the activation in
between. With chunk_size = 1 this is exactly the per-token recurrence in naive.py.

Segment sums are built as masked cumulative sums (never as differences of prefix sums),
so no large numbers cancel in fp32 and a gate of exactly 0 or 1 is still exact.
Only the chunk-start weights of each chunk and the in-chunk activations are kept for
backward; the weights at every token are never materialised.
"""

import torch

from .activations import get_activation
from .chunk import chunk_forward
from .chunk_math import prepare_inputs
from .state import MemoryState


def chunk_neural_memory_autograd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    state: MemoryState,
    *,
    chunk_size: int = 64,
    activation: str = "silu",
    max_grad_norm: float | None = None,
    stats: dict | None = None,
) -> tuple[torch.Tensor, MemoryState]:
    """Same contract as naive_neural_memory, computed chunk by chunk.

    q, k: [B, T, H, D_k]; v: [B, T, H, D_v]; theta, eta, alpha: [B, T, H].
    A ragged tail (T not a multiple of chunk_size, or T < chunk_size) is one shorter chunk
    and still updates the memory.
    """
    act = get_activation(activation)
    q, k, v, theta, log_eta, log_retain, state = prepare_inputs(q, k, v, theta, eta, alpha, state, chunk_size)
    T = q.shape[2]
    outputs, factors = [], []
    for start in range(0, T, chunk_size):
        sl = slice(start, min(start + chunk_size, T))
        y, W, S, it = chunk_forward(
            q[:, :, sl],
            k[:, :, sl],
            v[:, :, sl],
            theta[..., sl],
            log_eta[..., sl],
            log_retain[..., sl],
            state.weights,
            state.momentum,
            act,
            max_grad_norm,
        )
        state = MemoryState(W, S)
        outputs.append(y)
        if it.clip is not None:
            factors.append(torch.clamp(it.clip[0], max=1.0).detach().float())
    if stats is not None and max_grad_norm:
        B, H = q.shape[0], q.shape[1]
        empty = torch.ones(B, 0, H, dtype=torch.float32, device=q.device)
        stats["clip_factor"] = torch.cat(factors, dim=2).transpose(1, 2) if factors else empty
    if not outputs:
        B, H = q.shape[0], q.shape[1]
        return q.new_zeros(B, 0, H, state.weights[-1].shape[-1]), state
    return torch.cat(outputs, dim=2).transpose(1, 2), state
