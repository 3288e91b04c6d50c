"""Whether the Triton scan can run a configuration here: `unsupported_reason` (the
configuration itself: depth, activation, dtype, device) and `launch_problem` (its kernels
against the device's per-block limits, compiled ahead of time once per configuration)."""

import torch

from ..state import MemoryState
from .compile import device_problem
from .config import (
    ACTIVATION_CODES,
    INPUT_DTYPES,
    SUPPORTED_DEPTHS,
    arch_of,
    checkpoint_interval,
    interpreting,
    kernel_meta,
    state_size,
)


def triton_usable(device: torch.device) -> bool:
    """True where the kernels can run: CUDA, or any device under the Triton interpreter."""
    if not (device.type == "cuda" or interpreting()):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def unsupported_reason(depth: int, activation: str, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the Triton scan cannot run this configuration (None when it can)."""
    if depth not in SUPPORTED_DEPTHS:
        return f"memory depth must be one of {list(SUPPORTED_DEPTHS)} for the triton backend, got {depth}"
    if activation not in ACTIVATION_CODES:
        return f"memory activation must be one of {sorted(ACTIVATION_CODES)} for the triton backend, got {activation!r}"
    if dtype not in INPUT_DTYPES:
        return f"the triton backend takes inputs in {[str(d) for d in INPUT_DTYPES]}, got {dtype}"
    if not triton_usable(device):
        return f"the triton backend needs a CUDA device (or TRITON_INTERPRET=1), got device {device.type!r}"
    return None


def state_meta(
    q: torch.Tensor,
    state: MemoryState,
    chunk_size: int,
    activation: str,
    max_grad_norm: float | None,
    resets: bool = False,
) -> dict:
    """The kernels' compile-time arguments for a scan of q over `state` on q's device,
    with the checkpoint interval the launch uses."""
    DK, DV = state.weights[0].shape[-2], state.weights[-1].shape[-1]
    hidden = state.weights[0].shape[-1] if len(state.weights) == 2 else 0
    every = checkpoint_interval(state_size(DK, hidden, DV), chunk_size)
    clip = bool(max_grad_norm)
    return kernel_meta(DK, hidden, DV, chunk_size, activation, clip, q.dtype, every, arch_of(q.device), bool(resets))


def launch_problem(
    q: torch.Tensor,
    state: MemoryState,
    chunk_size: int,
    activation: str,
    max_grad_norm: float | None,
    resets: bool = False,
) -> str | None:
    """Why the kernels for this configuration cannot launch on q's CUDA device (None when
    they can, and always None under the interpreter, which has no per-block limits)."""
    if q.device.type != "cuda":
        return None
    meta = state_meta(q, state, chunk_size, activation, max_grad_norm, resets)
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    return device_problem(tuple(sorted(meta.items())), q.dtype, index)
