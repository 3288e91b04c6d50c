"""Upcycling from a Hugging Face Llama folder (safetensors). The converted model is checked
against a Llama forward written here in Hugging Face's own convention (rotate-half RoPE on
its q/k row order), independently of the name and row-order translation under test."""

import json
import os

import pytest
import torch

from devtools.hf_llama import hf_llama_logits, hf_weights, save_hf
from devtools.paths import REPO
from devtools.ranks import run_ranks
from titans_plugin.conversion.upcycle import upcycle
from titans_plugin.torchtitan022.args import TitansTrainArgs
from titans_plugin.torchtitan022.build import build_model, load_dcp_checkpoint, load_job_config, train_args
from titans_plugin.torchtitan022.flavors import TITANS_FLAVORS

MAL = os.path.join(REPO, "train_configs/debug_mal.toml")
FLAVOR = "test_gqa"  # grouped KV heads, so the k rows are permuted per KV head, not per query head
GQA = TitansTrainArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=64)
# fp32, two RoPE formulations (complex table, rotate-half): they differ by 1.3e-5 at most
# on logits of size 3; a q/k row order without the rotate-half permutation is off by ~1
TOLERANCE = 1e-4
HYBRID = ["--model.flavor", FLAVOR, "--titans.memory_out_init", "zero"]  # MAL starts as the Transformer


@pytest.fixture(autouse=True)
def _gqa_flavor(monkeypatch):
    monkeypatch.setitem(TITANS_FLAVORS, FLAVOR, GQA)


def _converted_logits(out, tokens, replace=None):
    model = build_model(train_args(load_job_config(MAL, *HYBRID)))
    load_dcp_checkpoint(model, out)
    if replace:
        model.load_state_dict({**model.state_dict(), **replace}, strict=True)  # a misspelt name raises
    with torch.no_grad():
        return model(tokens), model.state_dict()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    weights = hf_weights()
    return weights, save_hf(weights, tmp_path_factory.mktemp("hf") / "llama")


def test_hugging_face_llama_upcycles_to_a_hybrid_that_computes_the_same_logits(hf_folder, tmp_path):
    weights, folder = hf_folder
    out = str(tmp_path / "hybrid")
    lines = []
    result = upcycle(folder, MAL, out, HYBRID, log=lines.append)
    assert "layers.1.attention.wk.weight" in result["copied"]
    assert "output.weight" in result["copied"]
    assert any("Hugging Face" in line for line in lines)
    assert any("read 3/3" in line for line in lines)
    tokens = torch.randint(0, 2048, (2, 64), generator=torch.Generator().manual_seed(3))
    logits, state = _converted_logits(out, tokens)
    # names without a row permutation are copied as they are (bf16 -> fp32 is exact)
    assert torch.equal(state["layers.1.feed_forward.w1.weight"], weights["model.layers.1.mlp.gate_proj.weight"].float())
    reference = hf_llama_logits(weights, tokens)
    assert (logits - reference).abs().max() <= TOLERANCE
    # the check can fail: the Hugging Face rows copied as they are give other logits
    unpermuted = {
        f"layers.{i}.attention.w{x}.weight": weights[f"model.layers.{i}.self_attn.{x}_proj.weight"].float()
        for i in range(2)
        for x in "qk"
    }
    assert (_converted_logits(out, tokens, unpermuted)[0] - reference).abs().max() > 100 * TOLERANCE


def _upcycle_on_rank(rank, size, folder, out):
    TITANS_FLAVORS[FLAVOR] = GQA
    upcycle(folder, MAL, out, HYBRID, log=lambda *_: None)


def test_hugging_face_upcycle_sharded_over_three_processes(hf_folder, tmp_path):
    """Three FSDP shards split the 4 query heads and 2 KV heads unevenly: the q/k row
    permutation cannot run on the shards."""
    weights, folder = hf_folder
    single, sharded = str(tmp_path / "single"), str(tmp_path / "sharded")
    upcycle(folder, MAL, single, HYBRID, log=lambda *_: None)
    run_ranks(_upcycle_on_rank, 3, folder, sharded)
    tokens = torch.randint(0, 2048, (2, 64), generator=torch.Generator().manual_seed(4))
    (_, one_state), (two, two_state) = _converted_logits(single, tokens), _converted_logits(sharded, tokens)
    for name in one_state:
        if ".memory." not in name and ".persistent." not in name and "memory_norm" not in name:
            assert torch.equal(one_state[name], two_state[name]), name
    assert (two - hf_llama_logits(weights, tokens)).abs().max() <= TOLERANCE


def test_hugging_face_mismatches_name_the_first_one(tmp_path):
    def convert(weights, name, *extra):
        return upcycle(save_hf(weights, tmp_path / name), MAL, str(tmp_path / f"{name}-out"), [*HYBRID, *extra])

    qwen = hf_weights() | {"model.layers.0.self_attn.q_norm.weight": torch.ones(32)}
    with pytest.raises(ValueError, match=r"q_norm.weight is not a Llama weight"):
        convert(qwen, "qwen")
    with pytest.raises(ValueError, match="has 2 layers and the hybrid 4"):
        convert(hf_weights(), "layers", "--model.flavor", "debugmodel")
    tied = {k: v for k, v in hf_weights().items() if k != "lm_head.weight"}
    with pytest.raises(ValueError, match="has no output.weight"):
        convert(tied, "tied")  # no config.json saying the embedding is tied
    folder = save_hf(hf_weights(), tmp_path / "theta")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"rope_theta": 500000.0, "num_key_value_heads": 2, "rope_scaling": None}, f)
    with pytest.raises(ValueError, match=r"rope_theta=500000.0 and the hybrid's model.flavor has rope_theta=10000.0"):
        upcycle(folder, MAL, str(tmp_path / "theta-out"), HYBRID)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="neither a torchtitan DCP step folder"):
        upcycle(str(tmp_path / "empty"), MAL, str(tmp_path / "x"), HYBRID)
    assert not os.path.exists(tmp_path / "qwen-out")
    assert not os.path.exists(tmp_path / "tied-out")


def test_tied_embeddings_start_the_output_projection_as_the_embedding(tmp_path):
    """Llama 3.2 1B/3B store the embedding once (config.json: tie_word_embeddings)."""
    weights = {k: v for k, v in hf_weights(seed=5).items() if k != "lm_head.weight"}
    folder = save_hf(weights, tmp_path / "llama")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": True}, f)
    out = str(tmp_path / "hybrid")
    upcycle(folder, MAL, out, HYBRID, log=lambda *_: None)
    tokens = torch.randint(0, 2048, (2, 64), generator=torch.Generator().manual_seed(6))
    logits, state = _converted_logits(out, tokens)
    assert torch.equal(state["output.weight"], weights["model.embed_tokens.weight"].float())
    reference = hf_llama_logits(weights | {"lm_head.weight": weights["model.embed_tokens.weight"]}, tokens)
    assert (logits - reference).abs().max() <= TOLERANCE
