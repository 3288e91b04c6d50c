"""The `[titans]` section: its fields (TitansConfig, each declared once), its validation,
and the layer pattern that names each layer's block type."""

from .pattern import VARIANTS, apply_overrides, parse_layer_spec
from .titans import TitansConfig, fields_read_by

__all__ = ["TitansConfig", "VARIANTS", "apply_overrides", "fields_read_by", "parse_layer_spec"]
