"""A setting declared once: its default, the check on its value and its help text.

A setting is a dataclass field made with `setting(...)`. What is derived from that one
declaration: the check of a user's value (`check_value`), parsing a value from text
(`parse_text`: the converter's `--set KEY=VALUE`), and the documentation table
(titans_plugin/config/reference.py). The caller names the field in its own terms
(`titans.memory_heads`), so one declaration serves every place that reads it."""

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple


class Check(NamedTuple):
    """What a value must be: `allowed` in words ("an integer >= 1"), and the test."""

    allowed: str
    ok: Callable[[Any], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(minimum: int, note: str = "") -> Check:
    return Check(f"an integer >= {minimum}" + (f" {note}" if note else ""), lambda v: _is_int(v) and v >= minimum)


def positive() -> Check:
    return Check("a number > 0", lambda v: _is_number(v) and math.isfinite(v) and v > 0)


def at_least_zero(note: str = "") -> Check:
    return Check("a number >= 0" + (f" {note}" if note else ""), lambda v: _is_number(v) and v >= 0)


def fraction(*, closed_above: bool, note: str = "") -> Check:
    """In (0, 1] (closed_above) or (0, 1)."""
    if closed_above:
        return Check("in (0, 1]" + (f" {note}" if note else ""), lambda v: _is_number(v) and 0 < v <= 1)
    return Check("in (0, 1)" + (f" {note}" if note else ""), lambda v: _is_number(v) and 0 < v < 1)


def one_of(values) -> Check:
    allowed = list(values)
    return Check(f"one of {allowed}", lambda v: v in allowed)


def anything() -> Check:
    return Check("any value", lambda v: True)


def setting(default, check: Check, help: str, *, factory: Callable[[], Any] | None = None, **metadata):
    """A dataclass field carrying its check and help text (plus any metadata the owner of
    the settings reads, e.g. which memory field a [titans] field maps to)."""
    meta = {"check": check, "help": help, **metadata}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls) -> list[dataclasses.Field]:
    """The fields of a dataclass that were declared with `setting`."""
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def check_value(f: dataclasses.Field, value, name: str) -> None:
    """Raise ValueError naming `name` and the allowed values when the value fails the check."""
    check: Check = f.metadata["check"]
    if not check.ok(value):
        raise ValueError(f"{name} must be {check.allowed}, got {value!r}")


def _base_type(annotation):
    """int for `int`, list for `list[str]`, int for `int | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = options[0]
    return typing.get_origin(annotation) or annotation


def parse_text(f: dataclasses.Field, text: str, name: str):
    """A value of the field's declared type from text ("4", "0.5", "silu", "C,A,G")."""
    kind = _base_type(f.type)
    try:
        if kind is list:
            return [x.strip() for x in text.split(",") if x.strip()]
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ValueError(f"{name} must be {f.metadata['check'].allowed}, got {text!r}") from None
    return text
