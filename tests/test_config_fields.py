"""The `[titans]` fields: each declared once, and everything derived from the declarations
(validation, the memory's config, --set parsing, the docs table) in step with them."""

import dataclasses
import os

import pytest

from devtools.paths import REPO
from titans_plugin.blocks import BLOCK_TYPES
from titans_plugin.config import TitansConfig, fields_read_by
from titans_plugin.config.reference import fields_table, with_table
from titans_plugin.memory import MemoryConfig
from titans_plugin.utils.fields import declared, default_of, parse_text


def test_every_field_is_declared_with_a_check_and_help():
    current = [f.name for f in dataclasses.fields(TitansConfig) if "renamed_to" not in f.metadata]
    assert [f.name for f in declared(TitansConfig)] == current
    for f in declared(TitansConfig):
        assert f.metadata["help"], f.name
        assert f.metadata["check"].allowed, f.name
        assert f.metadata["check"].ok(default_of(f)), f"the default of {f.name} fails its own check"


def test_the_memory_config_maps_every_memory_field():
    mapped = {f.metadata["memory"] for f in declared(TitansConfig) if "memory" in f.metadata}
    assert mapped == {f.name for f in dataclasses.fields(MemoryConfig)} - {"dim"}
    config = TitansConfig(memory_heads=3, memory_head_dim=7, backend="naive", memory_out_init="zero").memory_config(24)
    assert (config.dim, config.n_heads, config.head_dim, config.backend, config.out_init) == (24, 3, 7, "naive", "zero")
    assert MemoryConfig(dim=24) == TitansConfig().memory_config(24)  # one set of defaults


def test_every_field_is_read_and_every_setting_a_block_reads_is_declared():
    names = {f.name for f in declared(TitansConfig)}
    assert fields_read_by(set(BLOCK_TYPES)) == names
    for letter, block in BLOCK_TYPES.items():
        assert set(block.settings) <= names, letter


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("memory_heads", 0, r"titans\.memory_heads must be an integer >= 1, got 0"),
        ("memory_activation", "swish", r"titans\.memory_activation must be one of \['gelu', 'relu', 'silu', 'tanh'\]"),
        ("lr_init", 1.0, r"titans\.lr_init must be in \(0, 1\)"),
        ("max_momentum", 1.5, r"titans\.max_momentum must be in \(0, 1\]"),
        ("window", 600, r"titans\.window=600 must be <= training\.seq_len=512"),
        ("mal_form", "parallel", r"titans\.mal_form must be one of \['stacked', 'fused'\]"),
        ("backend", "cuda", r"titans\.backend must be one of"),
    ],
)
def test_a_bad_value_names_the_field_and_the_allowed_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TitansConfig(pattern="CGLMW", **{field: value}).validate(dim=64, n_layers=5, seq_len=512)


def test_only_the_fields_the_layers_read_are_checked():
    TitansConfig(pattern="A", memory_heads=0, window=10**6, mal_form="?").validate(dim=64, n_layers=2, seq_len=512)
    with pytest.raises(ValueError, match="titans.window"):
        TitansConfig(pattern="W", window=10**6).validate(dim=64, n_layers=2, seq_len=512)
    TitansConfig(pattern="G", mal_form="?").validate(dim=64, n_layers=2, seq_len=512)  # MAL's field, no MAL layer


@pytest.mark.parametrize(
    ("field", "text", "value"),
    [("memory_depth", "1", 1), ("max_lr", "0.5", 0.5), ("pattern", "GA", "GA"), ("layers", "C,A", ["C", "A"])],
)
def test_set_parses_each_field_by_its_declared_type(field, text, value):
    f = {f.name: f for f in declared(TitansConfig)}[field]
    assert parse_text(f, text, f"titans.{field}") == value


def test_set_names_the_field_when_the_text_is_not_of_its_type():
    f = {f.name: f for f in declared(TitansConfig)}["memory_depth"]
    with pytest.raises(
        ValueError, match=r"titans\.memory_depth must be an integer >= 1 \(1 = linear memory\), got 'two'"
    ):
        parse_text(f, "two", "titans.memory_depth")


def test_the_docs_table_is_generated_from_the_declarations():
    path = os.path.join(REPO, "docs", "configuration.md")
    with open(path) as f:
        page = f.read()
    assert with_table(page) == page, "docs/configuration.md is stale: python -m titans_plugin.config.reference --write"
    rows = [line for line in fields_table().splitlines() if line.startswith("| `")]
    assert len(rows) == len(declared(TitansConfig))


def test_a_renamed_field_still_reads_with_a_warning_naming_the_new_name():
    with pytest.warns(FutureWarning, match=r"titans\.kernel is deprecated: use titans\.backend"):
        config = TitansConfig(pattern="M", kernel="naive")
    assert (config.backend, config.kernel) == ("naive", None)
    assert config.memory_config(24).backend == "naive"
    late = TitansConfig(pattern="M")
    late.kernel = "chunk"  # set after construction (a config function editing the dataclass)
    with pytest.warns(FutureWarning):
        late.validate(dim=24, n_layers=1)
    assert late.backend == "chunk"
    with pytest.raises(ValueError, match=r"titans\.kernel \(the old name of titans\.backend\) is 'naive' but"):
        TitansConfig(kernel="naive", backend="chunk")
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"titans\.backend must be one of"):
        TitansConfig(pattern="M", kernel="cuda").validate(dim=24, n_layers=1)
    assert "`kernel` is now `backend`" in fields_table()
