"""A memory whose stream starts with persistent tokens: M([p_1 .. p_Np] || x).

Used by MAL and LMM. The persistent tokens are processed once, at the start of a stream;
their outputs are dropped, their effect stays in the memory state."""

import torch
from torch import nn

from titans_plugin.memory import NeuralMemory, NeuralMemoryState, local_tensor


class PersistentTokens(nn.Module):
    """N_p learnable, input-independent tokens of the model width."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(n, dim))
        self.init_weights()

    def init_weights(self, init_std: float = 0.02) -> None:  # std unused: like embeddings
        nn.init.normal_(self.tokens, std=0.02)


def make_persistent(n: int, dim: int) -> PersistentTokens | None:
    return PersistentTokens(n, dim) if n else None


def run_prefixed_memory(
    memory: NeuralMemory, persistent: PersistentTokens | None, x: torch.Tensor,
    state: NeuralMemoryState | None,
):
    if state is not None or persistent is None:
        return memory(x, state)
    B = x.shape[0]
    tokens = local_tensor(persistent.tokens)
    Np = tokens.shape[0]
    prefix = tokens.to(x.dtype).unsqueeze(0).expand(B, *tokens.shape)
    y, state = memory(torch.cat([prefix, x], dim=1), None)
    return y[:, Np:], state
