"""The Triton scan checks itself on the device before its first use.

The interpreter proves the kernels' numerics on CPU, but what only a GPU shows (the order
of tensor-core accumulation and bf16 rounding, a code-generation bug, a missing barrier
between programs) cannot show there. So the first time a process would run the Triton scan
for a kernel configuration on a device (device, input dtype, memory depth, activation, clip
on or off, restarts on or off, head dims, hidden width, chunk size; the phased forward and
the checkpoint interval follow from these), it runs a small problem through the Triton
kernels and through the exact chunked path in fp32 and compares them: the output, the end
state (weights and momentum), and the gradient of every input, of the initial state and of
the restart weights. The problem has several chunks, a ragged last chunk, a checkpoint
group boundary, a restart (when the configuration restarts) and an active inner-gradient
clip (when it clips).

A mismatch or an exception makes `failure` return a message naming the device, dtype,
configuration and the largest error; dispatch then warns once and uses the chunked path
for `backend = "auto"`, and raises for a forced `"triton"`. A wrong kernel costs speed,
never correctness.

`TITANS_TRITON_SELF_CHECK=0` turns the check off. It runs on the devices in
CHECKED_DEVICES (CUDA); tests add "cpu" to check the kernels under the interpreter.
"""

import os
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .chunk import chunk_neural_memory
from .state import MemoryState

CHECKED_DEVICES = ("cuda",)
# Largest relative error (max |triton - chunk| / max |chunk|) per input dtype. The tests
# hold the kernels to 2e-5 (outputs) and 5e-5 (gradients) against fp64 in fp32, and to
# 2e-2 / 3e-2 in bf16/fp16 against a reference that saw the same rounded inputs
# (tests/test_triton_kernels.py); the fp32 chunked reference adds its own rounding.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-2}
CLIP = 0.1  # a clip threshold that acts on most tokens of the problem
CHECK_PAIRS = (2, 2)  # the problem's batch and heads (the split scan's program count depends on them)
_RESULTS: dict[tuple, "CheckResult"] = {}
# The kernel backends the check covers, as their labels read in its messages.
KERNEL_NAMES = {"triton": "", "triton_split": ", split-state scan", "gluon_cluster": ", Gluon cluster forward"}


def kernel_scan(backend: str):
    """The launch of a kernel backend, imported when first checked."""
    if backend == "gluon_cluster":
        from .gluon_backend import launch as cluster_launch

        return cluster_launch
    from .triton_backend.ops import launch, launch_split

    return launch_split if backend == "triton_split" else launch


class CheckResult(NamedTuple):
    ok: bool
    message: str  # what was checked and how it went
    max_error: float
    seconds: float


def enabled() -> bool:
    return os.environ.get("TITANS_TRITON_SELF_CHECK", "1") != "0"


def failure(
    q, state: MemoryState, chunk_size: int, activation: str, max_grad_norm, resets: bool, backend: str = "triton"
) -> str | None:
    """None when the kernels of `backend` (a key of KERNEL_SCANS) passed their check for
    this configuration on q's device (or are not checked there); else why not. Runs the
    check the first time, then remembers."""
    if not enabled() or q.device.type not in CHECKED_DEVICES:
        return None
    result = check(q.device, q.dtype, state, chunk_size, activation, bool(max_grad_norm), resets, backend)
    return None if result.ok else result.message


def configuration(
    device, dtype, state: MemoryState, chunk_size: int, activation: str, clip: bool, resets: bool, backend="triton"
):
    dk, dv = state.weights[0].shape[-2], state.weights[-1].shape[-1]
    hidden = state.weights[0].shape[-1] if len(state.weights) == 2 else 0
    depth = len(state.weights)
    return (str(torch.device(device)), dtype, depth, activation, clip, resets, dk, hidden, dv, chunk_size, backend)


