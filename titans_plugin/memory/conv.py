"""Short depthwise causal convolution that can continue from a saved tail."""

import torch
import torch.nn.functional as F


def causal_depthwise_conv(
    x_BTC: torch.Tensor, weight_CK: torch.Tensor, tail_BKC: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """out_t = sum_j w[:, j] * x_{t - K + 1 + j}; positions before the stream are the tail
    (zeros at the start). Returns the output and the last K - 1 inputs as the next tail."""
    B, T, C = x_BTC.shape
    K = weight_CK.shape[-1]
    if tail_BKC is None:
        tail_BKC = x_BTC.new_zeros(B, K - 1, C)
    xp = torch.cat([tail_BKC.to(x_BTC.dtype), x_BTC], dim=1)  # [B, K - 1 + T, C]
    out = F.conv1d(xp.transpose(1, 2), weight_CK.unsqueeze(1).to(x_BTC.dtype), groups=C)
    return out.transpose(1, 2), xp[:, xp.shape[1] - (K - 1) :]
