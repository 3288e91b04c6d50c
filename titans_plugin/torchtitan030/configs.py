"""torchtitan 0.3.0 configs for Titans models.

- `titans_config(toml)`: a `TitansTrainer.Config` that trains what a shipped 0.2.2 TOML
  trains (train_configs/*.toml, installed as titans_plugin.train_configs): the same model,
  data, optimizer, schedule, checkpointing and parallelism. The config functions in
  titans_plugin/config_registry.py are these, one per TOML.
- `hybridize(config, pattern, **titans_fields)`: any torchtitan 0.3.0 llama3 config
  (`llama3_debugmodel()`, `llama3_8b()`, ...) as a Titans hybrid with the llama3's sizes,
  every other setting kept.
- `model_spec(flavor, args)`: the ModelSpec a config carries.
"""

import dataclasses
import tomllib
from importlib import resources

from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.loss import CrossEntropyLoss
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
from torchtitan.components.validate import Validator
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.config.configs import DebugConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC
from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader
from torchtitan.protocols.model_spec import ModelSpec
from torchtitan.trainer import Trainer

from titans_plugin.config import TitansConfig
from titans_plugin.model import TitansModelArgs
from titans_plugin.training.flavors import TITANS_SIZES

from .llama3 import llama3_flavors, titans_fields_from_llama
from .metrics import TitansMetricsProcessor
from .model import TitansModel
from .parallelize import parallelize_titans
from .trainer import TitansTrainer

MODEL_NAME = "titans"


def flavors() -> dict[str, TitansModelArgs]:
    """The plugin's sizes and every torchtitan llama3 size as `llama3_<name>`."""
    out = {name: TitansModelArgs(**sizes) for name, sizes in TITANS_SIZES.items()}
    for name, config in llama3_flavors().items():
        out[f"llama3_{name}"] = TitansModelArgs(**titans_fields_from_llama(config))
    return out


def model_spec(flavor: str, args: TitansModelArgs) -> ModelSpec:
    return ModelSpec(
        name=MODEL_NAME,
        flavor=flavor,
        model=TitansModel.Config(args=args),
        parallelize_fn=parallelize_titans,
        pipelining_fn=None,
        post_optimizer_build_fn=None,
        state_dict_adapter=None,
    )


def _flavor_args(flavor: str, titans: TitansConfig) -> TitansModelArgs:
    table = flavors()
    if flavor not in table:
        raise ValueError(f"model.flavor must be one of {sorted(table)}, got {flavor!r}")
    return dataclasses.replace(table[flavor], titans=titans)


# -- a shipped TOML as a 0.3.0 config ----------------------------------------------------
# 0.2.2 keys with no 0.3.0 counterpart because 0.3.0 has no TOML: the entry module and the
# model name are the config function itself.
_ONLY_022 = {("job", "custom_config_module"), ("experimental", "custom_import"), ("model", "name")}
_DESCRIPTIONS = {("job", "description")}


def _take(doc: dict, section: str, used: set) -> dict:
    values = dict(doc.get(section, {}))
    used.update((section, key) for key in values)
    return values


