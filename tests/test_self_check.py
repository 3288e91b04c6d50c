"""The Triton scan's first-use self-check (kernels/self_check.py), run under the Triton
interpreter: it passes for the real kernels, catches a kernel that drops a term, and
dispatch then falls back ('auto', with one warning naming the configuration) or raises
(a forced 'triton')."""

import pytest
import torch

from titans_plugin.kernels import MemoryState, dispatch, self_check
from titans_plugin.kernels.triton_backend import ops

pytestmark = pytest.mark.slow  # the Triton interpreter

DIMS = dict(dk=16, hidden=32, dv=16)


@pytest.fixture(autouse=True)
def checked_on_cpu(monkeypatch):
    monkeypatch.setattr(self_check, "CHECKED_DEVICES", ("cpu",))
    monkeypatch.setattr(dispatch, "AUTO_TRITON_DEVICES", ("cpu",))
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.delenv("TITANS_TRITON_SELF_CHECK", raising=False)
    self_check.forget()
    yield
    self_check.forget()


def _state(depth: int, hidden: int = DIMS["hidden"]) -> MemoryState:
    dims = [DIMS["dk"]] + [hidden] * (depth - 1) + [DIMS["dv"]]
    w = tuple(torch.zeros(1, 1, dims[i], dims[i + 1]) for i in range(depth))
    return MemoryState(w, w)


def _q(dtype=torch.float32):
    return torch.zeros(1, 4, 1, DIMS["dk"], dtype=dtype)


@pytest.mark.parametrize(("depth", "clip", "resets"), [(1, True, True), (2, True, True), (2, False, False)])
def test_the_kernels_pass_their_check(depth, clip, resets):
    result = self_check.check("cpu", torch.float32, _state(depth), 8, "silu", clip, resets)
    assert result.ok, result.message
    assert result.max_error < 1e-5, result.message
    assert "passed on cpu (cpu), float32, depth" in result.message


def test_each_configuration_is_checked_once(monkeypatch):
    runs = []
    real = self_check._run
    monkeypatch.setattr(self_check, "_run", lambda key: runs.append(key) or real(key))
    for _ in range(3):
        assert self_check.failure(_q(), _state(1), 8, "silu", 1.0, False) is None
    self_check.failure(_q(), _state(1), 8, "silu", 0.0, False)  # clip off: another kernel
    assert len(runs) == 2


def _dropping_momentum(monkeypatch):
    """A kernel that drops a term of the update: its end state loses the momentum."""
    real = ops.memory_scan

    def wrong(q, k, v, theta, log_eta, log_retain, state, *args):
        y, end, saved, clip_factor = real(q, k, v, theta, log_eta, log_retain, state, *args)
        half = end.shape[-1] // 2  # W then S in the flat state
        return y, torch.cat([end[..., :half], torch.zeros_like(end[..., half:])], -1), saved, clip_factor

    monkeypatch.setattr(ops, "memory_scan", wrong)


def test_a_wrong_kernel_is_caught_and_auto_falls_back_with_one_warning(monkeypatch):
    _dropping_momentum(monkeypatch)
    with pytest.warns(UserWarning, match="self-check failed") as caught:
        assert (
            dispatch.resolve_backend("auto", _q(), _state(2), chunk_size=8, activation="silu", max_grad_norm=1.0)
            == "chunk"
        )
    (warning,) = [w for w in caught if "self-check failed" in str(w.message)]
    text = str(warning.message)
    assert "memory backend 'auto' uses 'chunk' on this CPU device: Triton memory scan self-check failed on" in text
    assert "cpu (cpu), float32, depth 2, silu, clip on, restarts off, head dim 16/16, hidden 32, chunk 8" in text
    assert "largest relative error" in text
    assert "end S" in text  # the term the kernel dropped
    assert (
        dispatch.resolve_backend("auto", _q(), _state(2), chunk_size=8, activation="silu", max_grad_norm=1.0) == "chunk"
    )
    assert len(dispatch._warned) == 1  # warned once


def test_a_forced_triton_that_failed_its_check_raises_with_the_figures(monkeypatch):
    _dropping_momentum(monkeypatch)
    expected = r"titans\.backend = 'triton': Triton memory scan self-check failed .* error"
    with pytest.raises(RuntimeError, match=expected):
        dispatch.resolve_backend("triton", _q(), _state(1), chunk_size=8, activation="silu", max_grad_norm=0.0)


def test_an_exception_in_the_kernels_is_a_failed_check(monkeypatch):
    def broken(*args):
        raise RuntimeError("illegal memory access")

    monkeypatch.setattr(ops, "memory_scan", broken)
    message = self_check.failure(_q(), _state(1), 8, "silu", 0.0, False)
    assert "raised RuntimeError('illegal memory access')" in message


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_first_use_under_no_grad_is_checked_with_gradients(mode):
    """Inference (or a forward-only timing) may be the first use of a configuration: the
    check still differentiates, and passes."""
    with mode():
        assert self_check.failure(_q(), _state(1), 8, "silu", 0.0, False) is None


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("TITANS_TRITON_SELF_CHECK", "0")
    _dropping_momentum(monkeypatch)
    assert self_check.failure(_q(), _state(1), 8, "silu", 0.0, False) is None


def _compiled_scan_gradients(backend: str, compiled: bool):
    """The memory scan with `backend` under torch.compile(fullgraph=True), as torchtitan
    compiles a block: the backend is resolved while the graph is traced."""
    from devtools.models import memory_inputs

    inputs, state = memory_inputs(B=1, T=20, H=1, D=DIMS["dk"], depth=2, hidden=DIMS["hidden"], dtype=torch.float32)
    leaves = [t.detach().requires_grad_() for t in (*inputs, *state.weights, *state.momentum)]

    def run(*leaves):
        st = MemoryState(tuple(leaves[6:8]), tuple(leaves[8:]))
        y, end = dispatch.neural_memory_scan(
            *leaves[:6], st, chunk_size=8, activation="silu", max_grad_norm=1.0, backend=backend
        )
        return y.square().sum() + end.weights[1].sum()

    graphs = []

    def recording(gm, example_inputs):  # the traced graph, run as traced
        graphs.append(gm.code)
        return gm.forward

    fn = torch.compile(run, fullgraph=True, backend=recording) if compiled else run
    return torch.autograd.grad(fn(*leaves), leaves), "".join(graphs)


@pytest.mark.parametrize("wrong_kernel", [False, True])
def test_the_backend_is_resolved_eagerly_inside_a_fullgraph_compile(monkeypatch, wrong_kernel):
    """Tracing runs the checks behind the choice (the self-check launches kernels; on CUDA an
    ahead-of-time compile sizes shared memory) eagerly, once, and the answer enters the graph
    as a constant: a fullgraph compile neither breaks on them nor skips them."""
    if wrong_kernel:
        _dropping_momentum(monkeypatch)
    runs = []
    real = self_check._run
    monkeypatch.setattr(self_check, "_run", lambda key: runs.append(key) or real(key))
    torch._dynamo.reset()
    if wrong_kernel:  # the check fails while tracing: 'auto' compiles the chunked path, warned
        with pytest.warns(UserWarning, match="self-check failed"):
            compiled, graph = _compiled_scan_gradients("auto", True)
        expected, _ = _compiled_scan_gradients("chunk", False)
    else:
        compiled, graph = _compiled_scan_gradients("auto", True)
        expected, _ = _compiled_scan_gradients("triton", False)
    assert ("titans.memory_scan" in graph) is not wrong_kernel
    assert len(runs) == 1
    for a, b in zip(compiled, expected, strict=True):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-6
