"""The Gluon cluster scan (backend `gluon_cluster`) on CPU. Gluon does not run in Triton's
interpreter, so what runs here is the kernel's arithmetic in torch (gluon_backend/
emulation.py), held to the fp64 reference and to the Triton kernel that computes the same
roundings one program at a time; then the backend around it: the op's checkpoints
differentiated by the Triton backward, dispatch, the configurations it refuses, and the
first-use self-check that guards the kernel on a GPU. The kernel's compile facts (shared
memory, spills, cluster barriers, the race-checker build) are in test_kernel_compile.py."""

import pytest
import torch

from devtools import scan_harness as harness
from devtools.models import max_rel_err, memory_inputs
from titans_plugin.kernels import MemoryState, chunk_neural_memory, dispatch, gluon_backend, self_check
from titans_plugin.kernels.chunk_math import log_gates
from titans_plugin.kernels.gluon_backend import emulation
from titans_plugin.kernels.triton_backend import ops


def _inputs(T, hidden, H=2, seed=0):
    inputs, state = memory_inputs(B=1, T=T, H=H, D=64, depth=2, hidden=hidden, dtype=torch.float64, seed=seed)
    return inputs, state


def _emulate(inputs, state, hidden, chunk, clip, n_ctas, every=2):
    q, k, v, theta, eta, alpha = inputs
    log_eta, log_retain = log_gates(eta, alpha, torch.float32)
    qkv = [t.to(torch.bfloat16) for t in (q, k, v)]
    return emulation.cluster_forward(
        *qkv, theta.float(), log_eta, log_retain, ops.pack_state(state), hidden, chunk, "silu", clip, True, every,
        n_ctas,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("n_ctas", "T", "chunk", "clip"),
    [(4, 150, 64, 1.0), (4, 64, 64, 0.05), (2, 90, 48, 0.0), (2, 37, 16, 0.5)],
)
def test_the_cluster_arithmetic_equals_the_reference(n_ctas, T, chunk, clip):
    """Each CTA's share of every product from its 64 hidden units, bf16 operands, the
    cluster sums as the kernel pairs them: the output, the end state, every checkpoint and the clip
    factors against the fp64 chunked path on the same rounded inputs (ragged last chunks,
    chunks shorter than the kernel's 64 rows, the clip acting or off)."""
    hidden = 64 * n_ctas
    inputs, state = _inputs(T, hidden)
    y, flat, saved, factor = _emulate(inputs, state, hidden, chunk, clip, n_ctas)
    q, k, v, theta, eta, alpha = inputs
    rounded = [t.to(torch.bfloat16).double() for t in (q, k, v)]
    stats: dict = {}
    config = dict(chunk_size=chunk, activation="silu", max_grad_norm=clip or None)
    y_ref, end_ref = chunk_neural_memory(*rounded, theta, eta, alpha, state, **config, stats=stats)
    assert y.dtype == torch.bfloat16
    assert max_rel_err(y.double(), y_ref) < 2e-2
    end = ops.unpack_state(flat, state)
    for a, b in zip((*end.weights, *end.momentum), (*end_ref.weights, *end_ref.momentum), strict=True):
        assert max_rel_err(a.double(), b) < 2e-2
    every = 2
    n_chunks = -(-T // chunk)
    for i in range(-(-n_chunks // every)):  # the state entering chunk i * every
        t = i * every * chunk
        _, start = chunk_neural_memory(*(x[:, :t] for x in rounded), theta[:, :t], eta[:, :t], alpha[:, :t], state,
                                       **config)  # fmt: skip
        assert max_rel_err(saved[:, :, i].double(), ops.pack_state(start).double()) < 2e-2, i
    if clip:
        assert max_rel_err(factor.double(), stats["clip_factor"]) < 2e-2
        assert factor.min() < 1.0  # the clip acted
    else:
        assert factor.numel() == 0


def test_the_cluster_arithmetic_is_the_triton_kernels(monkeypatch):
    """The same roundings as the Triton kernel (interpreted, one program per (batch, head)):
    only the order of fp32 sums differs, so they agree far inside the bf16 tolerance."""
    inputs, state = _inputs(100, 256, H=1)
    q, k, v, theta, eta, alpha = inputs
    log_eta, log_retain = log_gates(eta, alpha, torch.float32)
    qkv = [t.to(torch.bfloat16) for t in (q, k, v)]
    none = torch.empty(0)
    flat = ops.pack_state(state)
    args = (*qkv, theta.float(), log_eta, log_retain, flat, none.to(torch.int8), none, 256, 64, "silu", 0.5, True, 1)
    y_t, flat_t, saved_t, clip_t = ops.memory_scan(*args, 1)
    y, flat_c, saved_c, clip_c = emulation.cluster_forward(*args[:7], *args[9:], 4)
    assert max_rel_err(y.float(), y_t.float()) < 1e-5
    assert max_rel_err(clip_c, clip_t) < 1e-5
    assert max_rel_err(flat_c, flat_t) < 1e-3  # bf16 operands of the update round at ties differently
    assert max_rel_err(saved_c, saved_t) < 1e-3


def _own_partial_only(parts):  # a CTA that reads only its own slot
    return parts[0]


def test_a_cluster_that_sums_only_its_own_partial_is_caught(monkeypatch):
    """Without the cross-CTA sums the reference test's tolerance is far exceeded: the
    emulation's rank structure is what these tests check."""
    inputs, state = _inputs(64, 256)
    good = _emulate(inputs, state, 256, 64, 1.0, 4)[0]
    monkeypatch.setattr(emulation, "_cluster_sum", _own_partial_only)
    bad = _emulate(inputs, state, 256, 64, 1.0, 4)[0]
    assert max_rel_err(bad.double(), good.double()) > 0.2


def test_the_backend_equals_chunk_with_the_triton_backward():
    """backend = 'gluon_cluster' end to end (the op under the interpreter runs the emulation,
    the backward is the Triton one-program backward over the op's checkpoints): outputs, end
    state, clip factors and every gradient against the chunked path."""
    inputs, state = _inputs(100, 128)
    rounded = tuple(t.to(torch.bfloat16).double() if i < 3 else t for i, t in enumerate(inputs))
    harness.compare(
        gluon_backend.launch, chunk_neural_memory, rounded, state, tol=2e-2, grad_tol=3e-2, dtype=torch.bfloat16,
        chunk_size=64, activation="silu", max_grad_norm=1.0,
    )  # fmt: skip
    q = rounded[0].to(torch.bfloat16)
    assert dispatch.resolve_backend("gluon_cluster", q, state, chunk_size=64, activation="silu") == "gluon_cluster"


def _state(depth=2, dk=64, hidden=256, dv=64):
    dims = [dk] + [hidden] * (depth - 1) + [dv]
    w = tuple(torch.zeros(1, 1, dims[i], dims[i + 1]) for i in range(depth))
    return MemoryState(w, w)


@pytest.mark.parametrize(
    ("state", "dtype", "chunk", "resets", "reason"),
    [
        (_state(depth=1, hidden=0), torch.bfloat16, 64, False, "runs depth-2 memories, got depth 1"),
        (_state(dk=32, dv=32), torch.bfloat16, 64, False, "head dims 64, got 32/32"),
        (_state(hidden=192), torch.bfloat16, 64, False, r"hidden widths \[128, 256\], got 192"),
        (_state(), torch.bfloat16, 128, False, "chunks of at most 64 tokens, got 128"),
        (_state(), torch.float32, 64, False, "takes bf16 inputs, got torch.float32"),
        (_state(), torch.bfloat16, 64, True, "does not restart rows"),
    ],
)
def test_the_backend_says_why_it_cannot_run(state, dtype, chunk, resets, reason):
    q = torch.zeros(1, 8, 1, state.weights[0].shape[-2], dtype=dtype)
    with pytest.raises(ValueError, match=reason):
        dispatch.resolve_backend("gluon_cluster", q, state, chunk_size=chunk, activation="silu", resets=resets)


def test_the_config_rejects_a_depth_the_cluster_kernel_does_not_have():
    from titans_plugin.config import TitansConfig

    with pytest.raises(ValueError, match=r"titans.memory_depth must be 2 with titans.backend='gluon_cluster'"):
        TitansConfig(pattern="M", memory_depth=1, backend="gluon_cluster").validate(dim=24, n_layers=1)


def test_the_backend_needs_an_sm90_gpu_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    q = torch.zeros(1, 8, 1, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        dispatch.resolve_backend("gluon_cluster", q, _state(), chunk_size=64, activation="silu")
    assert dispatch.resolve_backend("auto", q, _state(), chunk_size=64, activation="silu") == "chunk"


@pytest.fixture
def checked_on_cpu(monkeypatch):
    monkeypatch.setattr(self_check, "CHECKED_DEVICES", ("cpu",))
    self_check.forget()
    yield
    self_check.forget()


@pytest.mark.slow  # two checks with the interpreted Triton backward at hidden 128 (about 2 min)
def test_the_self_check_runs_the_cluster_scan_and_catches_a_wrong_one(monkeypatch, checked_on_cpu):
    """The first-use check runs the backend's op (here its emulation) against the chunked
    path; a cluster that drops its partners' partials fails it, and the forced backend
    then refuses to run rather than compute something else. Run where the kernel can be
    built (the torchtitan 0.3.0 stack's torch pins another triton, whose interpreted
    backward this slowest of the cluster tests would check instead)."""
    if gluon_backend.cluster.gluon_problem():
        pytest.skip(gluon_backend.cluster.gluon_problem())
    q = torch.zeros(1, 8, 1, 64, dtype=torch.bfloat16)
    assert self_check.failure(q, _state(hidden=128), 64, "silu", 0.5, False, "gluon_cluster") is None
    self_check.forget()
    monkeypatch.setattr(emulation, "_cluster_sum", _own_partial_only)
    message = self_check.failure(q, _state(hidden=128), 64, "silu", 0.5, False, "gluon_cluster")
    assert message is not None
    assert "Gluon cluster forward" in message
    with pytest.raises(RuntimeError, match="titans.backend = 'gluon_cluster'"):
        dispatch.resolve_backend("gluon_cluster", q, _state(hidden=128), chunk_size=64, activation="silu",
                                 max_grad_norm=0.5)  # fmt: skip
