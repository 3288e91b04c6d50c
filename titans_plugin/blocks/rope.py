"""Rotary embeddings in torchtitan's format: freqs_cis is complex [max_seq_len, head_dim/2].

Written here (not imported from torchtitan) so the model code does not depend on
torchtitan's internals; the format is the same, so a torchtitan model's freqs_cis buffer
can be passed to our blocks unchanged.
"""

import math
from dataclasses import dataclass

import torch


@dataclass
class RopeScaling:
    """Llama 3.1 long-context frequency scaling (the same rule torchtitan's llama3 uses)."""

    scaling_factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


def _scale(freqs: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    wavelen = 2 * math.pi / freqs
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    scaled = torch.where(wavelen > low_wavelen, freqs / s.scaling_factor, freqs)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.scaling_factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def precompute_freqs_cis(
    head_dim: int, end: int, theta: float = 10000.0, scaling: RopeScaling | None = None
) -> torch.Tensor:
    """RoPE frequencies, complex64 [end, head_dim // 2]; llama3 scaling when given."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if scaling is not None:
        freqs = _scale(freqs, scaling)
    t = torch.arange(end, device=freqs.device)
    angles = torch.outer(t, freqs).float()
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x_BTHD: torch.Tensor, freqs_TD: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by freqs [T, D/2] (already sliced to x's positions).

    The same rotation as torchtitan's complex multiply, written with real cos/sin:
    inductor mis-compiled the complex form's backward inside a MAC block (q/k weight
    gradients off by ~100% under torch.compile, exact under aot_eager)."""
    B, T, H, D = x_BTHD.shape
    x = x_BTHD.float().reshape(B, T, H, D // 2, 2)
    cos = freqs_TD.real.view(-1, T, 1, D // 2)  # [T, D/2], or [B, T, D/2] per row
    sin = freqs_TD.imag.view(-1, T, 1, D // 2)
    x_even, x_odd = x[..., 0], x[..., 1]
    out = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)
    return out.flatten(3).type_as(x_BTHD)


def rope_freqs(freqs_cis: torch.Tensor, pos, T: int) -> torch.Tensor:
    """Frequencies for T tokens from position `pos` (an int), or at per-row positions
    `pos` [B, T] (packed documents, each counted from its own start)."""
    if isinstance(pos, torch.Tensor):
        return freqs_cis[pos]
    check_rope_length(freqs_cis, pos + T)
    return freqs_cis[pos : pos + T]


def check_rope_length(freqs_cis: torch.Tensor, end: int) -> None:
    if end > freqs_cis.shape[0]:
        raise ValueError(
            f"sequence position {end} exceeds the RoPE table ({freqs_cis.shape[0]} positions): "
            f"raise model max_seq_len (training.seq_len in TOML)"
        )
