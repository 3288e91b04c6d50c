"""TitansConfig: the `[titans]` section, one declaration per field, and its one validation.

Each field is declared once, with its default, its check and its help text:
- the memory's fields by MemoryConfig (titans_plugin/memory/config.py), mapped here under
  their `[titans]` names (`memory_heads` is the memory's `n_heads`);
- the block types' and the model's fields below.
Which block types read a field is not written here: a block type names the settings it
reads in its `__init__` (blocks/base.py). `validate` checks the fields the chosen layers
read, then the rules that tie fields together, naming the TOML field and the allowed
values; the converter's `--set` parsing and docs/configuration.md's table
(config/reference.py) come from the same declarations. Flat on purpose: a TOML section
maps field for field."""

import dataclasses
import warnings
from dataclasses import dataclass

from titans_plugin.blocks import BLOCK_TYPES
from titans_plugin.memory import TRITON_DEPTHS, MemoryConfig
from titans_plugin.utils.fields import Check, check_value, declared, integer, one_of, positive, setting

from .pattern import PATTERN_HELP, parse_layer_spec

_MEMORY_FIELDS = {f.name: f for f in dataclasses.fields(MemoryConfig)}


def memory_setting(name: str, rule: str = ""):
    """A `[titans]` field that is the memory's field `name`: its default, check and help
    (plus, in `rule`, how it ties to other fields of the section)."""
    f = _MEMORY_FIELDS[name]
    help = f.metadata["help"] + (f"; {rule}" if rule else "")
    return setting(f.default, f.metadata["check"], help, memory=name)


def span(default: int, help: str):
    """A length in tokens that must fit in a training sequence."""
    return setting(default, integer(1), help + "; <= `training.seq_len`", span=True)


_PATTERN = Check("a variant (mac, mag, mal, lmm, attention, swa) or letters from A W C G L M", lambda v: True)
_LAYERS = Check("one letter per layer, exactly n_layers of them (or empty)", lambda v: isinstance(v, list))


