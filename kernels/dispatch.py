"""The memory scan, one op with several backends, and the one place that picks among them.

Every backend takes the same arguments, by name after the inputs and the state:

    scan(q, k, v, theta, eta, alpha, state, *, chunk_size, activation, max_grad_norm,
         resets, initial, stats) -> (y, end state)

q, k [B, T, H, D_k], v [B, T, H, D_v], theta, eta, alpha [B, T, H]. resets [B, n_chunks]
(bool) with `initial`: row b restarts from initial's weights (zero momentum) before chunk i
where resets[b, i], as if a new sequence began there (packed documents, each laid out by
the memory to start at a chunk boundary); each backend handles restarts itself. stats: a
dict, or None; with max_grad_norm set, the backend puts into it "clip_factor" [B, T, H]
fp32, no gradient: each token's min(1, max_grad_norm / |its inner gradient|), < 1 where
the clip acted (the memory's clip-activity statistic). A backend
also says where it cannot run: `supports(q, state, **config) -> reason or None`.

    naive   per-token reference (kernels/naive.py)
    chunk   the exact chunk-parallel PyTorch path (kernels/chunk.py)
    triton  the Triton kernels (kernels/triton_backend/)
    triton_split  the same with the state split across 4 (or 2) programs per
            (batch, head) (triton_backend/split.py)
    gluon_cluster  the forward by a Gluon kernel with the state split over a cluster
            of sm_90 CTAs and resident in their shared memory (gluon_backend/), the
            backward by `triton`; depth 2, head dims 64, hidden 128 or 256, bf16
    auto    on CUDA, of the kernel designs for the device (gluon_cluster and triton on
            sm_90, triton_split and triton elsewhere) those that support the configuration
            and passed their first-use self-check (kernels/self_check.py), the one
            measured fastest at first use (kernels/design_race.py); chunk where none did,
            and everywhere else
"""

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import chunk, design_race, gluon_backend, naive, self_check, triton_backend
from .state import MemoryState

BACKENDS = ("auto", "chunk", "naive", "triton", "triton_split", "gluon_cluster")
Scan = Callable[..., tuple[torch.Tensor, MemoryState]]
Supports = Callable[..., str | None]
_SCANS: dict[str, tuple[Scan, Supports]] = {
    "chunk": (chunk.chunk_neural_memory, chunk.supports),
    "naive": (naive.naive_neural_memory, naive.supports),
    "triton": (triton_backend.launch, triton_backend.supports),
    "triton_split": (triton_backend.launch_split, triton_backend.split_supports),
    "gluon_cluster": (gluon_backend.launch, gluon_backend.supports),
}
AUTO_TRITON_DEVICES = ("cuda",)  # where "auto" uses the Triton kernels (tests add "cpu": the interpreter)
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def resolve_backend(
    backend: str,
    q: torch.Tensor,
    state: MemoryState,
    *,
    chunk_size: int,
    activation: str,
    max_grad_norm: float | None = None,
    resets: bool = False,
) -> str:
    """The backend that runs this call, asking the candidates once whether they can. 'auto'
    on CUDA: the fastest kernel design that supports the configuration (depth 1 or 2,
    fp32/bf16/fp16 inputs, within the device's shared memory; each design its own scope)
    and passed its first-use self-check, else 'chunk' with the reason warned once. A
    forced backend that cannot run is an error, never a silent fallback.

    Under torch.compile the checks behind the answer (an ahead-of-time kernel compile that
    sizes shared memory, a self-check that launches the kernels) cannot be traced: they run
    eagerly while the graph is traced, on stand-ins of q and the state that carry only
    device, dtype and shape, and the answer enters the graph as a constant."""
    config = dict(chunk_size=chunk_size, activation=activation, max_grad_norm=max_grad_norm, resets=resets)
    if torch.compiler.is_compiling():
        tensors = (*state.weights, *state.momentum)
        shapes = tuple((tuple(int(n) for n in t.shape), t.dtype) for t in tensors)
        spec = (str(q.device), q.dtype, tuple(int(n) for n in q.shape), len(state.weights), shapes)
        return _resolve_while_tracing(backend, spec, **config)
    return _resolve(backend, q, state, **config)


@torch.compiler.assume_constant_result
def _resolve_while_tracing(backend: str, spec: tuple, **config) -> str:
    device, dtype, q_shape, depth, shapes = spec

    def stand_in(shape, dt):  # no memory: what the checks read is device, dtype and shape
        return torch.empty((), device=device, dtype=dt).expand(shape)

    state = MemoryState(
        tuple(stand_in(*s) for s in shapes[:depth]),
        tuple(stand_in(*s) for s in shapes[depth:]),
    )
    return _resolve(backend, stand_in(q_shape, dtype), state, **config)


