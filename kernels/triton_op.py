"""The Triton memory scan as torch custom ops: `titans::memory_scan` and its backward.

Custom ops (not raw kernel launches) because torch.compile(fullgraph=True) can trace
through an op with a fake implementation and a registered autograd formula, never
through a Triton launch from Python. Both ops take the memory state flattened to one fp32
buffer per (batch, head), [B, H, 2 * sum_l D_in * D_out] (W1, W2, S1, S2), so the
schema is the same for every depth.

The kernel module is imported on first launch, not at import time: triton reads
TRITON_INTERPRET when kernels are defined, and a machine without a working triton can
still use every other backend.
"""

import os

import torch
from torch import Tensor

from .activations import get_activation
from .chunk_math import log_gates
from .state import MemoryState

ACTIVATION_CODES = {"silu": 0, "gelu": 1, "tanh": 2, "relu": 3}
SUPPORTED_DEPTHS = (1, 2)
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _empty(shape, dtype, device) -> Tensor:
    """Every output buffer comes from here (tests poison it with NaN to prove the kernels
    write every element they return)."""
    return torch.empty(shape, dtype=dtype, device=device)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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


def _pad(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _dims(q: Tensor, v: Tensor, hidden: int):
    return q.shape[0], q.shape[1], q.shape[2], q.shape[3], hidden, v.shape[3]


def _kernel_meta(q, v, hidden, chunk_size, activation, max_grad_norm):
    DK, DV, DH = q.shape[3], v.shape[3], max(hidden, 1)
    return {
        "DK": DK, "DH": DH, "DV": DV, "BK": _pad(DK), "BH": _pad(DH), "BV": _pad(DV),
        "CHUNK": chunk_size, "BC": _pad(chunk_size), "DEPTH": 2 if hidden else 1,
        # floats per (batch, head) in the flat state, W1, W2, S1, S2 (pack_state's layout)
        "NSTATE": 2 * (DK * hidden + hidden * DV) if hidden else 2 * DK * DV,
        "ACT": ACTIVATION_CODES[activation], "CLIP": max_grad_norm > 0,
        # fp32 inputs get fp32 products (the tests' exactness); bf16/fp16 inputs already
        # carry less precision than TF32, so their products use the tensor cores.
        "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
        "num_warps": 8 if hidden else 4,
    }


@torch.library.custom_op("titans::memory_scan", mutates_args=())
def memory_scan(
    q: Tensor, k: Tensor, v: Tensor, theta: Tensor, log_eta: Tensor, log_retain: Tensor,
    state: Tensor, hidden: int, chunk_size: int, activation: str, max_grad_norm: float,
    save_states: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k [B, T, H, DK], v [B, T, H, DV] (fp32/bf16/fp16, contiguous); theta and
    log-gates fp32 [B, T, H]; state fp32 [B, H, N]. Returns y [B, T, H, DV] in q's dtype,
    the end state, and the chunk-start states [B, H, n_chunks, N] (empty unless saved)."""
    from .triton_scan import scan_forward_kernel

    B, T, H, _, _, DV = _dims(q, v, hidden)
    n_chunks = -(-T // chunk_size)
    y = _empty((B, T, H, DV), q.dtype, q.device)
    state_out = _empty(state.shape, torch.float32, q.device)
    saved = _empty((B, H, n_chunks, state.shape[-1]) if save_states else (0,), torch.float32, q.device)
    scan_forward_kernel[(B * H,)](
        q, k, v, theta, log_eta, log_retain, state, y, state_out, saved, T, H, max_grad_norm,
        SAVE=save_states, **_kernel_meta(q, v, hidden, chunk_size, activation, max_grad_norm),
    )
    return y, state_out, saved


@memory_scan.register_fake
def _memory_scan_fake(q, k, v, theta, log_eta, log_retain, state, hidden, chunk_size, activation,
                      max_grad_norm, save_states):
    B, T, H, _, _, DV = _dims(q, v, hidden)
    n_chunks = -(-T // chunk_size)
    saved_shape = (B, H, n_chunks, state.shape[-1]) if save_states else (0,)
    return q.new_empty(B, T, H, DV), state.new_empty(state.shape), state.new_empty(saved_shape)


@torch.library.custom_op("titans::memory_scan_backward", mutates_args=())
def memory_scan_backward(
    dy: Tensor, dstate: Tensor, q: Tensor, k: Tensor, v: Tensor, theta: Tensor,
    log_eta: Tensor, log_retain: Tensor, saved: Tensor, hidden: int, chunk_size: int,
    activation: str, max_grad_norm: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (q, k, v, theta, log_eta, log_retain, state) from the gradients of
    y and of the end state, recomputing each chunk from its saved start state."""
    from .triton_scan import scan_backward_kernel

    B, T, H = q.shape[:3]
    dq = _empty(q.shape, q.dtype, q.device)
    dk = _empty(k.shape, k.dtype, k.device)
    dv = _empty(v.shape, v.dtype, v.device)
    dgates = [_empty(theta.shape, torch.float32, q.device) for _ in range(3)]
    dstate0 = _empty(dstate.shape, torch.float32, q.device)
    scan_backward_kernel[(B * H,)](
        dy, dstate, q, k, v, theta, log_eta, log_retain, saved,
        dq, dk, dv, *dgates, dstate0, T, H, max_grad_norm,
        **_kernel_meta(q, v, hidden, chunk_size, activation, max_grad_norm),
    )
    return dq, dk, dv, *dgates, dstate0


@memory_scan_backward.register_fake
def _memory_scan_backward_fake(dy, dstate, q, k, v, theta, log_eta, log_retain, saved, hidden,
                               chunk_size, activation, max_grad_norm):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            theta.new_empty(theta.shape), theta.new_empty(theta.shape), theta.new_empty(theta.shape),
            dstate.new_empty(dstate.shape))


def _setup_context(ctx, inputs, output):
    q, k, v, theta, log_eta, log_retain, state, hidden, chunk_size, activation, max_norm, save = inputs
    ctx.save_for_backward(q, k, v, theta, log_eta, log_retain, output[2])
    ctx.meta = (hidden, chunk_size, activation, max_norm, save)
    ctx.state_shape = state.shape


def _backward(ctx, dy, dstate, _dsaved):
    hidden, chunk_size, activation, max_norm, saved_states = ctx.meta
    if not saved_states:
        raise RuntimeError("titans::memory_scan ran with save_states=False; it cannot be differentiated")
    q, k, v, theta, log_eta, log_retain, saved = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    if dstate is None:
        dstate = torch.zeros(ctx.state_shape, dtype=torch.float32, device=q.device)
    grads = memory_scan_backward(
        dy.contiguous(), dstate.float().contiguous(), q, k, v, theta, log_eta, log_retain, saved,
        hidden, chunk_size, activation, max_norm)
    return (*grads, None, None, None, None, None)


memory_scan.register_autograd(_backward, setup_context=_setup_context)


def pack_state(state: MemoryState) -> Tensor:
    """(W1, [W2]), (S1, [S2]) each [B, H, D_in, D_out] -> one fp32 [B, H, N] buffer."""
    parts = (*state.weights, *state.momentum)
    return torch.cat([p.float().reshape(*p.shape[:2], -1) for p in parts], dim=-1).contiguous()


def unpack_state(flat: Tensor, like: MemoryState) -> MemoryState:
    shapes = [w.shape for w in like.weights]
    sizes = [s[-2] * s[-1] for s in shapes] * 2
    parts = torch.split(flat, sizes, dim=-1)
    tensors = [p.reshape(*flat.shape[:2], *s[-2:]) for p, s in zip(parts, shapes * 2)]
    L = len(shapes)
    return MemoryState(tuple(tensors[:L]), tuple(tensors[L:]))


def triton_neural_memory(
    q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
    state: MemoryState, chunk_size: int = 64, activation: str = "silu",
    max_grad_norm: float | None = None,
) -> tuple[Tensor, MemoryState]:
    """Same contract as chunk_neural_memory (q, k [B, T, H, D_k], v [B, T, H, D_v], gates
    [B, T, H]), computed by the Triton kernels. y comes back in q's dtype (the chunked
    PyTorch path returns fp32); the state is fp32."""
    get_activation(activation)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    reason = unsupported_reason(len(state.weights), activation, q.dtype, q.device)
    if reason:
        raise ValueError(reason)
    B, T, H, _ = q.shape
    if T == 0:
        return q.new_zeros(B, 0, H, state.weights[-1].shape[-1]), state
    log_eta, log_retain = log_gates(eta, alpha, torch.float32)
    hidden = state.weights[0].shape[-1] if len(state.weights) == 2 else 0
    flat = pack_state(state)
    inputs = (q, k.to(q.dtype), v.to(q.dtype), theta.float(), log_eta, log_retain, flat)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    y, flat_out, _ = memory_scan(*(t.contiguous() for t in inputs), hidden, chunk_size, activation,
                                 float(max_grad_norm or 0.0), save)
    return y, unpack_state(flat_out, state)
