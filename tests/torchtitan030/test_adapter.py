"""The torchtitan 0.3.0 adapter: import hygiene, the config functions against their TOMLs,
command-line overrides, hybridize, and the model's checks and its reading of positions."""

import dataclasses
import tomllib
from importlib import resources

import pytest
import torch

from devtools.models import tiny_args
from devtools.processes import imports_then, python
from titans_plugin import config_registry, hybridize
from titans_plugin.config import TitansConfig
from titans_plugin.model import TitansTransformer
from titans_plugin.torchtitan030.build import load_job_config, train_args
from titans_plugin.torchtitan030.configs import flavors, titans_config
from titans_plugin.torchtitan030.model import TitansModel
from titans_plugin.training.datasets import TOKENIZER_DIR
from titans_plugin.training.llama3_names import titans_name

CONFIG_FUNCTIONS = sorted(n for n in dir(config_registry) if n.startswith("titans_"))


_REGISTERED = (
    "from torchtitan.hf_datasets.text_datasets import DATASETS\n"
    "from torchtitan.tools import utils\n"
    "print('titans_stories' in DATASETS, utils.device_type)\n"
)


@pytest.mark.parametrize("torchtitan_first", [True, False])
def test_importing_the_package_in_a_0_3_process_registers_nothing(torchtitan_first):
    imports = ["import torchtitan.trainer", "import titans_plugin, titans_plugin.model"]
    assert imports_then(imports, _REGISTERED, reverse=not torchtitan_first) == ["False", "cuda"]


def test_the_entry_module_registers_datasets_and_cpu_support():
    proc = python("import titans_plugin.config_registry\n" + _REGISTERED)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "cuda" if torch.cuda.is_available() else "cpu"]


def test_one_config_function_per_shipped_toml():
    tomls = sorted(p.name for p in resources.files("titans_plugin.train_configs").iterdir() if p.name.endswith(".toml"))
    assert len(CONFIG_FUNCTIONS) == len(tomls)
    for name in CONFIG_FUNCTIONS:
        config = getattr(config_registry, name)()
        assert config.model_spec.name == "titans", name


@pytest.mark.parametrize("toml", ["debug_mac.toml", "paper_170m_mac.toml", "llama3_8b_titans_mag.toml"])
def test_a_config_function_trains_what_its_toml_trains(toml):
    with resources.files("titans_plugin.train_configs").joinpath(toml).open("rb") as f:
        doc = tomllib.load(f)
    config = titans_config(toml)
    assert dataclasses.asdict(config.titans) == dataclasses.asdict(TitansConfig(**doc["titans"]))
    args = config.model_spec.model.args
    base = flavors()[doc["model"]["flavor"]]
    assert (args.dim, args.n_layers, args.n_heads, args.vocab_size) == (
        base.dim,
        base.n_layers,
        base.n_heads,
        base.vocab_size,
    )
    training = doc["training"]
    assert config.training.seq_len == training["seq_len"]
    assert config.training.steps == training["steps"]
    assert config.training.local_batch_size == training["local_batch_size"]
    assert config.dataloader.dataset == training["dataset"]
    assert config.optimizer.param_groups[0].optimizer_kwargs["lr"] == doc["optimizer"]["lr"]
    assert config.lr_scheduler.warmup_steps == doc["lr_scheduler"]["warmup_steps"]
    assert config.checkpoint.interval == doc["checkpoint"]["interval"]
    assert config.compile.enable == doc["compile"]["enable"]
    assert config.dump_folder == doc["job"]["dump_folder"]


def test_a_toml_key_without_a_0_3_counterpart_is_an_error(monkeypatch, tmp_path):
    import titans_plugin.torchtitan030.configs as configs

    text = resources.files("titans_plugin.train_configs").joinpath("debug_mag.toml").read_text()
    (tmp_path / "odd.toml").write_text(text + "\n[float8]\nenable_fsdp_float8_all_gather = true\n")
    monkeypatch.setattr(configs.resources, "files", lambda _: tmp_path)
    with pytest.raises(
        ValueError, match=r"odd.toml: no torchtitan 0.3.0 counterpart for \['float8.enable_fsdp_float8_all_gather'\]"
    ):
        configs.titans_config("odd.toml")


def test_titans_fields_are_command_line_overrides():
    config = load_job_config("titans_plugin:titans_debug_mac", "--titans.pattern", "GA", "--titans.window", "64")
    assert (config.titans.pattern, config.titans.window) == ("GA", 64)
    args = train_args(config)
    assert args.layer_types() == ["G", "A", "G", "A"]
    assert args.titans.window == 64


def test_the_old_name_of_a_field_still_reads_from_the_command_line():
    with pytest.warns(FutureWarning, match=r"titans\.kernel is deprecated: use titans\.backend"):
        config = load_job_config("titans_plugin:titans_debug_mac", "--titans.kernel", "naive")
    assert train_args(config).titans.backend == "naive"


def test_a_bad_override_names_the_field_before_anything_is_built():
    config = load_job_config("titans_plugin:titans_debug_mac", "--titans.memory_depth", "0")
    with pytest.raises(ValueError, match=r"titans\.memory_depth must be an integer >= 1"):
        train_args(config)
    config = load_job_config("titans_plugin:titans_debug_mac", "--parallelism.tensor_parallel_degree", "3")
    with pytest.raises(ValueError, match=r"tensor_parallel_degree=3 must divide the attention model\.n_heads=4"):
        train_args(config)
    config = load_job_config("titans_plugin:titans_debug_mac", "--parallelism.spmd_backend", "full_dtensor")
    with pytest.raises(ValueError, match=r"spmd_backend='full_dtensor' is not supported"):
        train_args(config)


