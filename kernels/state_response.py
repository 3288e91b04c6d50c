"""How a linear memory's scan depends on the state it starts from.

For a depth-1 memory without the inner-gradient clip, every step of the recurrence

    S_t = eta_t S_{t-1} - theta_t * 2 k_t (k_t^T W_{t-1} - v_t^T),   W_t = (1 - alpha_t) W_{t-1} + S_t
    y_t = W_t^T q_t  (chunked: gradients at the chunk-start weights; same argument)

is linear in (W, S, v) jointly for fixed q, k and gates. So a scan from (W0, S0) equals the
scan from zero plus the scan of the initial state alone with v = 0. The latter acts on
each column of [W0; S0] independently, so it is the scan of the 2D unit columns:

    y    = y(from zero)    + U   @ [W0; S0]      U   [B, T, H, 2D]
    W_T  = W_T(from zero)  + P_W @ [W0; S0]      P_W [B, H, D, 2D]
    S_T  = S_T(from zero)  + P_S @ [W0; S0]      P_S [B, H, D, 2D]

Context parallel uses this (context_parallel/memory.py): a shard scans from zero and
computes U, P without waiting for the shard before it; the state it receives then costs
one small matmul. U and P come from the same scan as everything else (any backend, its
own backward), run with 2D value columns.
"""

import torch

from .dispatch import neural_memory_scan
from .state import MemoryState, state_dtype


def state_response(q, k, theta, eta, alpha, *, chunk_size: int, activation: str, backend: str = "auto"):
    """(U, P) for a depth-1 memory: the outputs and end state of the scan that starts from
    the unit columns [I; 0] (weights) and [0; I] (momentum) with zero values."""
    B, T, H, D = k.shape
    dtype = state_dtype(q)
    eye = torch.eye(D, dtype=dtype, device=q.device)
    zero = torch.zeros_like(eye)
    w0 = torch.cat([eye, zero], dim=-1).expand(B, H, D, 2 * D)
    s0 = torch.cat([zero, eye], dim=-1).expand(B, H, D, 2 * D)
    values = q.new_zeros(B, T, H, 2 * D)
    return neural_memory_scan(
        q,
        k,
        values,
        theta,
        eta,
        alpha,
        MemoryState((w0,), (s0,)),
        chunk_size=chunk_size,
        activation=activation,
        max_grad_norm=None,
        backend=backend,
    )


def add_start_state(end0: MemoryState, P: MemoryState, start: MemoryState):
    """(X, end): the start state stacked [B, H, 2D, D_v] and the end state of the scan from
    `start`, given the scan's end from zero (end0) and its response P."""
    X = torch.cat([start.weights[0], start.momentum[0]], dim=-2)
    return X, MemoryState((end0.weights[0] + P.weights[0] @ X,), (end0.momentum[0] + P.momentum[0] @ X,))


def response_output(y0: torch.Tensor, U: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The outputs of the scan from the stacked start state X, given those from zero (y0)."""
    return y0.to(X.dtype) + torch.einsum("bthi,bhij->bthj", U.to(X.dtype), X)
