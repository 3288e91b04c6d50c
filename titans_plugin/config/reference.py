"""docs/configuration.md's table of `[titans]` fields, generated from their declarations.

    python -m titans_plugin.config.reference --write docs/configuration.md

rewrites the table between its markers; tests/test_config_fields.py fails when the page
is stale."""

import argparse
import dataclasses
import re

from titans_plugin.blocks import BLOCK_TYPES
from titans_plugin.utils.fields import declared, default_of

from .titans import MODEL_FIELDS, TitansConfig

BEGIN, END = "<!-- titans-fields -->", "<!-- /titans-fields -->"


def _default(value) -> str:
    return f'`"{value}"`' if isinstance(value, str) else f"`{value}`"


def readers(name: str, memory: bool) -> str:
    """Which block types read a field, as letters (every model for the model's own)."""
    if name in MODEL_FIELDS:
        return "every model"
    letters = [letter for letter, b in BLOCK_TYPES.items() if name in b.settings or (memory and b.has_memory)]
    return " ".join(letters)


def fields_table(config_class=TitansConfig) -> str:
    rows = ["| field | default | allowed | read by | meaning |", "|---|---|---|---|---|"]
    for f in declared(config_class):
        memory = "memory" in f.metadata
        cells = [f"`{f.name}`", _default(default_of(f)), f.metadata["check"].allowed, readers(f.name, memory)]
        rows.append("| " + " | ".join([*cells, f.metadata["help"]]) + " |")
    renamed = [f for f in dataclasses.fields(config_class) if "renamed_to" in f.metadata]
    if renamed:
        names = ", ".join(f"`{f.name}` is now `{f.metadata['renamed_to']}`" for f in renamed)
        rows += ["", f"Renamed fields ({names}): the old name still works, with a warning."]
    return "\n".join(rows)


def with_table(page: str) -> str:
    """The page with its table replaced by the current one."""
    if BEGIN not in page or END not in page:
        raise ValueError(f"the page has no {BEGIN} ... {END} markers")
    block = f"{BEGIN}\n{fields_table()}\n{END}"
    return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, page, flags=re.S)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m titans_plugin.config.reference", description=__doc__)
    p.add_argument("--write", metavar="PAGE", help="rewrite the table in this page (else print it)")
    a = p.parse_args(argv)
    if not a.write:
        print(fields_table())
        return
    with open(a.write) as f:
        page = f.read()
    with open(a.write, "w") as f:
        f.write(with_table(page))


if __name__ == "__main__":
    main()
