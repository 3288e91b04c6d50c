"""Host side of the Gluon cluster scan (cluster_forward.py): the custom op
`titans::cluster_memory_scan`, with the schema, outputs and checkpoints of the Triton
`titans::memory_scan`, so the Triton one-program backward differentiates it; which
configurations it runs (`cluster_problem`); and its ahead-of-time compile (the compile
report and the launch check).

On a CUDA device the op launches the Gluon kernel, one cluster of `split` CTAs per (batch,
head). Gluon has no interpreter, so under TRITON_INTERPRET=1 the op runs the kernel's
arithmetic in torch (emulation.py): the CPU tests drive the backend end to end, the Triton
backward included, through the same op."""

import contextlib
import functools

import torch
from torch import Tensor

from ..triton_backend import ops
from ..triton_backend.buffers import forward_outputs
from ..triton_backend.config import ACTIVATION_CODES, arch_of, checkpoint_interval, interpreting, state_size
from . import emulation

GLUON_TRITON = "3.9."  # the triton the kernel is written against (Gluon is experimental)
HEAD_DIM = 64
UNITS_PER_CTA = 64
CLUSTER_SIZES = (2, 4)  # CTAs per cluster: hidden 128 or 256
NUM_WARPS = 8  # two warpgroups: a [64, 64] fp32 tensor takes 16 registers per thread
SHARED_LIMIT_SM90 = 232_448


def gluon_problem() -> str | None:
    """Why this triton cannot build the kernel (None when it can)."""
    try:
        import triton
        from triton.experimental import gluon  # noqa: F401
    except ImportError as e:
        return f"this triton has no Gluon ({e})"
    if not triton.__version__.startswith(GLUON_TRITON):
        return f"the Gluon cluster kernel is written against triton {GLUON_TRITON}x, found {triton.__version__}"
    return None


def cluster_problem(depth: int, dk: int, hidden: int, dv: int, chunk_size: int, dtype, resets: bool) -> str | None:
    """Why the cluster scan cannot run this memory configuration (None when it can)."""
    if depth != 2:
        return f"the cluster scan runs depth-2 memories, got depth {depth}"
    if (dk, dv) != (HEAD_DIM, HEAD_DIM):
        return f"the cluster scan runs head dims {HEAD_DIM}, got {dk}/{dv}"
    if hidden not in [n * UNITS_PER_CTA for n in CLUSTER_SIZES]:
        return f"the cluster scan runs hidden widths {[n * UNITS_PER_CTA for n in CLUSTER_SIZES]}, got {hidden}"
    if chunk_size > 64:
        return f"the cluster scan runs chunks of at most 64 tokens, got {chunk_size}"
    if dtype != torch.bfloat16:
        return f"the cluster scan takes bf16 inputs, got {dtype}"
    if resets:
        return "the cluster scan does not restart rows (packed documents); use 'triton'"
    return None


def device_problem(device: torch.device) -> str | None:
    """Why the kernel cannot launch on `device` (None when it can; the interpreter runs
    the emulation)."""
    if device.type != "cuda":
        return None if interpreting() else f"the cluster scan needs a CUDA sm_90 device, got {device.type!r}"
    arch = arch_of(device)
    if arch is None or arch // 10 != 9:
        return f"the cluster scan needs sm_90 (thread-block clusters and wgmma), got sm_{arch}"
    return gluon_problem()


