"""docs/blocks.md's worked example, built from the page: a block type with a field of its
own is its class plus one declaration, and everything else follows."""

import dataclasses
import os
import re
import textwrap

import pytest
import torch

from devtools.models import TINY_TITANS
from devtools.paths import REPO
from titans_plugin import blocks
from titans_plugin.config import TitansConfig
from titans_plugin.config.reference import fields_table
from titans_plugin.model import TitansModelArgs, TitansTransformer
from titans_plugin.utils.fields import Check, declared, parse_text, setting


def _example(name: str) -> str:
    with open(os.path.join(REPO, "docs", "blocks.md")) as f:
        page = f.read()
    match = re.search(rf"<!-- example:{name} -->\n```python\n(.*?)```", page, re.S)
    assert match, f"docs/blocks.md lost its example:{name}"
    return match.group(1)


@pytest.fixture
def with_example(monkeypatch):
    """(the block class, the config class with the field declared) as the page shows them."""
    scope: dict = {}
    exec(_example("block"), scope)
    cls = scope["DropoutMAGBlock"]
    field_scope = {"setting": setting, "Check": Check}
    body = "class ConfigWithField(TitansConfig):\n" + textwrap.indent(textwrap.dedent(_example("field")), "    ")
    exec(body, {**field_scope, "TitansConfig": TitansConfig}, field_scope)
    config_class = dataclasses.dataclass(field_scope["ConfigWithField"])
    monkeypatch.setitem(blocks.BLOCK_TYPES, "D", cls)
    return cls, config_class


def _model(config_class, pattern: str, **fields) -> TitansTransformer:
    torch.manual_seed(0)
    config = config_class(pattern=pattern, **{**TINY_TITANS, **fields})
    args = TitansModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=50, multiple_of=16, max_seq_len=64, titans=config)
    return TitansTransformer(args).double()


def test_the_block_type_reads_the_field_it_names(with_example):
    cls, config_class = with_example
    assert cls.settings == ("window", "n_persistent", "cp_scan", "memory_dropout")
    assert cls.has_memory
    model = _model(config_class, "DA", memory_dropout=0.25)
    assert type(model.layers["0"]) is cls
    assert model.layers["0"].memory_dropout == 0.25
    # in eval mode the dropout is the identity: the layer is MAG
    tokens = torch.randint(0, 50, (2, 19))
    mag = _model(config_class, "GA", memory_dropout=0.25)
    assert torch.equal(model.eval()(tokens), mag.eval()(tokens))
    assert not torch.equal(model.train()(tokens), mag.train()(tokens))


def test_the_field_is_checked_only_where_a_layer_reads_it(with_example):
    _, config_class = with_example
    with pytest.raises(ValueError, match=r"titans\.memory_dropout must be in \[0, 1\), got 1\.5"):
        config_class(pattern="DA", memory_dropout=1.5).validate(dim=64, n_layers=2)
    config_class(pattern="GA", memory_dropout=1.5).validate(dim=64, n_layers=2)


def test_the_field_parses_from_text_and_appears_in_the_docs_table(with_example):
    _, config_class = with_example
    field = {f.name: f for f in declared(config_class)}["memory_dropout"]
    assert parse_text(field, "0.1", "titans.memory_dropout") == 0.1
    row = next(line for line in fields_table(config_class).splitlines() if line.startswith("| `memory_dropout`"))
    assert "| D |" in row
    assert "in [0, 1)" in row
