"""The split-state forward (kernels/triton_backend/split_forward.py) on CPU: SPLIT programs
per (batch, head) run in the threaded interpreter grid (devtools/threaded_grid.py) and
equal the fp64 chunked reference on the Triton harness's hard cases: ragged state tiles,
padded and ragged chunks, checkpoint groups (whose states the one-program backward
replays, so every gradient checks the split's checkpoints), restarts, the clip on and off,
depth 1 and 2, and groups of 2, 3 and 4 programs. A meeting that does not wait is caught;
a partner that never comes is an error, not a wrong result."""

import functools

import pytest
import torch
import triton.language as tl

from devtools import scan_harness as harness
from devtools.models import memory_inputs
from titans_plugin.kernels import MemoryState, chunk_neural_memory, triton_neural_memory
from titans_plugin.kernels.triton_backend import buffers, config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(tl, "atomic_poll"), reason="needs triton >= 3.9 (tl.atomic_poll)"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the threaded grid is the interpreter's"),
]


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """NaN-filled outputs and scratch (an unwritten element fails) and 16-wide state tiles."""
    monkeypatch.setattr(buffers, "empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype))
    monkeypatch.setattr(config, "HIDDEN_TILE", 16)


@pytest.fixture
def threads():
    """Every launch in the threaded grid."""
    from devtools.threaded_grid import threaded_grid

    with threaded_grid():
        yield


def _compare(split, monkeypatch, *, depth, hidden, D=20, T=70, chunk=24, every=2, clip=0.5, **kw):
    monkeypatch.setattr(config, "SPLIT_FORWARD", split)
    inputs, state = memory_inputs(B=2, T=T, H=2, D=D, depth=depth, hidden=hidden)
    scan = functools.partial(triton_neural_memory, checkpoint_every=every)
    return harness.compare(
        scan,
        chunk_neural_memory,
        inputs,
        state,
        tol=2e-5,
        grad_tol=5e-5,
        dtype=torch.float32,
        chunk_size=chunk,
        activation="silu",
        max_grad_norm=clip,
        **kw,
    )


@pytest.mark.parametrize(("split", "hidden"), [(2, 60), (4, 60), (3, 36)])
def test_depth_2_split_equals_the_reference(split, hidden, monkeypatch, threads):
    """hidden 60 is 4 tiles (the last 12 wide), 36 is 3; chunk 24 pads to 32 and T = 70
    leaves a ragged last chunk; a checkpoint every 2 chunks; the clip acts on most tokens."""
    _compare(split, monkeypatch, depth=2, hidden=hidden)


def test_depth_2_without_the_clip(monkeypatch, threads):
    """Two meetings a chunk instead of three: the slot sets must still alternate."""
    _compare(2, monkeypatch, depth=2, hidden=60, clip=0.0)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_depth_1_split_over_the_value_columns(clip, monkeypatch, threads):
    """Depth 1 splits W's columns (D_v 20: 2 tiles): with the clip, one meeting a chunk for
    its norm; without, none at all."""
    _compare(2, monkeypatch, depth=1, hidden=0, clip=clip)


@pytest.mark.parametrize("depth", [1, 2])
def test_restarts_in_the_split(depth, monkeypatch, threads):
    """Packed documents: each program restarts its own tiles from the initial weights, at
    the first chunk, at a checkpoint group's start, inside a group and at the ragged last
    chunk (5 chunks of 16, a checkpoint every 3)."""
    g = torch.Generator().manual_seed(5)
    _, state = memory_inputs(B=2, T=70, H=2, D=20, depth=depth, hidden=60 if depth == 2 else 0)
    init = tuple(torch.randn(w.shape, generator=g, dtype=w.dtype) / w.shape[-2] ** 0.5 for w in state.weights)
    resets = torch.tensor([[False, True, False, True, False], [True, False, True, False, True]])
    errors = _compare(
        2,
        monkeypatch,
        depth=depth,
        hidden=60 if depth == 2 else 0,
        chunk=16,
        every=3,
        resets=resets,
        initial=MemoryState(init, ()),
    )
    assert f"gradient of restart W{depth}" in errors


def _scan(split, monkeypatch, **kw):
    monkeypatch.setattr(config, "SPLIT_FORWARD", split)
    inputs, state = memory_inputs(B=1, T=40, H=2, D=20, depth=2, hidden=60)
    inputs = tuple(t.float() for t in inputs)
    state = MemoryState(tuple(w.float() for w in state.weights), tuple(m.float() for m in state.momentum))
    return triton_neural_memory(*inputs, state, chunk_size=16, activation="silu", max_grad_norm=0.5, **kw)


def test_a_meeting_that_does_not_wait_is_caught(monkeypatch, threads):
    """The meeting's wait left out: program 0 reads its partners' slots before they have
    written them (NaN) and the output is wrong."""
    import triton

    from titans_plugin.kernels.triton_backend import exchange

    @triton.jit
    def arrive_only(counter_ptr, n_programs, TIMEOUT_NS: tl.constexpr):
        tl.atomic_add(counter_ptr, 1, sem="release")
        return tl.full([], 1, tl.int32)

    want, _ = _scan(2, monkeypatch)
    assert torch.isfinite(want).all()
    monkeypatch.setattr(exchange, "meet", arrive_only)
    got, _ = _scan(2, monkeypatch)
    assert not torch.isfinite(got).all() or (got - want).abs().max() > 1e-3


def test_a_partner_that_never_arrives_is_an_error(monkeypatch):
    """In the plain interpreter program 0 waits for program 1, which runs only after it:
    the wait times out, and the launch raises rather than return its values."""
    from titans_plugin.kernels.triton_backend import split

    monkeypatch.setattr(split, "TIMEOUT_S", 0.02)
    with pytest.raises(RuntimeError, match="waited more than 0.02 s for a partner"):
        _scan(2, monkeypatch)


def test_a_split_that_does_not_divide_the_tiles_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="the 4 hidden tiles of 16 units do not divide among 3 programs"):
        _scan(3, monkeypatch)
    with pytest.raises(ValueError, match="split must be an integer >= 2, got 1"):
        _scan(1, monkeypatch)
