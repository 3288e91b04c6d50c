"""Rotary embeddings in torchtitan's format: freqs_cis is complex [max_seq_len, head_dim/2].

Written here (not imported from torchtitan) so the model code does not depend on
torchtitan's internals; the format is the same, so a torchtitan model's freqs_cis buffer
can be passed to our blocks unchanged.
"""

import math

import torch


def precompute_freqs_cis(head_dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    """Plain RoPE frequencies (no long-context scaling), complex64 [end, head_dim // 2]."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    t = torch.arange(end, device=freqs.device)
    angles = torch.outer(t, freqs).float()
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x_BTHD: torch.Tensor, freqs_TD: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by freqs [T, D/2] (already sliced to x's positions)."""
    B, T, H, D = x_BTHD.shape
    xc = torch.view_as_complex(x_BTHD.float().reshape(B, T, H, D // 2, 2))
    out = torch.view_as_real(xc * freqs_TD.view(1, T, 1, D // 2)).flatten(3)
    return out.type_as(x_BTHD)


def check_rope_length(freqs_cis: torch.Tensor, end: int) -> None:
    if end > freqs_cis.shape[0]:
        raise ValueError(
            f"sequence position {end} exceeds the RoPE table ({freqs_cis.shape[0]} positions): "
            f"raise model max_seq_len (training.seq_len in TOML)"
        )


__all__ = ["apply_rope", "check_rope_length", "precompute_freqs_cis", "math"]
