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


@pytest.mark.parametrize("pattern", ["G", "L", "M", "GW"])
def test_memory_restarted_starts_every_memory_afresh_and_carries_the_attention_on(pattern, monkeypatch):
    """Each piece after the first: every memory starts from no state, every attention
    continues from the previous piece's keys at its position; the losses are the stream's
    on the first piece only."""
    from titans_plugin.blocks.attention import Attention
    from titans_plugin.memory.neural_memory import NeuralMemory

    model = tiny_model(pattern).eval()
    memory_states, attention_positions = [], []
    memory_forward, attention_forward = NeuralMemory.forward, Attention.forward

    def memory_spy(self, x, state=None, starts=None):
        memory_states.append(state)
        return memory_forward(self, x, state, starts)

    def attention_spy(self, x, freqs_cis, cache=None, doc_ids=None):
        attention_positions.append(None if cache is None else cache.pos)
        return attention_forward(self, x, freqs_cis, cache, doc_ids)

    monkeypatch.setattr(NeuralMemory, "forward", memory_spy)
    monkeypatch.setattr(Attention, "forward", attention_spy)
    memory = piece_losses(model, _tokens(3), PIECE, "memory restarted")
    assert memory_states
    assert all(state is None for state in memory_states)
    per_piece = len(attention_positions) // 3
    if per_piece:  # MAG, MAL: the attention goes on where the last piece ended
        assert attention_positions == [None] * per_piece + [PIECE] * per_piece + [2 * PIECE] * per_piece
    monkeypatch.undo()
    stream = piece_losses(model, _tokens(3), PIECE, "stream")
    assert memory[0] == stream[0]
    assert all(abs(m - s) > 1e-9 for m, s in zip(memory[1:], stream[1:], strict=True))


@pytest.mark.parametrize("pattern", ["C", "W", "CW"])
def test_memory_restarted_does_not_apply_without_a_memory_or_with_macs(pattern):
    assert piece_losses(tiny_model(pattern).eval(), _tokens(2), PIECE, "memory restarted") is None


def test_span_means_average_the_pieces_in_each_span():
    losses = [float(i) for i in range(32)]  # 32 pieces of 2,048: 65,536 tokens
    assert span_means(losses, 2048) == [0.0, 2.0, 5.5, 11.5, 23.5]


def test_a_piece_that_does_not_divide_the_read_is_refused():
    with pytest.raises(ValueError, match="piece 12 must divide the 24 tokens read and 2,048"):
        piece_losses(tiny_model("G").eval(), _tokens(3), 12, "stream")
