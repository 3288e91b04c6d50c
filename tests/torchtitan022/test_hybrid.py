"""Turning llama3 models and configs into hybrids."""

import copy
import dataclasses
import tomllib

import pytest
import torch
from torchtitan.models.llama3 import Transformer, llama3_args

from titans_plugin.config import TitansConfig
from titans_plugin.conversion.convert import convert
from titans_plugin.conversion.convert import main as convert_main
from titans_plugin.conversion.hybrid import build_hybrid_model, swap_layers
from titans_plugin.model.args import LLAMA_FIELDS

SMALL = TitansConfig(memory_heads=4, chunk_size=8, segment_len=16, window=16, n_persistent=2, memory_expansion=2)


def _llama(seed=0):
    torch.manual_seed(seed)
    args = copy.deepcopy(llama3_args["debugmodel"])
    args.n_layers, args.max_seq_len = 4, 64
    model = Transformer(args)
    with torch.no_grad():  # as torchtitan's trainer calls it
        model.init_weights()
    return model


def test_swap_keeps_untouched_layers_bit_identical_and_trains():
    model = _llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replaced = swap_layers(model, {1: "G", 3: "C"}, SMALL)
    assert replaced == [1, 3]
    for key, value in model.state_dict().items():
        if not key.startswith(("layers.1.", "layers.3.")):
            assert torch.equal(value, before[key]), key
    assert type(model.layers["0"]).__name__ == "TransformerBlock"
    assert model.layers["1"].block_type == "G"
    assert model.layers["3"].block_type == "C"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, 2048, (2, 33))
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_swapped_attention_block_equals_llama_block():
    """An 'A' layer of ours computes exactly what llama3's TransformerBlock computes."""
    from titans_plugin.blocks import AttentionBlock

    model = _llama()
    ours = AttentionBlock(0, model.model_args)
    ours.load_state_dict(model.layers["0"].state_dict())
    x = torch.randn(2, 20, model.model_args.dim)
    expected = model.layers["0"](x, model.freqs_cis, attention_masks=None)
    assert torch.allclose(ours(x, model.freqs_cis), expected, atol=1e-5)


def test_swap_on_meta_device_defers_init():
    with torch.device("meta"):
        args = copy.deepcopy(llama3_args["debugmodel"])
        model = Transformer(args)
    swap_layers(model, "AG", SMALL)
    assert model.layers["1"].block_type == "G"
    assert next(model.layers["1"].parameters()).device.type == "meta"


def test_swap_validates_the_fields_of_the_block_types_it_inserts():
    with torch.device("meta"):
        model = Transformer(copy.deepcopy(llama3_args["debugmodel"]))
    bad = dataclasses.replace(SMALL, pattern="A", mal_form="parallel")
    with pytest.raises(ValueError, match="titans.mal_form"):
        swap_layers(model, {1: "L"}, bad)  # the config's own pattern has no MAL layer
    assert swap_layers(model, {1: "G"}, bad) == [1]  # MAG does not read mal_form


