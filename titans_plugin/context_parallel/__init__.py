"""Context parallel: every sequence cut into contiguous shards over ranks.

transport.py       SequenceShard: the point-to-point and collective exchanges between
                   shards, each an autograd Function, replayed under recomputation
layout.py          contiguous_shard: this rank's shard from what the trainer handed it
ring_attention.py  full causal attention passing key/value blocks along the shards
memory.py          a memory's scan continuing from the previous shard (serial, or from a
                   zero state and the start-state response for a linear memory)

The blocks call into this package (`forward_shard`); it knows the memory, not the blocks."""

from .layout import contiguous_shard
from .memory import run_sharded_memory
from .ring_attention import RING_DEVICES, ring_causal_attention
from .transport import SequenceShard, flush_sends

__all__ = [
    "RING_DEVICES",
    "SequenceShard",
    "contiguous_shard",
    "flush_sends",
    "ring_causal_attention",
    "run_sharded_memory",
]
