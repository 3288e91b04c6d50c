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
        w = tuple(torch.where(r, i.to(x.dtype), x) for x, i in zip(self.weights, initial.weights, strict=True))
        s = tuple(torch.where(r, torch.zeros_like(x), x) for x in self.momentum)
        return MemoryState(w, s)

    def detach(self) -> "MemoryState":
        return MemoryState(tuple(w.detach() for w in self.weights), tuple(s.detach() for s in self.momentum))

    def detached_copy(self) -> "MemoryState":
        return MemoryState(*(tuple(detached_copy(t) for t in ts) for ts in (self.weights, self.momentum)))


def detached_copy(t: torch.Tensor) -> torch.Tensor:
    """t detached, in contiguous storage of its own: a view's detach would keep its base
    alive for as long as it is held, and a copy's strides do not depend on the view it came
    from (a state handed to a compiled block with other strides recompiles the block)."""
    return t.detach().clone(memory_format=torch.contiguous_format)


def state_dtype(x: torch.Tensor) -> torch.dtype:
    """Scans run in fp32 at least (bf16 recurrences drift over long sequences); fp64
    inputs keep fp64 so the reference tests can be tight."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_resets(q: torch.Tensor, resets, initial, state: MemoryState, chunk_size: int) -> int:
    """resets [B, ceil(T / chunk_size)] with an initial state shaped like `state` (one row
    per batch row: the kernels read row b's initial weights). Returns the chunk count."""
    n_chunks = -(-q.shape[1] // chunk_size)
    if initial is None or tuple(resets.shape) != (q.shape[0], n_chunks):
        raise ValueError(
            f"resets must be [batch, ceil(T / chunk_size)] = {[q.shape[0], n_chunks]} with an initial "
            f"state, got {list(resets.shape)} and initial={'given' if initial is not None else None}"
        )
    shapes, want = [list(w.shape) for w in initial.weights], [list(w.shape) for w in state.weights]
    if shapes != want:
        raise ValueError(f"the initial state of resets must be shaped like the state, {want}, got {shapes}")
    return n_chunks
