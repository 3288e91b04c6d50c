"""The state a memory scan carries from one call to the next."""

from typing import NamedTuple

import torch


class MemoryState(NamedTuple):
    """Memory weights and momentum after the last processed token.

    Both are tuples with one tensor per memory layer, each [B, H, D_in, D_out] in the
    scan's state dtype (fp32, or fp64 when the inputs are fp64). Layer l maps
    D_in -> D_out; a depth-1 memory is a single [B, H, D, D] matrix.
    """

    weights: tuple[torch.Tensor, ...]
    momentum: tuple[torch.Tensor, ...]

    @staticmethod
    def from_initial(weights: tuple[torch.Tensor, ...], batch_size: int) -> "MemoryState":
        """Broadcast learned per-head initial weights [H, D_in, D_out] over the batch,
        with zero momentum (the paper starts the surprise at zero)."""
        w = tuple(wl.unsqueeze(0).expand(batch_size, *wl.shape) for wl in weights)
        s = tuple(torch.zeros_like(wl) for wl in w)
        return MemoryState(w, s)

    def reset_rows(self, rows: torch.Tensor, initial: "MemoryState") -> "MemoryState":
        """Rows [B] (bool) restart from `initial`: its weights, zero momentum."""
        r = rows.view(-1, 1, 1, 1)
        w = tuple(torch.where(r, i.to(x.dtype), x) for x, i in zip(self.weights, initial.weights))
        s = tuple(torch.where(r, torch.zeros_like(x), x) for x in self.momentum)
        return MemoryState(w, s)

    def detach(self) -> "MemoryState":
        return MemoryState(tuple(w.detach() for w in self.weights), tuple(s.detach() for s in self.momentum))


def state_dtype(x: torch.Tensor) -> torch.dtype:
    """Scans run in fp32 at least (bf16 recurrences drift over long sequences); fp64
    inputs keep fp64 so the reference tests can be tight."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
