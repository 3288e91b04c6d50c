"""Hybrid layer spec: which block each layer is.

One letter per layer, layers indexed from 0; the letters are the block types' own
(blocks/__init__.py's BLOCK_TYPES: A attention, W sliding window, C MAC, G MAG, L MAL,
M LMM). A spec is either a pattern string tiled over the depth ("GGA" over 8 layers is
GGAGGAGG; "C" makes every layer MAC), or a list with exactly one letter per layer.
A block type's variant name (mac, mag, mal, lmm, attention, swa) stands for its letter.
"""

from collections.abc import Mapping, Sequence

from titans_plugin.blocks import BLOCK_TYPES

VARIANTS = {cls.variant: letter for letter, cls in BLOCK_TYPES.items()}
PATTERN_HELP = 'layer types, tiled over the depth (`"GGA"` over 8 layers = GGAGGAGG)'


def _alphabet() -> str:
    return ", ".join(f"{letter} ({cls.description})" for letter, cls in BLOCK_TYPES.items())


def _check_letter(letter: str, where: str, field: str) -> str:
    if letter not in BLOCK_TYPES:
        raise ValueError(f"{field}: unknown layer type {letter!r} at {where}; allowed: {_alphabet()}")
    return letter


def parse_layer_spec(spec: str | Sequence[str], n_layers: int, field: str = "titans.pattern") -> list[str]:
    """Expand a pattern string or check a per-layer list; returns one letter per layer."""
    if n_layers < 1:
        raise ValueError(f"model.n_layers must be >= 1, got {n_layers}")
    if isinstance(spec, str):
        pattern = VARIANTS.get(spec.strip().lower(), spec.strip().upper())
        if not pattern:
            raise ValueError(f"{field} must not be empty; allowed letters: {_alphabet()}")
        for i, letter in enumerate(pattern):
            _check_letter(letter, f"pattern position {i}", field)
        return [pattern[i % len(pattern)] for i in range(n_layers)]
    layers = [str(x).strip().upper() for x in spec]
    if len(layers) != n_layers:
        raise ValueError(
            f"{field} lists {len(layers)} layer types but the model has n_layers={n_layers}; "
            "give one letter per layer, or a pattern string to tile"
        )
    for i, letter in enumerate(layers):
        _check_letter(letter, f"layer {i}", field)
    return layers


def apply_overrides(layers: list[str], overrides: Mapping[int, str], field: str = "titans.layers") -> list[str]:
    """Set chosen layers (0-based index -> letter), e.g. {0: 'C', 5: 'G'}."""
    out = list(layers)
    for index, letter in overrides.items():
        if not isinstance(index, int) or not 0 <= index < len(out):
            raise ValueError(f"{field}: layer index {index!r} out of range 0..{len(out) - 1}")
        out[index] = _check_letter(str(letter).upper(), f"layer {index}", field)
    return out
