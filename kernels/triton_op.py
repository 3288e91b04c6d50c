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
from .state import MemoryState, check_resets

ACTIVATION_CODES = {"silu": 0, "gelu": 1, "tanh": 2, "relu": 3}
# Matmul operand type per input dtype (triton_chunk.OP_*): bf16/fp16 on the tensor cores
# in their own type with fp32 accumulation, fp32 as IEEE fp32.
OPERAND_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
SUPPORTED_DEPTHS = (1, 2)
INPUT_DTYPES = tuple(OPERAND_CODES)
# Saved for the backward: one checkpoint state every k chunks, with k the smallest that
# keeps the checkpoints within this many bytes per token and head (the chunks between are
# recomputed from the checkpoint in the backward).
SAVED_BYTES_PER_TOKEN = 1024
HIDDEN_TILE = 16  # hidden units per state tile (triton_scan.py); 16 spills least (docs/kernels.md)
# The depth-2 forward runs as four phases (layer 1, layer 2, update, output; triton_scan.forward_chunk)
# where its one walk spills (compile report, docs/kernels.md): on GPUs older than sm_90 (no
# warpgroup MMA: every matmul operand sits in registers), and on sm_90 for head dims or
# chunks above 64. Elsewhere the one walk does not spill and moves less through L2. Tests
# set PHASED_FORWARD to run either form in the interpreter.
PHASED_FORWARD_BELOW_ARCH = 90
PHASED_FORWARD_ABOVE_TILE = 64
PHASED_FORWARD: bool | None = None


def _empty(shape, dtype, device) -> Tensor:
    """Every output and scratch buffer comes from here (tests poison it with NaN to prove
    the kernels write every element they return and read no scratch they did not write)."""
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