def titans_config(toml: str) -> TitansTrainer.Config:
    """The 0.3.0 config that trains what train_configs/<toml> trains on 0.2.2."""
    with resources.files("titans_plugin.train_configs").joinpath(toml).open("rb") as f:
        doc = tomllib.load(f)
    used: set = set(_ONLY_022 | _DESCRIPTIONS)
    job, model = _take(doc, "job", used), _take(doc, "model", used)
    titans = TitansConfig(**_take(doc, "titans", used))
    args = _flavor_args(model.get("flavor", "debugmodel"), titans)
    training = _take(doc, "training", used)
    dataset = training.pop("dataset", "titans_stories")
    optimizer = _take(doc, "optimizer", used)
    if optimizer.pop("name", "AdamW") != "AdamW":
        raise ValueError(f"{toml}: optimizer.name must be 'AdamW'")
    validation = _take(doc, "validation", used)
    validation.pop("seq_len", None)  # 0.3.0 validates at training.seq_len
    ac = _take(doc, "activation_checkpoint", used)
    mode = ac.get("mode", "selective")
    if mode == "selective" and str(ac.get("selective_ac_option", "op")) != "op":
        raise ValueError(
            f"{toml}: activation_checkpoint.selective_ac_option must be 'op' (0.3.0 has no per-layer option)"
        )
    config = TitansTrainer.Config(
        model_spec=model_spec(model.get("flavor", "debugmodel"), args),
        titans=titans,
        hf_assets_path=model.get("hf_assets_path", "builtin"),
        dump_folder=job.get("dump_folder", "./outputs"),
        loss=CrossEntropyLoss.Config(global_vocab_size=args.vocab_size),
        optimizer=default_adamw(**optimizer),
        lr_scheduler=LRSchedulersContainer.Config(**_take(doc, "lr_scheduler", used)),
        training=TrainingConfig(**training),
        dataloader=HuggingFaceTextDataLoader.Config(dataset=dataset),
        metrics=TitansMetricsProcessor.Config(**_take(doc, "metrics", used)),
        checkpoint=CheckpointManager.Config(**_take(doc, "checkpoint", used)),
        activation_checkpoint=None if mode == "none" else (FullAC.Config() if mode == "full" else SelectiveAC.Config()),
        compile=CompileConfig(**_take(doc, "compile", used)),
        parallelism=ParallelismConfig(**_take(doc, "parallelism", used)),
        debug=DebugConfig(**_take(doc, "debug", used)),
        validator=Validator.Config(
            enable=validation.pop("enable", False),
            dataloader=HuggingFaceTextDataLoader.Config(
                dataset=validation.pop("dataset", "titans_stories_validation"), infinite=False
            ),
            **validation,
        ),
    )
    unknown = sorted(f"{s}.{k}" for s, values in doc.items() for k in values if (s, k) not in used)
    if unknown:
        raise ValueError(f"{toml}: no torchtitan 0.3.0 counterpart for {unknown}")
    return config


# -- any llama3 config as a hybrid --------------------------------------------------------
def hybridize(config: Trainer.Config, pattern: str, **titans_fields) -> TitansTrainer.Config:
    """A torchtitan 0.3.0 llama3 config (`llama3_debugmodel()`, `llama3_8b()`, ...) as a
    Titans hybrid: the llama3's sizes (width, layers, heads, feed-forward, RoPE, weight
    tying) with `pattern` naming each layer's block type, `titans_fields` any other
    `[titans]` field, and every other setting of `config` kept. Memory heads default to the
    attention heads. Checked as the TOML converter checks, before anything is built."""
    spec = config.model_spec
    if spec is None or spec.name != "llama3":
        found = None if spec is None else spec.name
        raise ValueError(f"hybridize takes a torchtitan llama3 config (model_spec.name 'llama3'), got {found!r}")
    sizes = titans_fields_from_llama(spec.model)
    known = {f.name for f in dataclasses.fields(TitansConfig)}
    unknown = sorted(set(titans_fields) - known)
    if unknown:
        raise ValueError(f"unknown [titans] fields {unknown}; allowed: {sorted(known)}")
    titans = TitansConfig(**{"memory_heads": sizes["n_heads"], **titans_fields, "pattern": pattern})
    args = TitansModelArgs(**sizes, titans=titans)
    titans.validate(args.dim, args.n_layers, config.training.seq_len)
    kept = {f.name: getattr(config, f.name) for f in dataclasses.fields(Trainer.Config) if f.init}
    kept.pop("metrics")
    metrics = TitansMetricsProcessor.Config(
        **{f.name: getattr(config.metrics, f.name) for f in dataclasses.fields(config.metrics) if f.init}
    )
    return TitansTrainer.Config(
        **{**kept, "model_spec": model_spec(f"llama3_{spec.flavor}", args)}, titans=titans, metrics=metrics
    )