def test_build_hybrid_from_flavor_keeps_llama_sizes():
    m = build_hybrid_model("debugmodel", "CA", SMALL)
    base = llama3_args["debugmodel"]
    assert (m.model_args.dim, m.model_args.n_layers, m.model_args.n_heads) == (base.dim, base.n_layers, base.n_heads)
    assert m.layer_types == ["C", "A"] * 3
    # llama3's RoPE scaling carries over: the same frequency table
    from torchtitan.models.llama3.model.model import precompute_freqs_cis as llama_freqs

    ref = llama_freqs(base.dim // base.n_heads, m.model_args.max_seq_len, base.rope_theta, base.rope_scaling_args)
    assert torch.allclose(m.freqs_cis, ref)


LLAMA_8B_TOML = b"""
[job]
dump_folder = "./outputs"
[model]
name = "llama3"
flavor = "8B"
hf_assets_path = "./assets/hf/Llama-3.1-8B"
[training]
local_batch_size = 1
seq_len = 8192
steps = 1000
dataset = "c4"
[parallelism]
data_parallel_shard_degree = -1
tensor_parallel_degree = 8
"""


def test_converter_output_loads_in_torchtitan_with_same_dimensions(tmp_path):
    src, dst = tmp_path / "llama3_8b.toml", tmp_path / "titans_8b.toml"
    src.write_bytes(LLAMA_8B_TOML)
    assert convert_main([str(src), "--pattern", "GGA", "-o", str(dst), "--set", "window=2048"]) == 0

    from titans_plugin.torchtitan022.build import build_model, load_job_config, train_args

    job = load_job_config(str(dst))
    assert job.model.name == "titans"
    assert job.titans.pattern == "GGA"
    assert job.titans.window == 2048
    assert job.parallelism.tensor_parallel_degree == 8
    assert job.training.seq_len == 8192
    args = train_args(job)
    base = llama3_args["8B"]
    for field in LLAMA_FIELDS:
        if field != "max_seq_len":  # training.seq_len sets it
            assert getattr(args, field) == getattr(base, field), field
    assert args.titans.memory_heads == base.n_heads  # head dim 128, not the full width
    model = build_model(args, device="meta")
    assert model.layer_types[:3] == ["G", "G", "A"]


def test_converter_rejects_bad_pattern_before_writing(tmp_path, capsys):
    src, dst = tmp_path / "in.toml", tmp_path / "out.toml"
    src.write_bytes(LLAMA_8B_TOML)
    assert convert_main([str(src), "--pattern", "GZ", "-o", str(dst)]) == 2
    assert "titans.pattern" in capsys.readouterr().err
    assert not dst.exists()
    with pytest.raises(ValueError, match="--set expects KEY=VALUE"):
        convert(LLAMA_8B_TOML.decode(), "G", ["nonsense=1"])


def test_converter_keeps_comments_layout_and_values():
    text = (
        '# our 8B run\n[model]\nname = "llama3"  # the base\nflavor = "8B"\n\n'
        "[training]\nseq_len = 8192   # long\nsteps = 1_000\n\n[optimizer]\nlr = 3e-4\n"
    )
    out = convert(text, "GGA", ["window=2048"])
    assert out.startswith("# our 8B run\n[model]\n")
    for line in (
        "seq_len = 8192   # long",
        "steps = 1_000",
        "lr = 3e-4",
        'flavor = "llama3_8B"',
        'name = "titans"  # the base',
    ):
        assert line in out.splitlines(), line
    parsed = tomllib.loads(out)
    assert parsed["titans"] == {"pattern": "GGA", "memory_heads": 32, "window": 2048}
    assert parsed["experimental"]["custom_import"] == "titans_plugin.torchtitan022"
    assert convert(out.replace("titans", "llama3", 1).replace('"llama3_8B"', '"8B"'), "G").count("[titans]") == 1


SHARED = {
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
    "attention_norm.weight",
    "ffn_norm.weight",
}


def test_swap_keeps_the_weights_the_new_block_shares():
    from titans_plugin.conversion.hybrid import shared_weights

    model = _llama()
    old = {i: copy.deepcopy(model.layers[str(i)]) for i in (1, 2, 3)}
    swap_layers(model, {1: "G", 2: "L", 3: "C"}, dataclasses.replace(SMALL, memory_out_init="zero"))
    for i, o in old.items():
        new = model.layers[str(i)]
        assert set(shared_weights(o, new)) == SHARED, i
        for name in SHARED:
            assert torch.equal(new.state_dict()[name], o.state_dict()[name]), (i, name)
        assert torch.count_nonzero(new.memory.wo.weight) == 0  # memory_out_init = "zero"
        assert new.memory.init_memory[0].std() > 0  # what is new is initialised, not copied
    fresh = _llama()
    swap_layers(fresh, {1: "G"}, SMALL, keep_weights=False)
    assert not torch.equal(fresh.layers["1"].attention.wq.weight, old[1].attention.wq.weight)


def test_mal_with_a_zero_memory_output_starts_as_the_transformer():
    """Stacked MAL with memory_out_init = "zero" and a window covering the sequence
    computes what the llama3 model computed, so continued training starts from its loss."""
    model = _llama()
    tokens = torch.randint(0, 2048, (2, 16))
    with torch.no_grad():
        before = model(tokens)
        swap_layers(model, {0: "L", 2: "L"}, dataclasses.replace(SMALL, memory_out_init="zero"))
        after = model(tokens)
    assert (after - before).abs().max() <= 1e-5
