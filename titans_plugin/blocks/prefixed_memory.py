"""A memory whose stream starts with persistent tokens: M([p_1 .. p_Np] || x).

Used by MAL. The persistent tokens are processed once, at the start of a stream; their
outputs are dropped, their effect stays in the memory state."""

import torch
from torch import nn

from titans_plugin.memory import NeuralMemory, NeuralMemoryState


class PersistentTokens(nn.Module):
    """N_p learnable, input-independent tokens of the model width."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(n, dim))
        self.reset_parameters()

    def forward(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """[batch_size, N_p, dim]: the prefix of every sequence in the batch."""
        return self.tokens.to(dtype).unsqueeze(0).expand(batch_size, -1, -1)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.tokens, std=0.02)  # like embeddings, not the output std


def make_persistent(n: int, dim: int) -> PersistentTokens | None:
    return PersistentTokens(n, dim) if n else None


def run_prefixed_memory(
    memory: NeuralMemory,
    persistent: PersistentTokens | None,
    x: torch.Tensor,
    state: NeuralMemoryState | None,
):
    if state is not None or persistent is None:
        return memory(x, state)
    prefix = persistent(x.shape[0], x.dtype)
    y, state = memory(torch.cat([prefix, x], dim=1), None)
    return y[:, prefix.shape[1] :], state
