"""Pieces of the chunked closed form shared by the autograd and hand-differentiated paths."""

import torch

from .state import MemoryState, state_dtype

# A gate of exactly 0 (eta = 0, or alpha = 1) would put log(0) into the closed form and
# 0 * inf into its backward. Flooring the gate (not its log: the clamp must sit before the
# 1/x of log's derivative) at 1e-30 changes the forward by less than any float can show.
GATE_FLOOR = 1e-30


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """x [..., C] -> out [..., C, C] with out[t, s] = sum_{s<j<=t} x_j, -inf above the diagonal."""
    C = x.shape[-1]
    ones = torch.ones(C, C, dtype=torch.bool, device=x.device)
    xx = x.unsqueeze(-1).expand(*x.shape, C)  # xx[..., j, s] = x_j
    xx = xx.masked_fill(~torch.tril(ones, diagonal=-1), 0.0)
    out = torch.cumsum(xx, dim=-2)
    return out.masked_fill(~torch.tril(ones), float("-inf"))


def log_gates(eta: torch.Tensor, alpha: torch.Tensor, dtype: torch.dtype):
    """log(eta) and log(1 - alpha), floored so that exact 0/1 gates stay finite in backward."""
    log_eta = torch.log(eta.to(dtype).clamp_min(GATE_FLOOR))
    log_retain = torch.log((1 - alpha.to(dtype)).clamp_min(GATE_FLOOR))
    return log_eta, log_retain


def segment_sum_backward(grad_CC: torch.Tensor) -> torch.Tensor:
    """Adjoint of segment_sum: dx_j = sum_{t >= j} sum_{s < j} grad[t, s]."""
    exclusive = torch.cumsum(grad_CC, dim=-1) - grad_CC  # [t, j] = sum_{s < j} grad[t, s]
    from_bottom = torch.flip(torch.cumsum(torch.flip(exclusive, [-2]), dim=-2), [-2])  # sum over t >= row
    return torch.diagonal(from_bottom, dim1=-2, dim2=-1)


def reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Adjoint of cumsum along the last dim."""
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), dim=-1), [-1])


def prepare_inputs(q, k, v, theta, eta, alpha, state: MemoryState, chunk_size: int):
    """Check the chunk size, move heads in front ([B, T, H, D] -> [B, H, T, D]: heads become a
    batch dimension of every matmul), cast to the state dtype and take log-gates."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    dtype = state_dtype(q)
    q, k, v = (x.transpose(1, 2).to(dtype) for x in (q, k, v))
    theta = theta.transpose(1, 2).to(dtype)
    log_eta, log_retain = (g.transpose(1, 2) for g in log_gates(eta, alpha, dtype))
    state = MemoryState(tuple(w.to(dtype) for w in state.weights), tuple(s.to(dtype) for s in state.momentum))
    return q, k, v, theta, log_eta, log_retain, state
