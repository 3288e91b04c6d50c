"""bench/niah.py: loads a DCP checkpoint into the model a TOML describes, reads prompts in
pieces exactly as one pass would, and scores the needle it planted."""

import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import niah  # noqa: E402

CONFIG = os.path.join(REPO, "train_configs", "debug_mac.toml")


def test_dcp_checkpoint_round_trip(tmp_path):
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(1)
    trained = niah.build_model(CONFIG, "", 512)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    dcp.save(trained.state_dict(), checkpoint_id=str(tmp_path))
    loaded = niah.build_model(CONFIG, str(tmp_path), 512)
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_prompt_read_in_pieces_equals_one_pass_and_needle_is_scored():
    torch.manual_seed(0)
    model = niah.build_model(CONFIG, "", 512)
    tok = niah.tokenizer()
    keys = niah.single_token_keys(tok)
    ids = niah.haystack_ids(tok, 300)
    logits, loss = niah.read_prompt(model, ids, piece=128)
    with torch.no_grad():
        full = model(torch.tensor([ids]))[0]
    assert torch.allclose(logits, full[-1], atol=1e-4)
    ref = torch.nn.functional.cross_entropy(full[:-1], torch.tensor(ids[1:])).item()
    assert abs(loss - ref) < 1e-3
    key = next(iter(keys))
    exact, ranked, _ = niah.run_cell(model, tok, keys, ids, 300, 0.5, key, piece=128)
    assert exact in (0, 1) and ranked in (0, 1)
    needle = tok.encode(niah.NEEDLE.format(key=" " + key)).ids
    assert keys[key] in needle
