"""The synthetic recall tasks (titans_plugin/evals/recall_tasks.py) put every answer where the targets
say, at least min_distance tokens before the query that asks for it."""

import pytest
import torch

from titans_plugin.evals.recall_tasks import IGNORE, N_VALUES, NEEDLE, QUERY, SEP, VOCAB, make_batch


def test_passkey_answer_is_the_needles_key_far_enough_back():
    g = torch.Generator().manual_seed(0)
    x, y = make_batch("passkey", 64, 96, 64, g)
    assert x.shape == y.shape == (64, 96)
    assert x.max() < VOCAB
    assert (x[:, -1] == QUERY).all()
    assert ((y != IGNORE).sum(1) == 1).all()
    assert (y[:, -1] != IGNORE).all()
    for row in range(64):
        (pos,) = (x[row] == NEEDLE).nonzero()[0]
        assert (x[row] == NEEDLE).sum() == 1
        assert x[row, pos + 1] == y[row, -1] < N_VALUES
        assert 95 - (pos + 1) >= 64


def test_mqar_every_query_gets_its_pairs_value():
    g = torch.Generator().manual_seed(0)
    x, y = make_batch("mqar", 16, 96, 64, g)
    for row in range(16):
        pairs = {x[row, i].item(): (x[row, i + 1].item(), i) for i in range(0, 8, 2)}
        answers = (y[row] != IGNORE).nonzero().flatten()
        assert len(answers) == 4
        for t in answers:
            assert x[row, t - 1] == SEP
            value, where = pairs[x[row, t].item()]
            assert y[row, t] == value
            assert t - where >= 64


def test_bad_task_and_too_short_sequences_are_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="task must be one of"):
        make_batch("copy", 2, 96, 64, g)
    with pytest.raises(ValueError, match="seq_len 40"):
        make_batch("passkey", 2, 40, 64, g)
