"""Short depthwise causal convolution that can continue from a saved tail."""

from typing import cast

import torch
import torch.nn.functional as F


def causal_depthwise_conv(
    x_BTC: torch.Tensor,
    weight_CK: torch.Tensor,
    tail_BKC: torch.Tensor | None,
    starts_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out_t = sum_j w[:, j] * x_{t - K + 1 + j}; positions before the stream are the tail
    (zeros at the start). Returns the output and the last K - 1 inputs as the next tail.

    starts_BT (bool): a document begins at these tokens; a tap never reaches back past the
    start of its token's document (nor into the tail, once a document has begun), and the
    returned tail holds zeros for inputs before the last start, so a later call cannot
    reach them either."""
    B, T, C = x_BTC.shape
    K = weight_CK.shape[-1]
    if tail_BKC is None:
        tail_BKC = x_BTC.new_zeros(B, K - 1, C)
    xp = torch.cat([tail_BKC.to(x_BTC.dtype), x_BTC], dim=1)  # [B, K - 1 + T, C]
    w = weight_CK.to(x_BTC.dtype)
    if starts_BT is None:
        out = F.conv1d(xp.transpose(1, 2), w.unsqueeze(1), groups=C).transpose(1, 2)
    else:
        t = torch.arange(T, device=x_BTC.device)
        last_start = torch.cummax(torch.where(starts_BT, t, -K), dim=1).values  # -K: none yet
        reach = (t - last_start).unsqueeze(-1)  # how far back this token's document goes
        out = cast(
            torch.Tensor, sum(w[:, K - 1 - m] * xp[:, K - 1 - m : K - 1 - m + T] * (m <= reach) for m in range(K))
        )
        tail = xp[:, xp.shape[1] - (K - 1) :]
        tail_pos = torch.arange(T - K + 1, T, device=x_BTC.device)  # negative: the old tail
        return out, tail * (tail_pos >= last_start[:, -1:]).unsqueeze(-1)
    return out, xp[:, xp.shape[1] - (K - 1) :]
