"""The small models the recall benchmarks train from scratch on CPU: 2 layers of one block
type each, 4 heads, depth-2 memory with 4 heads, and the FFN width chosen per block type so
that every variant has (nearly) the parameter count of the MAC model."""

import torch

from titans_plugin.config import TitansConfig
from titans_plugin.model import TitansModelArgs, TitansTransformer

VARIANTS = {"MAC": "C", "MAG": "G", "MAL": "L", "LMM": "M", "SWA": "W", "Full attention": "A"}
MEMORY_VARIANTS = ("MAC", "MAG", "MAL", "LMM")


def model_args(
    letter: str, *, vocab: int, window: int, max_len: int, overrides: dict, ffn_mult: float | None = None, dim: int = 64
) -> TitansModelArgs:
    """Two layers of block `letter`; the attention window and the MAC segment are `window`."""
    titans = dict(pattern=letter, memory_heads=4, window=window, segment_len=window, chunk_size=16, n_persistent=4)
    return TitansModelArgs(
        dim=dim,
        n_layers=2,
        n_heads=4,
        vocab_size=vocab,
        multiple_of=16,
        ffn_dim_multiplier=ffn_mult,
        max_seq_len=max_len,
        titans=TitansConfig(**{**titans, **overrides}),
    )


def n_params(args: TitansModelArgs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in TitansTransformer(args).parameters())


def matched_args(letter: str, **kw) -> TitansModelArgs:
    """model_args(letter, **kw) with the FFN multiplier (0.5 to 4 in steps of 0.05) whose
    model is closest to the MAC model's parameter count at the default [titans] settings
    (so that ablations keep the sizes)."""
    target = n_params(model_args("C", **{**kw, "overrides": {}}))
    grid = [None] + [round(0.5 + 0.05 * i, 2) for i in range(71)]
    return min((model_args(letter, **kw, ffn_mult=m) for m in grid), key=lambda a: abs(n_params(a) - target))
