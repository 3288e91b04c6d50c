"""Upcycling a trained Transformer checkpoint into a hybrid checkpoint (single process;
integration_tests/test_upcycle_torchrun.py runs it sharded and trains from the result)."""

import os

import pytest
import torch
import torch.distributed.checkpoint as dcp

from devtools.paths import REPO
from titans_plugin.conversion.upcycle import main, plan, upcycle
from titans_plugin.torchtitan022.build import build_model, load_dcp_checkpoint, load_job_config, train_args

ATTENTION = os.path.join(REPO, "train_configs/debug_attention.toml")
MAL = os.path.join(REPO, "train_configs/debug_mal.toml")
MAG = os.path.join(REPO, "train_configs/debug_mag.toml")


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    """A debug-size attention model with non-default weights, saved as a DCP folder."""
    torch.manual_seed(1)
    model = build_model(train_args(load_job_config(ATTENTION)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp("ckpt") / "step-10")
    dcp.save(model.state_dict(), checkpoint_id=path)
    return model, path


def _load(config, path, *overrides):
    model = build_model(train_args(load_job_config(config, *overrides)))
    return load_dcp_checkpoint(model, path)


def test_upcycled_mal_starts_as_the_transformer(transformer, tmp_path):
    source, path = transformer
    out = str(tmp_path / "hybrid")
    result = upcycle(path, MAL, out, ["--titans.memory_out_init", "zero"], log=lambda *_: None)
    hybrid = _load(MAL, out, "--titans.memory_out_init", "zero")
    shared = set(result["copied"])
    assert "tok_embeddings.weight" in shared
    assert "layers.0.attention.wq.weight" in shared
    assert any(".memory." in k for k in result["initialised"])
    for name, value in hybrid.state_dict().items():
        if name in shared:
            assert torch.equal(value, source.state_dict()[name]), name
    tokens = torch.randint(0, 2048, (2, 128))  # within MAL's window (128)
    with torch.no_grad():
        assert (hybrid(tokens) - source(tokens)).abs().max() <= 1e-5


def test_upcycle_refuses_mismatches_and_overwrites(transformer, tmp_path, capsys):
    _, path = transformer
    with pytest.raises(ValueError, match=r"tok_embeddings.weight is \[2048, 256\] in the checkpoint and \[2048, 128\]"):
        plan({"tok_embeddings.weight": (2048, 128)}, {"tok_embeddings.weight": (2048, 256)}, path)
    with pytest.raises(ValueError, match="has no x"):
        plan({"x": (1,)}, {"y": (1,)}, path)
    with pytest.raises(ValueError, match="has 1 layers and the hybrid 2"):
        plan({"layers.0.a": (1,), "layers.1.a": (1,)}, {"layers.0.a": (1,)}, path)
    out = tmp_path / "hybrid"
    out.mkdir()
    (out / "keep.txt").write_text("data")
    assert main([path, MAG, "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "data"
