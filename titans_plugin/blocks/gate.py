"""The paper's (x) combinator: normalise both branches with learnable vectors, then gate."""

import torch
from torch import nn


class MemoryGate(nn.Module):
    """o = RMSNorm_y(y) * sigmoid(RMSNorm_m(m)): the memory branch decides, per channel,
    how much of the attention branch passes (MAG: y = SW-attention, m = M(x); MAC:
    y = attention output, m = M*_t(u), u what MAC stores)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm_y = nn.RMSNorm(dim, eps=eps)
        self.norm_m = nn.RMSNorm(dim, eps=eps)

    def forward(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.norm_y(y) * torch.sigmoid(self.norm_m(m))

    def reset_parameters(self) -> None:
        self.norm_y.reset_parameters()
        self.norm_m.reset_parameters()