def _resolve(
    backend: str, q: torch.Tensor, state: MemoryState, *, chunk_size, activation, max_grad_norm, resets
) -> str:
    config = dict(chunk_size=chunk_size, activation=activation, max_grad_norm=max_grad_norm, resets=resets)
    if backend not in BACKENDS:
        raise ValueError(f"memory backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return _auto(q, state, **config)
    refusal = _refusal(backend, q, state, **config)
    if refusal is None:
        return backend
    if refusal.checked:  # the device computes something else
        raise RuntimeError(
            f"titans.backend = {backend!r}: {refusal.reason}; use 'auto' (falls back to 'chunk') or 'chunk'"
        )
    raise ValueError(f"titans.backend = {backend!r} cannot run here: {refusal.reason}; use 'auto' or 'chunk'")


class Refusal(NamedTuple):
    """Why a backend cannot run a configuration here; `checked` when its self-check failed."""

    reason: str
    checked: bool = False


def _refusal(
    name: str, q: torch.Tensor, state: MemoryState, *, chunk_size, activation, max_grad_norm, resets
) -> Refusal | None:
    """Why backend `name` cannot run this configuration here: its own answer, then (for the
    kernel backends) its first-use self-check's."""
    config = dict(chunk_size=chunk_size, activation=activation, max_grad_norm=max_grad_norm, resets=resets)
    reason = _SCANS[name][1](q, state, **config)
    if reason is not None:
        return Refusal(reason)
    if name in self_check.KERNEL_NAMES:
        failed = self_check.failure(q, state, chunk_size, activation, max_grad_norm, resets, name)
        if failed is not None:
            return Refusal(failed, checked=True)
    return None


def _splits_as_checked(name: str, q: torch.Tensor, state: MemoryState, **config) -> bool:
    """The split-state scan runs 4 or 2 programs per (batch, head), as many as can be
    resident at q's batch x heads; its self-check ran the count of the check's problem.
    `auto` runs it only where the two agree (a named `triton_split` runs either)."""
    if name != "triton_split":
        return True
    pairs = self_check.CHECK_PAIRS[0] * self_check.CHECK_PAIRS[1]
    return triton_backend.split_count(q, state, **config) == triton_backend.split_count(q, state, **config, pairs=pairs)


def _auto(q: torch.Tensor, state: MemoryState, **config) -> str:
    """On CUDA: the fastest kernel design that supports the configuration and passed its
    self-check (kernels/design_race.py); 'chunk' where none did, with the one-program
    kernels' reason warned once. A design whose self-check failed while another runs is
    warned too."""
    if q.device.type not in AUTO_TRITON_DEVICES:
        return "chunk"
    candidates, failed, device = {}, {}, q.device.type.upper()
    for name in design_race.designs(q.device):  # the one-program kernels last
        refusal = _refusal(name, q, state, **config)
        if refusal is None and not _splits_as_checked(name, q, state, **config):
            continue  # its self-check never ran the program count this batch x heads takes
        if refusal is None:
            candidates[name] = _SCANS[name][0]
        elif refusal.checked:
            failed[name] = refusal.reason
    if candidates:
        for name, reason in failed.items():  # a design that failed its self-check, left out
            _warn_once(f"memory backend 'auto' does not use {name!r} on this {device} device: {reason}")
        return design_race.fastest(candidates, q, state, **config)
    _warn_once(f"memory backend 'auto' uses 'chunk' on this {device} device: {refusal.reason if refusal else ''}")
    return "chunk"


def neural_memory_scan(
    q,
    k,
    v,
    theta,
    eta,
    alpha,
    state: MemoryState,
    *,
    chunk_size: int,
    activation: str,
    max_grad_norm: float | None = None,
    backend: str = "auto",
    resets: torch.Tensor | None = None,
    initial: MemoryState | None = None,
    stats: dict | None = None,
) -> tuple[torch.Tensor, MemoryState]:
    """The scan by the backend `backend` resolves to (module docstring)."""
    name = resolve_backend(
        backend,
        q,
        state,
        chunk_size=chunk_size,
        activation=activation,
        max_grad_norm=max_grad_norm,
        resets=resets is not None,
    )
    scan = _SCANS[name][0]
    return scan(
        q,
        k,
        v,
        theta,
        eta,
        alpha,
        state,
        chunk_size=chunk_size,
        activation=activation,
        max_grad_norm=max_grad_norm,
        resets=resets,
        initial=initial,
        stats=stats,
    )
