"""bench/stream_drift.py: a trained checkpoint's loss along a long read of held-out stories."""

import pytest

from bench.needle_drift import MODES, SPANS
from bench.stream_drift import held_out_stream, measure, render
from devtools.models import tiny_model
from titans_plugin.inference.trained import Trained

BOS, EOS = 1, 2


class WordTokenizer:
    """One id per word (3 to 49), BOS and EOS as asked: the shape of torchtitan's encode."""

    bos_id, eos_id = BOS, EOS

    def encode(self, text: str, add_bos: bool, add_eos: bool) -> list[int]:
        ids = [3 + sum(map(ord, w)) % 47 for w in text.split()]
        return [BOS] * add_bos + ids + [EOS] * add_eos


def test_the_stream_is_held_out_stories_each_a_document():
    trained = Trained(tiny_model("G").eval(), WordTokenizer(), 64)
    tokens = held_out_stream(trained, 5000)
    assert len(tokens) == 5000
    assert tokens[0] == BOS
    assert tokens.count(BOS) > 10
    assert abs(tokens.count(BOS) - tokens.count(EOS)) <= 1
    with pytest.raises(ValueError, match="fewer than"):
        held_out_stream(trained, 10**9)


@pytest.mark.slow  # 65,536 tokens, three times
def test_measure_reads_in_training_lengths_and_reports_each_span():
    trained = Trained(tiny_model("G").eval(), WordTokenizer(), 256)
    r = measure(trained)
    assert r["piece"] == 256
    assert set(r["spans"]) == set(MODES)
    assert all(len(r["spans"][m]) == len(SPANS) for m in MODES)
    text = render({"MAG": {**r, "command": "python -m bench.stream_drift ...", "date": "2026-12-06"}})
    assert text.count("| MAG |") == len(MODES)  # MAG: every mode applies
    assert "tokens 32,768-65,536" in text


def test_a_training_length_that_does_not_divide_the_first_span_is_refused():
    with pytest.raises(ValueError, match=r"training.seq_len=48 must divide 2,048"):
        measure(Trained(tiny_model("G").eval(), WordTokenizer(), 48))