def launch_problem(
    q: Tensor,
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
    from .triton_compile import device_problem

    DK, DV = state.weights[0].shape[-2], state.weights[-1].shape[-1]
    hidden = state.weights[0].shape[-1] if len(state.weights) == 2 else 0
    meta = kernel_meta(
        DK,
        hidden,
        DV,
        chunk_size,
        activation,
        bool(max_grad_norm),
        q.dtype,
        checkpoint_interval(state_size(DK, hidden, DV), chunk_size),
        _arch(q.device),
        resets,
    )
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    return device_problem(tuple(sorted(meta.items())), q.dtype, index)


def pad(n: int) -> int:
    """Tile extent for n: a power of two >= 16 (tl.dot's minimum on GPUs)."""
    return max(16, 1 << (n - 1).bit_length())


def state_size(DK: int, hidden: int, DV: int) -> int:
    """Floats per (batch, head) in the flat state (W1, W2, S1, S2; pack_state's layout)."""
    return 2 * (DK * hidden + hidden * DV) if hidden else 2 * DK * DV


def checkpoint_interval(nstate: int, chunk_size: int) -> int:
    """Chunks per saved checkpoint: the smallest k with nstate * 4 / (k * chunk) <= budget."""
    return max(1, -(-nstate * 4 // (SAVED_BYTES_PER_TOKEN * chunk_size)))


def phased_forward(depth: int, arch: int | None, chunk_tile: int, head_tile: int) -> bool:
    """Whether the forward kernel runs a depth-2 chunk as four phases on sm_<arch> (tiles:
    the padded chunk and the larger padded head dim)."""
    if depth != 2:
        return False
    if PHASED_FORWARD is not None:
        return PHASED_FORWARD
    if arch is None:  # the interpreter: the one walk unless a test asks
        return False
    return arch < PHASED_FORWARD_BELOW_ARCH or max(chunk_tile, head_tile) > PHASED_FORWARD_ABOVE_TILE


def forward_scratch(meta: dict) -> int:
    """fp32 scratch per program of the phased forward (triton_scan.forward_scratch: d1, the
    partial output, the layer-2 scores, theta_eff, layer 1's output); one unused float
    otherwise."""
    BC, BV = meta["BC"], meta["BV"]
    return 2 * BC * BV + BC * BC + BC + BC * meta["DT"] if meta["PHASED"] else 1


def backward_scratch(meta: dict) -> int:
    """fp32 scratch per program of the backward kernel: the tile scratch [3, BC, DT], then
    the chunk scratch that its phases hand on (triton_scan_bwd.chunk_scratch: d1, dd1,
    da0, dq, the two [BC, BC] score gradients and 16 per-token vectors)."""
    BC, BK, BV = meta["BC"], meta["BK"], meta["BV"]
    return 3 * BC * meta["DT"] + 2 * BC * BV + 2 * BC * BK + 2 * BC * BC + 16 * BC


def forward_args(meta: dict) -> dict:
    """The forward kernel's compile-time arguments: kernel_meta's and its scratch size."""
    return {**meta, "FSCRATCH": forward_scratch(meta)}


def backward_args(meta: dict) -> dict:
    """The backward kernel's compile-time arguments: kernel_meta's without the forward's
    PHASED (the backward's replay is one walk either way) and its scratch size."""
    args = {name: value for name, value in meta.items() if name != "PHASED"}
    return {**args, "SCRATCH": backward_scratch(args)}


def kernel_meta(
    DK: int,
    hidden: int,
    DV: int,
    chunk_size: int,
    activation: str,
    clip: bool,
    dtype: torch.dtype,
    checkpoint_every: int,
    arch: int | None = None,
    resets: bool = False,
) -> dict:
    """Compile-time parameters of both kernels for one configuration on sm_<arch> (None:
    the interpreter); also what kernels/compile_report.py compiles. resets: the variant
    that restarts rows (packed documents)."""
    DT = hidden if hidden else DV  # the tiled width: hidden units, or W's columns at depth 1
    BT = min(HIDDEN_TILE, pad(DT))  # read at call time: tests shrink it to get several tiles
    BC = pad(chunk_size)
    return {
        "DK": DK,
        "DT": DT,
        "DV": DV,
        "BK": pad(DK),
        "BT": BT,
        "BV": pad(DV),
        "NT": -(-DT // BT),
        "CHUNK": chunk_size,
        "BC": BC,
        "DEPTH": 2 if hidden else 1,
        "NSTATE": state_size(DK, hidden, DV),
        "CKPT": checkpoint_every,
        "ACT": ACTIVATION_CODES[activation],
        "CLIP": clip,
        "OP": OPERAND_CODES[dtype],
        "RESETS": resets,
        "PHASED": phased_forward(2 if hidden else 1, arch, BC, max(pad(DK), pad(DV))),  # the forward's only
        "num_warps": 8 if max(BC, pad(DK), pad(DV)) >= 64 else 4,
        # Without it ptxas caps an 8-warp sm_80 kernel at 128 registers and spills 2.5x more;
        # on sm_90 the same cap makes ptxas spill more, so it is left to ptxas there.
        "maxnreg": 255 if arch is not None and arch < 90 else None,
    }


def _arch(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _meta(q, v, hidden, chunk_size, activation, max_grad_norm, checkpoint_every, resets):
    return kernel_meta(
        q.shape[3],
        hidden,
        v.shape[3],
        chunk_size,
        activation,
        max_grad_norm > 0,
        q.dtype,
        checkpoint_every,
        _arch(q.device),
        resets.numel() > 0,
    )


def _saved_shape(B, H, T, chunk_size, checkpoint_every, nstate, save):
    n_ckpt = -(-(-(-T // chunk_size)) // checkpoint_every)
    return (B, H, n_ckpt, nstate) if save else (0,)


@torch.library.custom_op("titans::memory_scan", mutates_args=())
def memory_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor,
    log_retain: Tensor,
    state: Tensor,
    resets: Tensor,
    init: Tensor,
    hidden: int,
    chunk_size: int,
    activation: str,
    max_grad_norm: float,
    save_states: bool,
    checkpoint_every: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k [B, T, H, DK], v [B, T, H, DV] (fp32/bf16/fp16, contiguous); theta and
    log-gates fp32 [B, T, H]; state fp32 [B, H, N]. resets int8 [B, n_chunks] with init
    fp32 [B, H, N / 2] (packed documents: a row restarts from its init weights, zero
    momentum, before every flagged chunk), or both empty. Returns y [B, T, H, DV] in q's
    dtype, the end state, and the checkpoints [B, H, ceil(n_chunks / checkpoint_every), N]:
    the state at the start of every checkpoint_every-th chunk (empty unless save_states)."""
    from .triton_scan import scan_forward_kernel

    B, T, H = q.shape[:3]
    y = _empty((B, T, H, v.shape[3]), q.dtype, q.device)
    state_out = state.clone()  # the kernel advances it in place
    saved = _empty(
        _saved_shape(B, H, T, chunk_size, checkpoint_every, state.shape[-1], save_states), torch.float32, q.device
    )
    args = forward_args(_meta(q, v, hidden, chunk_size, activation, max_grad_norm, checkpoint_every, resets))
    scratch = _empty((B * H, args["FSCRATCH"]), torch.float32, q.device)
    scan_forward_kernel[(B * H,)](
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        state_out,
        y,
        saved,
        scratch,
        resets,
        init,
        T,
        H,
        max_grad_norm,
        SAVE=save_states,
        **args,
    )
    return y, state_out, saved


@memory_scan.register_fake
def _memory_scan_fake(
    q,
    k,
    v,
    theta,
    log_eta,
    log_retain,
    state,
    resets,
    init,
    hidden,
    chunk_size,
    activation,
    max_grad_norm,
    save_states,
    checkpoint_every,
):
    B, T, H = q.shape[:3]
    saved_shape = _saved_shape(B, H, T, chunk_size, checkpoint_every, state.shape[-1], save_states)
    return q.new_empty(B, T, H, v.shape[3]), state.new_empty(state.shape), state.new_empty(saved_shape)


@torch.library.custom_op("titans::memory_scan_backward", mutates_args=())
def memory_scan_backward(
    dy: Tensor,
    dstate: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor,
    log_retain: Tensor,
    saved: Tensor,
    resets: Tensor,
    init: Tensor,
    hidden: int,
    chunk_size: int,
    activation: str,
    max_grad_norm: float,
    checkpoint_every: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (q, k, v, theta, log_eta, log_retain, state, init) from the
    gradients of y and of the end state, recomputing the chunks of each checkpoint group
    (init's gradient is empty without resets)."""
    from .triton_scan_bwd import scan_backward_kernel

    B, T, H = q.shape[:3]
    args = backward_args(_meta(q, v, hidden, chunk_size, activation, max_grad_norm, checkpoint_every, resets))
    dq = _empty(q.shape, q.dtype, q.device)
    dk = _empty(k.shape, k.dtype, k.device)
    dv = _empty(v.shape, v.dtype, v.device)
    dgates = [_empty(theta.shape, torch.float32, q.device) for _ in range(3)]
    dstate0 = dstate.clone()  # the kernel carries it back to the initial state in place
    replay = _empty((B * H, checkpoint_every, dstate.shape[-1]), torch.float32, q.device)
    scratch = _empty((B * H, args["SCRATCH"]), torch.float32, q.device)
    dinit = torch.zeros(init.shape, dtype=torch.float32, device=q.device)  # the kernel adds to it
    scan_backward_kernel[(B * H,)](
        dy,
        dstate0,
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        saved,
        replay,
        scratch,
        dq,
        dk,
        dv,
        *dgates,
        resets,
        init,
        dinit,
        T,
        H,
        max_grad_norm,
        **args,
    )
    return (dq, dk, dv, *dgates, dstate0, dinit)  # type: ignore[return-value]  # dgates: three


@memory_scan_backward.register_fake
def _memory_scan_backward_fake(
    dy,
    dstate,
    q,
    k,
    v,
    theta,
    log_eta,
    log_retain,
    saved,
    resets,
    init,
    hidden,
    chunk_size,
    activation,
    max_grad_norm,
    checkpoint_every,
):
    return (
        q.new_empty(q.shape),
        k.new_empty(k.shape),
        v.new_empty(v.shape),
        theta.new_empty(theta.shape),
        theta.new_empty(theta.shape),
        theta.new_empty(theta.shape),
        dstate.new_empty(dstate.shape),
        init.new_empty(init.shape),
    )


def _setup_context(ctx, inputs, output):
    q, k, v, theta, log_eta, log_retain, state, resets, init, hidden, chunk_size, activation, max_norm, save, every = (
        inputs
    )
    ctx.save_for_backward(q, k, v, theta, log_eta, log_retain, output[2], resets, init)
    ctx.meta = (hidden, chunk_size, activation, max_norm, save, every)
    ctx.state_shape = state.shape


def _backward(ctx, dy, dstate, _dsaved):
    hidden, chunk_size, activation, max_norm, saved_states, every = ctx.meta
    if not saved_states:
        raise RuntimeError("titans::memory_scan ran with save_states=False; it cannot be differentiated")
    q, k, v, theta, log_eta, log_retain, saved, resets, init = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    if dstate is None:
        dstate = torch.zeros(ctx.state_shape, dtype=torch.float32, device=q.device)
    grads = memory_scan_backward(
        dy.contiguous(),
        dstate.float().contiguous(),
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        saved,
        resets,
        init,
        hidden,
        chunk_size,
        activation,
        max_norm,
        every,
    )
    *grads, dinit = grads
    return (*grads, None, dinit, None, None, None, None, None, None)


memory_scan.register_autograd(_backward, setup_context=_setup_context)


def pack_state(state: MemoryState) -> Tensor:
    """(W1, [W2]), (S1, [S2]) each [B, H, D_in, D_out] -> one fp32 [B, H, N] buffer."""
    return pack_weights((*state.weights, *state.momentum))


def pack_weights(weights: tuple[Tensor, ...]) -> Tensor:
    """(W1, [W2]) each [B, H, D_in, D_out] -> one fp32 [B, H, N / 2] buffer: the weights
    half of pack_state's layout."""
    return torch.cat([w.float().reshape(*w.shape[:2], -1) for w in weights], dim=-1).contiguous()


def unpack_state(flat: Tensor, like: MemoryState) -> MemoryState:
    shapes = [w.shape for w in like.weights]
    sizes = [s[-2] * s[-1] for s in shapes] * 2
    parts = torch.split(flat, sizes, dim=-1)
    tensors = [p.reshape(*flat.shape[:2], *s[-2:]) for p, s in zip(parts, shapes * 2)]
    L = len(shapes)
    return MemoryState(tuple(tensors[:L]), tuple(tensors[L:]))


def triton_neural_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    state: MemoryState,
    chunk_size: int = 64,
    activation: str = "silu",
    max_grad_norm: float | None = None,
    checkpoint_every: int | None = None,
    resets: Tensor | None = None,
    initial: MemoryState | None = None,
) -> tuple[Tensor, MemoryState]:
    """Same contract as chunk_neural_memory (q, k [B, T, H, D_k], v [B, T, H, D_v], gates
    [B, T, H], resets [B, n_chunks] with initial), computed by the Triton kernels in one
    launch, restarts included. y comes back in q's dtype (the chunked PyTorch path returns
    fp32); the state is fp32."""
    get_activation(activation)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    reason = unsupported_reason(len(state.weights), activation, q.dtype, q.device)
    if reason:
        raise ValueError(reason)
    problem = launch_problem(q, state, chunk_size, activation, max_grad_norm, resets is not None)
    if problem:
        raise ValueError(
            f"titans.kernel = 'triton' cannot run here: {problem}; use 'auto' (falls back to 'chunk') or 'chunk'"
        )
    B, T, H, _ = q.shape
    if T == 0:
        return q.new_zeros(B, 0, H, state.weights[-1].shape[-1]), state
    log_eta, log_retain = log_gates(eta, alpha, torch.float32)
    hidden = state.weights[0].shape[-1] if len(state.weights) == 2 else 0
    flat = pack_state(state)
    if resets is None:
        flags, init = q.new_zeros(0, dtype=torch.int8), flat.new_zeros(0)
    else:
        check_resets(q, resets, initial, state, chunk_size)  # the kernels read row b of both
        assert initial is not None
        flags, init = resets.to(torch.int8), pack_weights(initial.weights)
    inputs = (q, k.to(q.dtype), v.to(q.dtype), theta.float(), log_eta, log_retain, flat, flags, init)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    if checkpoint_every is None:
        checkpoint_every = checkpoint_interval(flat.shape[-1], chunk_size)
    elif checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every}")
    y, flat_out, _ = memory_scan(
        *(t.contiguous() for t in inputs),
        hidden,
        chunk_size,
        activation,
        float(max_grad_norm or 0.0),
        save,
        checkpoint_every,
    )
    return y, unpack_state(flat_out, state)
