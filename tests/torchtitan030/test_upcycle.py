"""Upcycling on torchtitan 0.3.0: a 0.3.0 llama3 DCP checkpoint (its names:
`attention.qkv_linear.wq`, `lm_head`) and a Hugging Face Llama folder (read through 0.3.0's
llama3 state-dict adapter) become hybrids that compute what the Transformer computed."""

import textwrap

import pytest
import torch
import torch.distributed.checkpoint as dcp

from devtools.hf_llama import hf_llama_logits, hf_weights, save_hf
from titans_plugin.conversion.upcycle import upcycle
from titans_plugin.torchtitan030.build import build_model, load_dcp_checkpoint, load_job_config, train_args

CONFIGS = textwrap.dedent(
    """
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    from titans_plugin import hybridize
    from titans_plugin.config import TitansConfig
    from titans_plugin.model import TitansModelArgs
    from titans_plugin.torchtitan030.configs import model_spec, titans_config


    def llama3_debug_mal():  # torchtitan's llama3 debug model, every layer MAL, memory output zero
        return hybridize(llama3_debugmodel(), pattern="L", memory_out_init="zero", memory_heads=4)


    def small_gqa_mal():  # the sizes of devtools/hf_llama.py
        config = titans_config("debug_mal.toml")
        config.titans = TitansConfig(pattern="L", memory_out_init="zero", memory_heads=4, chunk_size=32)
        sizes = dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=64)
        config.model_spec = model_spec("small_gqa", TitansModelArgs(**sizes, titans=config.titans))
        return config
    """
)


@pytest.fixture
def configs(tmp_path, monkeypatch):
    (tmp_path / "upcycle_configs.py").write_text(CONFIGS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "upcycle_configs"


def _hybrid(config: str, checkpoint: str):
    model = build_model(train_args(load_job_config(config)))
    load_dcp_checkpoint(model, checkpoint)
    return model.eval()


def test_a_llama3_checkpoint_upcycled_to_mal_computes_llama3s_logits(configs, tmp_path):
    from torchtitan.models.llama3 import llama3_configs

    torch.manual_seed(0)
    llama = llama3_configs["debugmodel"](attn_backend="flex").build()
    llama.init_states()
    with torch.no_grad():  # norms away from 1, so a norm read wrongly shows
        for name, p in llama.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    source = str(tmp_path / "llama3" / "step-10")
    dcp.save(llama.state_dict(), checkpoint_id=source)
    out = str(tmp_path / "hybrid")
    result = upcycle(source, f"{configs}:llama3_debug_mal", out, log=lambda *_: None)
    assert "layers.5.attention.wq.weight" in result["copied"]
    assert "output.weight" in result["copied"]
    tokens = torch.randint(0, 2048, (2, 100), generator=torch.Generator().manual_seed(1))  # within the window
    positions = torch.arange(100).expand(2, -1)
    with torch.no_grad():
        expected = llama(tokens, positions, llama.get_attention_masks(positions=positions))
        got = _hybrid(f"{configs}:llama3_debug_mal", out)(tokens)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_hugging_face_llama_upcycles_through_the_0_3_adapter(configs, tmp_path):
    weights = hf_weights()
    folder = save_hf(weights, tmp_path / "hf")
    out = str(tmp_path / "hybrid")
    upcycle(folder, f"{configs}:small_gqa_mal", out, log=lambda *_: None)
    tokens = torch.randint(0, 2048, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = _hybrid(f"{configs}:small_gqa_mal", out)(tokens)
    # fp32, two RoPE formulations (complex table, rotate-half): 1e-4 (as the 0.2.2 test)
    assert (logits - hf_llama_logits(weights, tokens)).abs().max() <= 1e-4
