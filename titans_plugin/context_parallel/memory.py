"""A neural memory under context parallel: its scan continues from the previous shard.

Two ways, chosen by `[titans] cp_scan`:

- "serial": each shard waits for the previous shard's end state (memory, unfinished
  chunk, conv history), scans, and hands its own on. Exact for every memory; the shards
  scan one after another.
- "parallel" (linear memory, no inner-gradient clip): each shard scans from a zero state
  and computes how its scan responds to the state it will start from, without waiting
  (kernels/state_response.py). Only the hand-off stays in order, one small matmul per
  shard: end = end(from zero) + P @ [W; S]. Exact too; each shard does about three times
  the scan work of the serial way (the response has twice the value columns).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from titans_plugin.kernels import MemoryState, add_start_state, response_output, state_response
from titans_plugin.kernels.state import state_dtype
from titans_plugin.memory import NeuralMemory

from .transport import SequenceShard


def run_sharded_memory(memory: NeuralMemory, x, shard: SequenceShard, start_only: list, parallel: bool):
    """memory(x) for this shard of the sequence, continuing from the shards before it."""
    if not parallel:
        return shard.serial(memory, x, start_only)
    before = None
    if memory.config.conv_kernel:
        # every shard takes part in the exchange; the first receives nothing
        (before,) = shard.previous((x,), memory.config.conv_kernel - 1)
    if shard.is_first:

        def step(x, _):
            out, state = memory(x, None)
            return out, state.memory

        out = shard.serial(step, x, start_only)
        # The first shard's halo is empty, but its exchange has a backward (it receives
        # the next shard's gradient for the tokens it sent), which runs only if used.
        return out if before is None else out + 0 * before.sum()
    scan = scan_from_zero(memory, x, None if before is None else conv_tail_after(memory, before))
    # the end state goes to the next shard before this shard's output projections
    return shard.serial(
        lambda x, start: hand_over(memory, scan, start),
        x,
        start_only,
        finish=lambda X: memory.output(scan.xn, response_output(scan.y0, scan.U, X)),
    )


class ZeroStartScan(NamedTuple):
    """scan_from_zero's result: the memory input (normed), the output and end state from
    a zero state, the response to the start state, the gates."""

    xn: torch.Tensor
    y0: torch.Tensor
    end0: MemoryState
    U: torch.Tensor
    P: MemoryState
    gates: tuple[torch.Tensor, ...]


def conv_tail_after(memory: NeuralMemory, x_before: torch.Tensor):
    """The conv tail that tokens x_before [B, n, dim] (the n <= K - 1 tokens just before a
    shard; fewer at the start of the sequence) leave behind."""
    if memory.conv_q is None:
        return None
    xn = memory.input_norm(x_before)
    pad = memory.config.conv_kernel - 1 - x_before.shape[1]
    return tuple(F.pad(lin(xn), (0, 0, pad, 0)) for lin in (memory.wq, memory.wk, memory.wv))


def scan_from_zero(memory: NeuralMemory, x: torch.Tensor, conv_tail) -> ZeroStartScan:
    """The scan of x (whole chunks, a chunk boundary first) from a zero state, and its
    response to the start state (kernels/state_response.py): everything a shard can
    compute before the previous shard's end state arrives. Depth 1, no clip."""
    B, T, _ = x.shape
    c = memory.config
    if c.depth != 1 or c.max_grad_norm or T % c.chunk_size:
        raise ValueError(
            "a scan from zero (titans.cp_scan='parallel') needs titans.memory_depth=1 (got "
            f"{c.depth}), titans.max_grad_norm=0 (got {c.max_grad_norm}) and whole chunks per shard "
            f"({T} tokens, titans.chunk_size={c.chunk_size})"
        )
    xn = memory.input_norm(x)
    q, k, v, _ = memory.project(xn, conv_tail)
    seq = memory.chunk_gates((q, k, v, *memory.gates(xn)))
    shape = (B, q.shape[2], memory.head_dim, memory.head_dim)
    sd = state_dtype(q)
    zero = torch.zeros(shape, dtype=sd, device=x.device)
    y0, end0 = memory.scan(seq, MemoryState((zero,), (zero,)))
    # U in the state's dtype: from bf16 inputs it would come back rounded to bf16
    U, P = state_response(
        q.to(sd), k.to(sd), *seq[3:], chunk_size=c.chunk_size, activation=c.activation, backend=c.backend
    )
    return ZeroStartScan(xn, y0, end0, U, P, seq[3:])


def hand_over(memory: NeuralMemory, scan: ZeroStartScan, start: MemoryState) -> tuple[torch.Tensor, MemoryState]:
    """This shard's end state, given the state it starts from (the previous shard's end):
    one small matmul. Returns the start state stacked [B, H, 2D, D] for the output, and
    the end state for the next shard."""
    X, end = add_start_state(scan.end0, scan.P, start)
    if memory.training:
        memory.record_stats(scan.gates, end)
    return X, end
