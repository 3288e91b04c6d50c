"""Training from warmed memories (`titans.carry_memory = N`).

A model trained only from its learned initial memory has never read from the state its
memory reaches after tens of thousands of tokens, and streamed that far its loss drifts up
([measured](../../docs/results.md#reading-after-a-long-haystack-warm-up-training)). With
this setting each training forward's memories start where the previous forward's ended
(detached: no gradient crosses forwards), and every N-th forward starts afresh, so training
sees memories warmed by up to N - 1 earlier batches. Only the memories carry on: the
attention, its positions and everything else start afresh each forward, as without it.

The state lives on the model, not in its checkpoint: a resumed run starts a new cycle."""

from typing import Any

import torch

from titans_plugin.context_parallel.transport import map_tree
from titans_plugin.utils.torch_internals import mark_static


class MemoryCarry:
    """Which memory state each training forward starts from, and the count that restarts it."""

    def __init__(self, every: int):
        self.every = every
        self.forwards = 0
        self.states: list[Any] | None = None
        self.shape: torch.Size | None = None

    def starts(self, tokens: torch.Tensor, n_layers: int) -> list[Any]:
        """Per layer, the state this forward starts from (None: the learned initial memory).
        A forward of another batch shape (a last, shorter batch) starts a new cycle."""
        fresh = self.states is None or self.forwards % self.every == 0 or tokens.shape != self.shape
        if fresh:
            self.forwards = 0
            return [None] * n_layers
        for state in self.states:  # type: ignore[union-attr]
            map_tree(_static, state)
        return list(self.states)  # type: ignore[arg-type]

    def keep(self, states: list[Any], tokens: torch.Tensor) -> None:
        self.states, self.shape = states, tokens.shape
        self.forwards += 1


def _static(leaf) -> None:
    """Per-block torch.compile: a carried state's sizes (its unfinished chunk's length
    differs from one forward or block type to the next) stay constants of the graph, so
    dynamo specializes on them rather than tracing them as symbols."""
    if isinstance(leaf, torch.Tensor):
        mark_static(leaf)