def test_a_carried_memory_asks_for_cuda_graphs_off():
    """0.3.0 replays forward + backward as a CUDA graph by default, which would freeze the
    carried memory (model/carry.py)."""
    config = load_job_config("titans_plugin:titans_debug_mac", "--titans.carry_memory", "4")
    with pytest.raises(ValueError, match=r"carry_memory=4 cannot run with CUDA graphs .*disable_cuda_graphs"):
        train_args(config)
    config = load_job_config(
        "titans_plugin:titans_debug_mac", "--titans.carry_memory", "4", "--training.disable_cuda_graphs"
    )
    assert train_args(config).titans.carry_memory == 4


def test_builtin_selects_the_shipped_tokenizer():
    assert titans_config("debug_mac.toml").hf_assets_path == TOKENIZER_DIR
    config = load_job_config("torchtitan.models.llama3:llama3_debugmodel", "--hf_assets_path", "builtin")
    assert config.hf_assets_path != TOKENIZER_DIR  # llama3's own trainer config: builtin is ours only
    hybrid = hybridize(config, "GA")
    hybrid.hf_assets_path = "builtin"
    assert dataclasses.replace(hybrid).hf_assets_path == TOKENIZER_DIR


@pytest.mark.parametrize("flavor", ["debugmodel", "1B", "8B"])
def test_hybridize_keeps_the_llama3_sizes_and_every_other_setting(flavor):
    from torchtitan.models.llama3 import model_registry
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    base = llama3_debugmodel()
    base.model_spec = model_registry(flavor)  # 1B: embedding and output tied
    hybrid = hybridize(base, "GGA", window=512)
    args = hybrid.model_spec.model.args
    llama = base.model_spec.model
    assert (args.dim, args.n_layers, args.vocab_size) == (llama.dim, len(llama.layers), llama.vocab_size)
    assert args.ffn_hidden_dim == llama.layers[0].feed_forward.w1.out_features
    assert args.tie_embeddings == llama.enable_weight_tying
    assert args.rope_theta == llama.layers[0].attention.rope.theta
    assert args.titans.memory_heads == llama.layers[0].attention.n_heads
    assert args.layer_types()[:3] == ["G", "G", "A"]
    for name in ("training", "optimizer", "lr_scheduler", "checkpoint", "parallelism", "loss", "dataloader"):
        assert getattr(hybrid, name) == getattr(base, name), name
    with torch.device("meta"):
        model, reference = TitansModel(hybrid.model_spec.model), llama.build()
    # every llama3 weight of a checkpoint has its counterpart, of its shape, in the hybrid's A layers
    ours = {n: p.shape for n, p in model.state_dict().items()}
    a_layer = str(args.layer_types().index("A"))
    for name, p in reference.state_dict().items():
        if name.startswith("layers.") and name.split(".")[1] != a_layer:
            continue
        mapped = titans_name(name)
        assert ours.get(mapped) == p.shape, (name, mapped)
    assert (model.output.weight is model.tok_embeddings.weight) == args.tie_embeddings


def test_hybridize_errors_name_what_is_wrong():
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    with pytest.raises(ValueError, match=r"titans\.pattern: unknown layer type 'X'"):
        hybridize(llama3_debugmodel(), "GX")
    with pytest.raises(ValueError, match=r"unknown \[titans\] fields \['windw'\]"):
        hybridize(llama3_debugmodel(), "GA", windw=64)
    with pytest.raises(ValueError, match=r"titans\.window=4096 must be <= training\.seq_len=2048"):
        hybridize(llama3_debugmodel(), "GA", window=4096)
    with pytest.raises(ValueError, match=r"hybridize takes a torchtitan llama3 config"):
        hybridize(titans_config("debug_mac.toml"), "GA")


def _tiny(pattern: str, **titans) -> TitansModel:
    torch.manual_seed(0)
    model = TitansModel(TitansModel.Config(args=tiny_args(pattern, **titans))).double()
    model.verify_module_protocol()
    return model


@pytest.mark.parametrize("pattern", ["CA", "GA", "LA", "M"])
def test_block_causal_from_positions_equals_each_document_alone(pattern):
    """0.3.0's dataloader marks a document's start with position 0 (EOS is never an input)."""
    model = _tiny(pattern, attn_mask_type="block_causal")
    lengths = [7, 1, 13, 9]
    tokens = torch.randint(0, 50, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    packed = model(tokens, positions=positions)
    start = 0
    for n in lengths:
        alone = TitansTransformer.forward(model, tokens[:, start : start + n])
        assert (packed[:, start : start + n] - alone).abs().max() < 1e-10
        start += n


def test_causal_models_ignore_positions():
    model = _tiny("GA")
    tokens = torch.randint(0, 50, (2, 19))
    positions = torch.cat([torch.arange(9), torch.arange(10)]).expand(2, -1)
    assert torch.equal(model(tokens, positions=positions), TitansTransformer.forward(model, tokens))


def test_skip_lm_head_returns_the_normed_hidden_states():
    model = _tiny("GA")
    tokens = torch.randint(0, 50, (1, 11))
    logits = model(tokens)
    model._skip_lm_head = True
    hidden = model(tokens)
    assert torch.allclose(model.lm_head(hidden), logits)
