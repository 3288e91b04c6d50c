"""What a long read does to a model (bench/needle_curve.py's `drift` command): the next-token
loss over DRIFT_TOKENS of held-out stories, span by span, read three ways in pieces of the
training length:

- as one stream (how the needle evaluation reads its prompts);
- with every memory restarted at each piece (its learned initial weights, zero momentum),
  the attention's keys and positions carried on: MAG, MAL and LMM, whose caches hold the
  memory's state apart from the attention's;
- with everything restarted at each piece (each piece read alone, positions from 0).

A model whose loss grows along the stream but not with its memory restarted is hurt by the
state its memory reaches after a long read, not by the positions or by the text."""

import torch
import torch.nn.functional as F

from titans_plugin.blocks.attention import KVCache
from titans_plugin.blocks.mag import MAGCache
from titans_plugin.blocks.mal import MALCache
from titans_plugin.memory.neural_memory import NeuralMemoryState
from titans_plugin.model import TitansTransformer

DRIFT_TOKENS = 65536
SPANS = [(0, 2048), (2048, 8192), (8192, 16384), (16384, 32768), (32768, 65536)]  # token ranges reported
MODES = ("stream", "memory restarted", "all restarted")


class NoMemoryState(Exception):
    """A layer cache that keeps its memory's state inside the rest (MAC's segment weights)."""


def restart_memory(cache):
    """The layer cache with its memory's state dropped, so the next piece starts the memory
    afresh and carries on the rest (an attention layer's cache as it is)."""
    if isinstance(cache, NeuralMemoryState):  # LMM: the cache is the memory's state
        return None
    if isinstance(cache, MAGCache | MALCache):
        return cache._replace(memory=None)
    if isinstance(cache, KVCache):
        return cache
    raise NoMemoryState(type(cache).__name__)


@torch.no_grad()
def piece_losses(model: TitansTransformer, tokens: list[int], piece: int, mode: str) -> list[float] | None:
    """Mean next-token loss of each piece of `tokens` (a multiple of `piece` long, plus 1),
    read in `mode` (MODES); None where the mode does not apply to the model: "memory
    restarted" to a model without a memory, or with MAC's."""
    if (len(tokens) - 1) % piece or SPANS[0][1] % piece:
        raise ValueError(f"piece {piece} must divide the {len(tokens) - 1:,} tokens read and {SPANS[0][1]:,}")
    x = torch.tensor([tokens])
    model.cover_positions(len(tokens))
    caches, losses = None, []
    for lo in range(0, len(tokens) - 1, piece):
        if caches is not None and mode == "memory restarted":
            try:
                caches = [restart_memory(c) for c in caches]
            except NoMemoryState:
                return None
            if all(isinstance(c, KVCache) for c in caches):
                return None  # no memory to restart
        if mode == "all restarted":
            caches = None
        logits, caches = model.forward_cached(x[:, lo : lo + piece], caches)
        losses.append(F.cross_entropy(logits[0].float(), x[0, lo + 1 : lo + piece + 1]).item())
    return losses


def span_means(losses: list[float], piece: int) -> list[float]:
    """The pieces' losses averaged over each of SPANS (pieces of equal length: a plain mean)."""
    return [sum(losses[lo // piece : hi // piece]) / ((hi - lo) // piece) for lo, hi in SPANS]
