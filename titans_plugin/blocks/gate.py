"""The paper's (x) combinator: normalise both branches with learnable vectors, then gate."""

import torch
from torch import nn


class MemoryGate(nn.Module):
    """o = RMSNorm_y(y) * sigmoid(RMSNorm_m(m)): the memory branch decides, per channel,
    how much of the attention branch passes (MAG: y = SW-attention, m = M(x); MAC:
    y = attention output, m = M*_t(u), u what MAC stores).

    norm_y's weight starts at `scale_init`. The normalisation makes the output independent
    of the size of y, so the small, depth-scaled init of the attention's output projection
    no longer keeps the branch small: its gradient is inflated and grows through a deep
    stack of gated layers. A small start gives the layer a standard residual branch's size
    (docs/blocks.md, the gate's initial scale)."""

    def __init__(self, dim: int, eps: float = 1e-5, scale_init: float = 1.0):
        super().__init__()
        self.scale_init = scale_init
        self.norm_y = nn.RMSNorm(dim, eps=eps)
        self.norm_m = nn.RMSNorm(dim, eps=eps)
        self.reset_parameters()

    def forward(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.norm_y(y) * torch.sigmoid(self.norm_m(m))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.norm_y.weight, self.scale_init)
        self.norm_m.reset_parameters()