def describe(key: tuple) -> str:
    device, dtype, depth, activation, clip, resets, dk, hidden, dv, chunk, backend = key
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device
    return (
        f"{device} ({name}), {str(dtype).removeprefix('torch.')}, depth {depth}, {activation}, "
        f"clip {'on' if clip else 'off'}, restarts {'on' if resets else 'off'}, head dim {dk}/{dv}, "
        f"hidden {hidden}, chunk {chunk}" + KERNEL_NAMES[backend]
    )


def check(
    device, dtype, state: MemoryState, chunk_size: int, activation: str, clip: bool, resets: bool, backend="triton"
):
    """The check of one configuration (run once per process, then remembered)."""
    key = configuration(device, dtype, state, chunk_size, activation, clip, resets, backend)
    if key not in _RESULTS:
        _RESULTS[key] = _run(key)
    return _RESULTS[key]


def forget() -> None:
    """Drop every remembered result (tests)."""
    _RESULTS.clear()


def problem(key: tuple, B: int, H: int, T: int):
    """Inputs of configuration `key` ((inputs, state, restarts, initial)) as the memory
    module makes them: L2-normalised q and k, gates inside their ranges, and (when the
    configuration restarts) a restart inside the run and one in the last chunk."""
    device, dtype, depth, _, _, resets, dk, hidden, dv, chunk, _ = key
    g = torch.Generator().manual_seed(0)
    n_chunks = -(-T // chunk)

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g)

    q, k = F.normalize(rnd(B, T, H, dk), dim=-1), F.normalize(rnd(B, T, H, dk), dim=-1)
    inputs = (
        q,
        k,
        rnd(B, T, H, dv),
        0.3 * torch.rand(B, T, H, generator=g),
        torch.rand(B, T, H, generator=g),
        0.2 * torch.rand(B, T, H, generator=g),
    )
    dims = [dk] + [hidden] * (depth - 1) + [dv]
    weights = tuple(rnd(B, H, dims[i], dims[i + 1], scale=dims[i] ** -0.5) for i in range(depth))
    momentum = tuple(rnd(B, H, dims[i], dims[i + 1], scale=0.1) for i in range(depth))
    restarts = initial = None
    if resets:
        restarts = torch.zeros(B, n_chunks, dtype=torch.bool)
        restarts[0, min(1, n_chunks - 1)] = restarts[-1, n_chunks - 1] = True  # inside the run, in the last chunk
        initial = MemoryState(tuple(rnd(*w.shape, scale=w.shape[-2] ** -0.5) for w in weights), ())
    cast = [dtype] * 3 + [torch.float32] * 3
    inputs = tuple(t.to(device=device, dtype=c) for t, c in zip(inputs, cast, strict=True))
    state = MemoryState(*(tuple(t.to(device) for t in ts) for ts in (weights, momentum)))
    if restarts is not None and initial is not None:
        restarts = restarts.to(device)
        initial = MemoryState(tuple(w.to(device) for w in initial.weights), ())
    return inputs, state, restarts, initial


def _leaves(inputs, state: MemoryState, initial: MemoryState | None, dtype=None):
    """Leaf copies (the inputs in `dtype` if given) that record gradients."""

    def leaf(t, dt=None):
        return t.detach().to(dt or t.dtype).requires_grad_()

    ins = tuple(leaf(t, dtype if dtype is not None else None) for t in inputs)
    st = MemoryState(tuple(leaf(w) for w in state.weights), tuple(leaf(s) for s in state.momentum))
    init = None if initial is None else MemoryState(tuple(leaf(w) for w in initial.weights), ())
    return ins, st, init


def _gradients(y, end: MemoryState, leaves) -> list[torch.Tensor]:
    """Gradients of a fixed random linear functional of the output and the end state."""
    g = torch.Generator().manual_seed(1)
    outs = [y, *end.weights, *end.momentum]
    loss = sum((t.float() * torch.randn(t.shape, generator=g).to(t.device)).sum() for t in outs)
    return list(torch.autograd.grad(loss, leaves, allow_unused=True))


