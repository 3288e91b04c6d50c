"""The chunked closed form differentiated by plain autograd (paper section 3.2).

This is the readable statement of the chunk math and the reference that the hand-written
backward in chunk.py is tested against. It keeps every chunk's intermediates for
backward and supports double backward; chunk.py is the fast path.

The sequence is cut into chunks of `chunk_size` tokens at absolute positions 0, b, 2b, ...
Inside a chunk every inner gradient is taken at the chunk-start weights W0 (so all of
them are batched matmuls), momentum is a linear recurrence and the decays are cumulative
products. Per head, with log-gates lr = log(1 - alpha), le = log(eta):

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
from .chunk_math import prepare_inputs, segment_sum
from .state import MemoryState

def clip_scale(grad_sq_norm: torch.Tensor, max_norm: float | None) -> torch.Tensor | None:
    """Per-token factor min(1, max_norm / ||grad||), or None when clipping is off."""
    if not max_norm:
        return None
    return torch.clamp(max_norm / torch.sqrt(grad_sq_norm + 1e-30), max=1.0)


def chunk_step(q, k, v, theta, log_eta, log_retain, state: MemoryState, act, max_grad_norm=None):
    """One chunk. q, k: [B, H, C, D_k]; v: [B, H, C, D_v]; gates [B, H, C].

    Returns y [B, H, C, D_v] and the state after the chunk's last token.
    """
    W0, S0 = state

    # Forward the keys through the chunk-start memory, then backprop the squared error
    # by hand: deltas[l] is d loss / d (output of layer l) for every token.
    inputs, pre_acts = [k], []
    h = k
    for layer, w in enumerate(W0):
        z = h @ w
        pre_acts.append(z)
        h = act.fn(z) if layer < len(W0) - 1 else z
        inputs.append(h)
    inputs.pop()  # inputs[l] is the input of layer l
    delta = 2.0 * (h - v)  # d ||M(k) - v||^2 / d M(k)
    deltas = [delta]
    for layer in range(len(W0) - 1, 0, -1):
        delta = (delta @ W0[layer].transpose(-1, -2)) * act.grad(pre_acts[layer - 1])
        deltas.insert(0, delta)

    # Token s's gradient of layer l is the outer product a_s^T delta_s, so its norm is
    # ||a_s|| * ||delta_s||: clipping it is a per-token factor on theta.
    if max_grad_norm:
        sq = sum(a.pow(2).sum(-1) * d.pow(2).sum(-1) for a, d in zip(inputs, deltas))
        theta = theta * clip_scale(sq, max_grad_norm)

    A = torch.exp(segment_sum(log_retain))  # [B, H, C, C]
    E = torch.exp(segment_sum(log_eta))
    G = (A @ E) * theta.unsqueeze(-2)  # G[t, i]: weight of token i's gradient in W_t
    c = torch.exp(torch.cumsum(log_retain, dim=-1))  # decay of W0 up to t
    f = (A @ torch.exp(torch.cumsum(log_eta, dim=-1)).unsqueeze(-1)).squeeze(-1)  # reach of S0

    # Retrieval with the memory after each token's own update.
    h = q
    for layer in range(len(W0)):
        scores = (h @ inputs[layer].transpose(-1, -2)) * G  # G is lower-triangular
        y = c.unsqueeze(-1) * (h @ W0[layer]) + f.unsqueeze(-1) * (h @ S0[layer])
        y = y - scores @ deltas[layer]
        h = act.fn(y) if layer < len(W0) - 1 else y

    # State at the end of the chunk: the last rows of the closed forms.
    g_last = G[..., -1, :].unsqueeze(-1)  # [B, H, C, 1]
    n_last = (E[..., -1, :] * theta).unsqueeze(-1)  # theta_i * prod_{i<j<=T} eta_j
    c_last = c[..., -1, None, None]
    f_last = f[..., -1, None, None]
    m_last = torch.exp(log_eta.sum(-1))[..., None, None]
    new_w, new_s = [], []
    for layer in range(len(W0)):
        a_T = inputs[layer].transpose(-1, -2)
        new_w.append(c_last * W0[layer] + f_last * S0[layer] - a_T @ (g_last * deltas[layer]))
        new_s.append(m_last * S0[layer] - a_T @ (n_last * deltas[layer]))
    return h, MemoryState(tuple(new_w), tuple(new_s))


def chunk_neural_memory_autograd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    state: MemoryState,
    chunk_size: int = 64,
    activation: str = "silu",
    max_grad_norm: float | None = None,
) -> tuple[torch.Tensor, MemoryState]:
    """Same contract as naive_neural_memory, computed chunk by chunk.

    q, k: [B, T, H, D_k]; v: [B, T, H, D_v]; theta, eta, alpha: [B, T, H].
    A ragged tail (T not a multiple of chunk_size, or T < chunk_size) is one shorter chunk
    and still updates the memory.
    """
    act = get_activation(activation)
    q, k, v, theta, log_eta, log_retain, state = prepare_inputs(q, k, v, theta, eta, alpha, state, chunk_size)
    T = q.shape[2]
    outputs = []
    for start in range(0, T, chunk_size):
        sl = slice(start, min(start + chunk_size, T))
        y, state = chunk_step(
            q[:, :, sl], k[:, :, sl], v[:, :, sl],
            theta[..., sl], log_eta[..., sl], log_retain[..., sl], state, act, max_grad_norm,
        )
        outputs.append(y)
    if not outputs:
        B, H = q.shape[0], q.shape[1]
        return q.new_zeros(B, 0, H, state.weights[-1].shape[-1]), state
    return torch.cat(outputs, dim=2).transpose(1, 2), state
