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

from .sequence_shard import SequenceShard


def run_sharded_memory(memory, x, shard: SequenceShard, start_only: list, parallel: bool):
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
    scan = memory.scan_from_zero(x, None if before is None else memory.conv_tail_after(before))
    # the end state goes to the next shard before this shard's output projections
    return shard.serial(
        lambda x, start: memory.hand_over(scan, start), x, start_only, finish=lambda X: memory.output_from(scan, X)
    )