def paired_outputs(key: tuple, threshold: float | None, reference_stats: dict | None = None) -> list[tuple]:
    """The check's problem for configuration `key` through the Triton kernels and through the
    fp32 chunked path (clip threshold `threshold`): (name, triton, reference) for the output,
    the end state and every gradient; the triton side is None where a gradient is missing.
    `reference_stats` receives the chunked path's statistics (its clip factors)."""
    from .triton_backend.config import checkpoint_interval, state_size

    _, _, depth, activation, _, _, dk, hidden, dv, chunk, backend = key
    every = checkpoint_interval(state_size(dk, hidden, dv), chunk)  # the kernel production runs
    # CHECK_PAIRS sequences and heads, past a checkpoint group boundary, ending in a ragged chunk
    B, H = CHECK_PAIRS
    inputs, state, restarts, initial = problem(key, B, H, (every + 1) * chunk + chunk // 2 + 1)
    ins, st, init = _leaves(inputs, state, initial)
    q, k, v, theta, eta, alpha = ins
    config = dict(chunk_size=chunk, activation=activation, max_grad_norm=threshold, resets=restarts)
    y, end = kernel_scan(backend)(q, k, v, theta, eta, alpha, st, **config, initial=init, checkpoint_every=every)
    # the reference sees the same (rounded) inputs, in fp32
    ref_ins, ref_st, ref_init = _leaves(inputs, state, initial, dtype=torch.float32)
    q, k, v, theta, eta, alpha = ref_ins
    y_ref, end_ref = chunk_neural_memory(
        q, k, v, theta, eta, alpha, ref_st, **config, initial=ref_init, stats=reference_stats
    )
    names = ["q", "k", "v", "theta", "eta", "alpha"]
    names += [f"initial W{i + 1}" for i in range(depth)] + [f"initial S{i + 1}" for i in range(depth)]
    leaves = [*ins, *st.weights, *st.momentum]
    ref_leaves = [*ref_ins, *ref_st.weights, *ref_st.momentum]
    if init is not None and ref_init is not None:
        names += [f"restart W{i + 1}" for i in range(depth)]
        leaves += list(init.weights)
        ref_leaves += list(ref_init.weights)
    pairs = [("output", y, y_ref)]
    pairs += [(f"end W{i + 1}", a, b) for i, (a, b) in enumerate(zip(end.weights, end_ref.weights, strict=True))]
    pairs += [(f"end S{i + 1}", a, b) for i, (a, b) in enumerate(zip(end.momentum, end_ref.momentum, strict=True))]
    grads, ref_grads = _gradients(y, end, leaves), _gradients(y_ref, end_ref, ref_leaves)
    pairs += [(f"gradient of {n}", a, b) for n, a, b in zip(names, grads, ref_grads, strict=True) if b is not None]
    return pairs


def _run(key: tuple) -> CheckResult:
    dtype, clip = key[1], key[4]
    start = time.perf_counter()
    label = describe(key)
    try:
        # the first call of a configuration may come under torch.no_grad() or
        # torch.inference_mode() (inference, or a forward-only timing): the check
        # differentiates either way
        with torch.inference_mode(False), torch.enable_grad():
            pairs = paired_outputs(key, CLIP if clip else None)
        worst, error = "", 0.0
        for name, a, b in pairs:
            if a is None:
                return CheckResult(False, f"{label}: no gradient of {name[12:]}", float("inf"), 0.0)
            e = _relative_error(a, b)
            if not e <= error:  # NaN counts as the worst
                worst, error = name, e
    except Exception as exc:  # any failure of the kernels is a failed check, never a crash
        seconds = time.perf_counter() - start
        return CheckResult(False, f"Triton memory scan self-check on {label} raised {exc!r}", float("inf"), seconds)
    seconds = time.perf_counter() - start
    tolerance = TOLERANCE[dtype]
    ok = error <= tolerance
    verdict = "passed" if ok else "failed"
    message = (
        f"Triton memory scan self-check {verdict} on {label}: largest relative error {error:.2e} "
        f"({worst}; tolerance {tolerance:.0e}), {seconds:.2f} s"
    )
    return CheckResult(ok, message, error, seconds)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in fp64 on the CPU; NaN or inf anywhere in a is infinite."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