@dataclass
class TitansConfig:
    # the layers
    pattern: str = setting("C", _PATTERN, PATTERN_HELP)
    layers: list[str] = setting(None, _LAYERS, "explicit per-layer types; overrides `pattern`", factory=list)
    # the neural memory (declared by MemoryConfig)
    memory_heads: int = memory_setting(
        "n_heads", "must divide `dim` unless `memory_head_dim` is set, and be divisible by the TP degree"
    )
    memory_head_dim: int = memory_setting("head_dim")
    memory_depth: int = memory_setting("depth")
    memory_expansion: float = memory_setting("expansion")
    memory_activation: str = memory_setting("activation")
    chunk_size: int = memory_setting("chunk_size")
    conv_kernel: int = memory_setting("conv_kernel")
    max_lr: float = memory_setting("max_lr")
    max_momentum: float = memory_setting("max_momentum")
    max_forget: float = memory_setting("max_forget")
    max_grad_norm: float = memory_setting("max_grad_norm")
    lr_init: float = memory_setting("lr_init")
    forget_init: float = memory_setting("forget_init")
    memory_out_init: str = memory_setting("out_init")
    gate_mode: str = memory_setting("gate_mode")
    backend: str = memory_setting("backend", "triton needs `memory_depth` 1 or 2")
    # attention around the memory
    segment_len: int = span(128, "MAC segment length")
    window: int = span(128, "sliding window of MAG, MAL and W layers")
    n_persistent: int = setting(
        4, integer(0), "persistent memory tokens per block (MAC, MAG: attention; MAL: memory prefix)"
    )
    gate_scale_init: float = setting(
        1.0,
        positive(),
        "MAC and MAG: where the learnable scale of the gate's attention branch starts (the weight of RMSNorm_y in "
        "RMSNorm_y(y) * sigmoid(RMSNorm_m(m))); at 1 a deep model's first gradient is thousands of times a "
        "Transformer's, 0.02 starts it at a Transformer's ([measured](blocks.md#the-gates-initial-scale))",
    )
    mac_memory_input: str = setting(
        "residual",
        one_of(["residual", "attention"]),
        "what MAC's memory stores: the block's input plus the attention output, or the attention output alone "
        "([why](blocks.md#mac-what-the-memory-stores))",
    )
    mal_form: str = setting(
        "stacked",
        one_of(["stacked", "fused"]),
        "MAL as two pre-norm residual sub-layers (memory, then sliding-window attention) or the memory inside the "
        "attention's residual ([why](blocks.md#mal-stacked-or-fused))",
    )
    attn_mask_type: str = setting(
        "causal",
        one_of(["causal", "block_causal"]),
        "block_causal: training and validation windows pack documents, and every layer treats each document as if "
        "it were alone (attention masks, the memory restarting from its initial state on its own chunk grid, "
        "MAC's segments) ([packed documents](blocks.md#packed-documents))",
    )
    carry_memory: int = setting(
        0,
        integer(0),
        "training from warmed memories: each training forward's memories continue, without gradient, from the "
        "state the previous one ended in (its attention starts afresh), and restart from their learned initial "
        "state every N forwards (microbatches); 0 or 1: every forward starts from it. For models that will read "
        "far past `training.seq_len` (no effect on a model without memory layers); not with attn_mask_type = "
        "'block_causal' or context parallel "
        "([how and why](blocks.md#training-from-warmed-memories))",
    )
    cp_scan: str = setting(
        "serial",
        one_of(["serial", "parallel"]),
        "context parallel only: how a shard's memory scan continues from the previous shard. serial waits for its "
        "end state (any memory); parallel scans from zero and adds the start state when it arrives, for LMM and "
        "MAG layers, and needs `memory_depth = 1`, `max_grad_norm = 0` and whole chunks per shard; about 3x the "
        "scan work per shard, so it can pay only from 4 shards on "
        "([when](parallelism.md#a-linear-memory-shards-that-scan-in-parallel-cp_scan))",
    )

    # renamed fields: the old name still reads, with a warning naming the new one
    kernel: str | None = dataclasses.field(default=None, metadata={"renamed_to": "backend"})

    def __post_init__(self) -> None:
        self.adopt_renamed()

    def adopt_renamed(self) -> None:
        """Move a value given under a field's old name to the new name (run again by
        `validate` and `memory_config`, for a value set after construction)."""
        for f in dataclasses.fields(self):
            new = f.metadata.get("renamed_to")
            old_value = getattr(self, f.name)
            if new is None or old_value is None:
                continue
            warnings.warn(f"titans.{f.name} is deprecated: use titans.{new}", FutureWarning, stacklevel=3)
            default = next(g.default for g in dataclasses.fields(self) if g.name == new)
            if getattr(self, new) not in (default, old_value):
                raise ValueError(
                    f"titans.{f.name} (the old name of titans.{new}) is {old_value!r} but titans.{new} is "
                    f"{getattr(self, new)!r}: set titans.{new} only"
                )
            setattr(self, new, old_value)
            setattr(self, f.name, None)

    def layer_types(self, n_layers: int) -> list[str]:
        if self.layers:
            return parse_layer_spec(self.layers, n_layers, field="titans.layers")
        return parse_layer_spec(self.pattern, n_layers, field="titans.pattern")

    def uses_memory(self, n_layers: int) -> bool:
        return any(BLOCK_TYPES[letter].has_memory for letter in self.layer_types(n_layers))

    def carries_memory(self, n_layers: int) -> bool:
        """Training forwards continue the previous forward's memories (carry_memory > 1, and
        there is a memory layer to carry)."""
        return self.carry_memory > 1 and self.uses_memory(n_layers)

    def memory_config(self, dim: int) -> MemoryConfig:
        """The memory every memory layer of a model of width `dim` is built with."""
        self.adopt_renamed()
        mapped = {f.metadata["memory"]: getattr(self, f.name) for f in declared(self) if "memory" in f.metadata}
        return MemoryConfig(dim=dim, **mapped)

    def validate(self, dim: int, n_layers: int, seq_len: int | None = None) -> list[str]:
        """Every check that can run before a model is built, naming the TOML field; returns
        the per-layer block letters. Only the fields the chosen block types read are
        checked (their settings, and the memory's when one takes a memory)."""
        self.adopt_renamed()
        letters = self.layer_types(n_layers)
        read = fields_read_by(set(letters), type(self))
        for f in declared(self):
            if f.name in read:
                check_value(f, getattr(self, f.name), f"titans.{f.name}")
                if seq_len is not None and f.metadata.get("span") and getattr(self, f.name) > seq_len:
                    raise ValueError(f"titans.{f.name}={getattr(self, f.name)} must be <= training.seq_len={seq_len}")
        self._check_rules(dim, read)
        return letters

    def _check_rules(self, dim: int, read: set[str]) -> None:
        """The rules that tie one field to another."""
        if "memory_heads" in read and not self.memory_head_dim and dim % self.memory_heads:
            _fail("memory_heads", f"a divisor of model.dim={dim} (or set titans.memory_head_dim)", self.memory_heads)
        if "backend" in read and self.backend.startswith("triton") and self.memory_depth not in TRITON_DEPTHS:
            _fail(
                "memory_depth", f"one of {list(TRITON_DEPTHS)} with titans.backend={self.backend!r}", self.memory_depth
            )
        if "backend" in read and self.backend == "gluon_cluster" and self.memory_depth != 2:
            _fail("memory_depth", "2 with titans.backend='gluon_cluster'", self.memory_depth)
        if self.carry_memory > 1 and self.attn_mask_type == "block_causal":  # each document starts a memory
            _fail("carry_memory", "0 or 1 with titans.attn_mask_type='block_causal'", self.carry_memory)
        if "cp_scan" in read and self.cp_scan == "parallel":  # the scan is affine in its start state only then
            if self.memory_depth != 1:
                _fail("memory_depth", "1 with titans.cp_scan='parallel' (a linear memory)", self.memory_depth)
            if self.max_grad_norm != 0:
                _fail("max_grad_norm", "0 with titans.cp_scan='parallel' (no clip)", self.max_grad_norm)


MODEL_FIELDS = ("pattern", "layers", "attn_mask_type", "carry_memory")


def fields_read_by(letters: set[str], config_class: type = TitansConfig) -> set[str]:
    """The `[titans]` fields that models with these block types read."""
    read = set(MODEL_FIELDS)
    for letter in letters:
        block = BLOCK_TYPES[letter]
        read.update(block.settings)
        if block.has_memory:
            read.update(f.name for f in declared(config_class) if "memory" in f.metadata)
    return read


def _fail(name: str, allowed: str, value) -> None:
    raise ValueError(f"titans.{name} must be {allowed}, got {value!r}")
