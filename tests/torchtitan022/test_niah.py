"""Needle-in-a-haystack: the model a TOML describes loads a DCP checkpoint (through the
adapter's build helpers), prompts read in pieces equal one pass, and the scoring gives the
known answer."""

import os

import torch

from devtools.paths import REPO
from titans_plugin.evals import niah
from titans_plugin.torchtitan022.build import build_model, load_dcp_checkpoint, load_job_config, train_args

CONFIG = os.path.join(REPO, "train_configs", "debug_mac.toml")


def _model(seed: int):
    torch.manual_seed(seed)
    args = train_args(load_job_config(CONFIG, "--training.seq_len", "512", "--validation.no-enable"))
    return build_model(args).eval()


def test_dcp_checkpoint_round_trip(tmp_path):
    import torch.distributed.checkpoint as dcp

    trained = _model(1)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    dcp.save(trained.state_dict(), checkpoint_id=str(tmp_path))
    loaded = load_dcp_checkpoint(_model(2), str(tmp_path))
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_prompt_read_in_pieces_equals_one_pass():
    model = _model(0)
    tok = niah.tokenizer()
    ids = niah.haystack_ids(tok, 300)
    logits, loss = niah.read_prompt(model, ids, piece=128)
    with torch.no_grad():
        full = model(torch.tensor([ids]))[0]
    assert torch.allclose(logits, full[-1], atol=1e-4)
    ref = torch.nn.functional.cross_entropy(full[:-1], torch.tensor(ids[1:])).item()
    assert abs(loss - ref) < 1e-3


def test_prompt_holds_the_needle_at_its_depth_and_ends_with_the_question():
    tok = niah.tokenizer()
    keys = niah.single_token_keys(tok)
    hay = niah.haystack_ids(tok, 400)
    key = next(iter(keys))
    needle = tok.encode(niah.NEEDLE.format(key=" " + key)).ids
    question = tok.encode(niah.QUESTION).ids
    ids = niah.build_prompt(tok, hay, 400, 0.5, key)
    assert len(ids) == 400
    assert ids[-len(question) :] == question
    at = (400 - len(needle) - len(question)) // 2
    assert ids[at : at + len(needle)] == needle
    assert keys[key] in needle


def test_scoring_gives_the_known_answer():
    keys = {"red": 3, "blue": 7, "moon": 11}
    logits = torch.zeros(20)
    logits[7] = 5.0
    assert niah.score(logits, keys, "blue") == (1, 1)  # the model names the key
    assert niah.score(logits, keys, "red") == (0, 0)  # it names another candidate
    logits[15] = 9.0  # a non-key token wins overall; "blue" still leads the candidates
    assert niah.score(logits, keys, "blue") == (0, 1)
    assert niah.score(logits, keys, "moon") == (0, 0)