def compile_cluster(
    n_ctas: int, chunk_size: int, activation: str, clip: bool, save: bool = True, consan=False, stall: int = 0
):
    """The CompiledKernel for sm_90, ahead of time (no GPU needed), with the checkpoint
    interval a launch of this configuration takes (stall: `stalled`'s build)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import GluonASTSource

    from .cluster_forward import cluster_forward_kernel

    pointers = ("q_ptr", "k_ptr", "v_ptr", "theta_ptr", "log_eta_ptr", "log_retain_ptr", "state_ptr", "y_ptr")
    types = ("*bf16",) * 3 + ("*fp32",) * 4 + ("*bf16",)
    sig = dict(zip(pointers, types, strict=True))
    sig.update({"saved_ptr": "*fp32", "clip_ptr": "*fp32", "T": "i32", "H": "i32", "max_norm": "fp32"})
    every = checkpoint_interval(state_size(HEAD_DIM, n_ctas * UNITS_PER_CTA, HEAD_DIM), chunk_size)
    constexprs = _constexprs(chunk_size, activation, clip, save, every, stall)
    sig.update({name: "constexpr" for name in constexprs})
    options: dict[str, int | str] = {"num_warps": NUM_WARPS, "num_ctas": n_ctas}
    if consan:
        options["instrumentation_mode"] = "consan"
    # as a launch specialises the kernel: torch's allocations are 16-byte aligned
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(len(pointers) + 2)}
    source = GluonASTSource(fn=cluster_forward_kernel, signature=sig, constexprs=constexprs, attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def _constexprs(chunk_size: int, activation: str, clip: bool, save: bool, every: int, stall: int = 0) -> dict:
    sizes = {"CHUNK": chunk_size, "D": HEAD_DIM, "HC": UNITS_PER_CTA}
    return {**sizes, "ACT": ACTIVATION_CODES[activation], "CLIP": clip, "SAVE": save, "CKPT": every, "STALL": stall}


_stall_ns = 0  # set only inside `stalled`


@contextlib.contextmanager
def stalled(ns: int):
    """Kernel launches inside make the last CTA of every cluster wait `ns` nanoseconds
    after each exchange's barrier before it reads its partners' slots. The result must not
    change by a bit: every CTA sums the same values in the same order whatever the timing,
    and a slot is written again only after every CTA has passed the next exchange's barrier
    (the GPU acceptance run's stress test of that argument; a build of its own)."""
    global _stall_ns
    before, _stall_ns = _stall_ns, ns
    try:
        yield
    finally:
        _stall_ns = before


@functools.cache
def shared_memory_problem(n_ctas: int, chunk_size: int, activation: str, clip: bool, limit: int) -> str | None:
    try:
        shared = compile_cluster(n_ctas, chunk_size, activation, clip).metadata.shared
    except Exception as e:  # a compile failure is a reason not to launch, never a crash
        return f"the Gluon cluster kernel does not compile for sm_90 ({type(e).__name__}: {e})"
    if shared > limit:
        return f"the Gluon cluster kernel needs {shared:,} bytes of shared memory per CTA; the device allows {limit:,}"
    return None


@torch.library.custom_op("titans::cluster_memory_scan", mutates_args=())
def cluster_memory_scan(
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
    split: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`titans::memory_scan` (triton_backend/ops.py: the arguments and the four outputs)
    by the cluster kernel, `split` CTAs per (batch, head); `resets` and `init` must be
    empty (cluster_problem)."""
    if resets.numel():
        raise ValueError("the cluster scan does not restart rows (packed documents)")
    D = q.shape[-1]
    problem = cluster_problem(2, D, hidden, v.shape[-1], chunk_size, q.dtype, False)
    if problem or hidden != split * UNITS_PER_CTA or state.shape[-1] != 4 * D * hidden:
        raise ValueError(
            f"cluster scan: {problem or ''} split {split} x {UNITS_PER_CTA} units must be the hidden width "
            f"{hidden}, and the state {4 * D * hidden} floats per (batch, head), got {state.shape[-1]}"
        )
    if q.device.type != "cuda":
        return emulation.cluster_forward(
            q, k, v, theta, log_eta, log_retain, state, hidden, chunk_size, activation, max_grad_norm,
            save_states, checkpoint_every, split,
        )  # fmt: skip
    from .cluster_forward import cluster_forward_kernel

    B, T, H = q.shape[:3]
    y, state_out, saved, theta, clip_factor = forward_outputs(
        q, v, theta, state, chunk_size, max_grad_norm, save_states, checkpoint_every
    )
    clip = max_grad_norm > 0
    cluster_forward_kernel[(B * H,)](
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        state_out,
        y,
        saved,
        clip_factor if clip else theta,  # not written without the clip
        T,
        H,
        max_grad_norm,
        **_constexprs(chunk_size, activation, clip, save_states, checkpoint_every, _stall_ns),
        num_warps=NUM_WARPS,
        num_ctas=split,
    )
    return y, state_out, saved, clip_factor.clone()


cluster_memory_scan.register_fake(ops.memory_scan_fake)


def _setup_context(ctx, inputs, output):
    ops.setup_context(ctx, inputs, output)
    ctx.meta = (*ctx.meta[:-1], 1)  # differentiated by the one-program Triton backward


cluster_memory_scan.register_autograd(ops.scan_backward, setup_context=_setup_context)
