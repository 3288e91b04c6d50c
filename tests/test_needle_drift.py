"""bench/needle_drift.py: the loss along a long read, streamed, with the memory restarted,
and with everything restarted at every piece."""

import pytest
import torch
import torch.nn.functional as F

from bench.needle_drift import piece_losses, span_means
from devtools.models import tiny_model

PIECE = 8  # a multiple of the tiny models' memory chunk (4) and MAC segment


def _tokens(n_pieces: int) -> list[int]:
    return torch.randint(0, 50, (n_pieces * PIECE + 1,), generator=torch.Generator().manual_seed(0)).tolist()


def _loss(logits, targets) -> float:
    return F.cross_entropy(logits[0].float(), targets).item()


@pytest.mark.parametrize("pattern", ["G", "L", "M", "C", "W"])
def test_the_stream_is_the_full_pass_and_all_restarted_reads_each_piece_alone(pattern):
    model = tiny_model(pattern).eval()
    tokens = _tokens(3)
    x = torch.tensor([tokens])
    with torch.no_grad():
        full = model(x[:, :-1])
        alone = [model(x[:, lo : lo + PIECE]) for lo in range(0, 3 * PIECE, PIECE)]
    stream = piece_losses(model, tokens, PIECE, "stream")
    restarted = piece_losses(model, tokens, PIECE, "all restarted")
    for i, lo in enumerate(range(0, 3 * PIECE, PIECE)):
        targets = x[0, lo + 1 : lo + PIECE + 1]
        assert stream[i] == pytest.approx(_loss(full[:, lo : lo + PIECE], targets), abs=1e-9)
        assert restarted[i] == pytest.approx(_loss(alone[i], targets), abs=1e-9)


@pytest.mark.parametrize("pattern", ["G", "L", "M"])
def test_memory_restarted_keeps_the_attention_and_starts_the_memory_afresh(pattern):
    """The first piece is the stream's; later ones differ from the stream's (the memory
    forgot) and, where attention carries keys across pieces, from each piece read alone."""
    model = tiny_model(pattern).eval()
    tokens = _tokens(3)
    stream = piece_losses(model, tokens, PIECE, "stream")
    memory = piece_losses(model, tokens, PIECE, "memory restarted")
    alone = piece_losses(model, tokens, PIECE, "all restarted")
    assert memory[0] == stream[0]
    assert all(abs(m - s) > 1e-9 for m, s in zip(memory[1:], stream[1:], strict=True))
    if pattern != "M":  # the window reaches back into the previous piece
        assert all(abs(m - a) > 1e-9 for m, a in zip(memory[1:], alone[1:], strict=True))
    else:  # a pure memory model keeps nothing else
        assert memory == pytest.approx(alone, abs=1e-12)


@pytest.mark.parametrize("pattern", ["C", "W"])
def test_memory_restarted_does_not_apply_where_no_cache_keeps_the_memory_apart(pattern):
    assert piece_losses(tiny_model(pattern).eval(), _tokens(2), PIECE, "memory restarted") is None


def test_span_means_average_the_pieces_in_each_span():
    losses = [float(i) for i in range(32)]  # 32 pieces of 2,048: 65,536 tokens
    assert span_means(losses, 2048) == [0.0, 2.0, 5.5, 11.5, 23.5]
