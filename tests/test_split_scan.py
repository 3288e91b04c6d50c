"""The split-state scan (kernels/triton_backend/split_forward.py and split_backward.py) on
CPU: SPLIT programs per (batch, head) run in the threaded interpreter grid
(devtools/threaded_grid.py), forward and backward, and equal the fp64 chunked reference
on the Triton harness's hard cases: ragged state tiles, padded and ragged chunks,
checkpoint groups (the backward replays the split's checkpoints), restarts, the clip on
and off, depth 1 and 2, every gradient, and groups of 2, 3 and 4 programs; the
one-program backward never runs. A meeting that does not wait is caught, in the forward
and in the backward; a partner that never comes is an error, not a wrong result."""

import functools

import pytest
import torch
import triton.language as tl

from devtools import scan_harness as harness
from devtools.models import memory_inputs
from titans_plugin.kernels import MemoryState, chunk_neural_memory, dispatch, neural_memory_scan, self_check
from titans_plugin.kernels.triton_backend import buffers, config, ops, split

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
def threads(monkeypatch):
    """Every launch in the threaded grid, and the one-program backward out of reach: a
    split scan's gradients must come from the split backward."""
    from devtools.threaded_grid import threaded_grid
    from titans_plugin.kernels.triton_backend import backward

    monkeypatch.setattr(backward, "scan_backward_kernel", _NotLaunched())
    with threaded_grid():
        yield


class _NotLaunched:
    def __getitem__(self, grid):
        raise AssertionError("the one-program backward ran for a split scan")


def _compare(split, *, depth, hidden, D=20, T=70, chunk=24, every=2, clip=0.5, **kw):
    inputs, state = memory_inputs(B=2, T=T, H=2, D=D, depth=depth, hidden=hidden)
    scan = functools.partial(ops.launch, checkpoint_every=every, split=split)
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
    _compare(split, depth=2, hidden=hidden)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_phased_split_forward(clip, monkeypatch, threads):
    """The depth-2 split forward as three phases (layer 1, output, update), which sm_80 runs:
    the same cases, with and without the clip (the clip factors come from the scratch)."""
    monkeypatch.setattr(config, "PHASED_FORWARD", True)
    _compare(2, depth=2, hidden=60, clip=clip)


@pytest.mark.parametrize("depth", [1, 2])
def test_bf16_split_scan(depth, monkeypatch, threads):
    """bf16 q, k, v, as the one-program kernel's bf16 test: the split's products take bf16
    operands (each program rounds its own shard's terms) and sum in fp32, within the same
    tolerance, forward and backward."""
    inputs, state = memory_inputs(B=2, T=40, H=2, D=32, depth=depth, hidden=64 if depth == 2 else 0)
    rounded = tuple(t.to(torch.bfloat16).double() if i < 3 else t for i, t in enumerate(inputs))
    scan = functools.partial(ops.launch, checkpoint_every=2, split=2)
    harness.compare(
        scan, chunk_neural_memory, rounded, state, tol=2e-2, grad_tol=3e-2, dtype=torch.bfloat16,
        chunk_size=16, activation="silu", max_grad_norm=1.0,
    )  # fmt: skip


def test_depth_2_without_the_clip(monkeypatch, threads):
    """Two meetings a chunk instead of three: the slot sets must still alternate."""
    _compare(2, depth=2, hidden=60, clip=0.0)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_depth_1_split_over_the_value_columns(clip, monkeypatch, threads):
    """Depth 1 splits W's columns (D_v 20: 2 tiles): with the clip, one meeting a chunk for
    its norm; without, none at all."""
    _compare(2, depth=1, hidden=0, clip=clip)


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
        depth=depth,
        hidden=60 if depth == 2 else 0,
        chunk=16,
        every=3,
        resets=resets,
        initial=MemoryState(init, ()),
    )
    assert f"gradient of restart W{depth}" in errors


def _leaves():
    inputs, state = memory_inputs(B=1, T=40, H=2, D=20, depth=2, hidden=60)
    inputs = tuple(t.float().requires_grad_() for t in inputs)
    state = MemoryState(tuple(w.float() for w in state.weights), tuple(m.float() for m in state.momentum))
    return inputs, state


def _scan(split, inputs=None, state=None, **kw):
    if inputs is None:
        inputs, state = _leaves()
    return ops.launch(
        *inputs, state, chunk_size=16, activation="silu", max_grad_norm=0.5, split=split, checkpoint_every=2, **kw
    )


def _input_gradients(y, end, inputs):
    loss = (y * torch.linspace(-1, 1, y.shape[-1])).sum() + end.weights[-1].sum()
    return torch.autograd.grad(loss, inputs)


def _break_meetings(monkeypatch):
    """Every meeting without its wait: a program arrives and reads on."""
    import triton

    from titans_plugin.kernels.triton_backend import exchange

    @triton.jit
    def arrive_only(counter_ptr, n_programs, TIMEOUT_NS: tl.constexpr):
        tl.atomic_add(counter_ptr, 1, sem="release")
        return tl.full([], 1, tl.int32)

    monkeypatch.setattr(exchange, "meet", arrive_only)


def test_a_meeting_that_does_not_wait_is_caught(monkeypatch, threads):
    """The meeting's wait left out: program 0 reads its partners' slots before they have
    written them (NaN) and the output is wrong."""
    want, _ = _scan(2)
    assert torch.isfinite(want).all()
    _break_meetings(monkeypatch)
    got, _ = _scan(2)
    assert not torch.isfinite(got).all() or (got - want).abs().max() > 1e-3


def test_a_backward_meeting_that_does_not_wait_is_caught(monkeypatch, threads):
    """The forward meets properly; the backward's meetings leave out the wait: its phases
    read partial sums, and the gradients are wrong."""
    inputs, state = _leaves()
    want = _input_gradients(*_scan(2, inputs, state), inputs)
    assert all(torch.isfinite(g).all() for g in want)
    y, end = _scan(2, inputs, state)
    _break_meetings(monkeypatch)
    got = _input_gradients(y, end, inputs)
    errors = [
        (a - b).abs().max().item() if torch.isfinite(a).all() else float("inf") for a, b in zip(got, want, strict=True)
    ]
    worst = max(errors)
    assert worst > 1e-3


def test_a_backward_partner_that_never_arrives_is_an_error(monkeypatch):
    """The forward in the threaded grid, the backward in the plain interpreter: program 0
    waits for program 1, which runs only after it, and the backward raises."""
    from devtools.threaded_grid import threaded_grid

    inputs, state = _leaves()
    with threaded_grid():
        y, end = _scan(2, inputs, state)
    monkeypatch.setattr(split, "TIMEOUT_S", 0.02)
    with pytest.raises(RuntimeError, match="split backward: .* waited more than 0.02 s for a partner"):
        _input_gradients(y, end, inputs)


def test_a_partner_that_never_arrives_is_an_error(monkeypatch):
    """In the plain interpreter program 0 waits for program 1, which runs only after it:
    the wait times out, and the launch raises rather than return its values."""
    monkeypatch.setattr(split, "TIMEOUT_S", 0.02)
    with pytest.raises(RuntimeError, match="waited more than 0.02 s for a partner"):
        _scan(2)


def test_a_split_that_does_not_divide_the_tiles_is_refused():
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match="the 4 hidden tiles of 16 units do not divide among 3 programs"),
    ):
        _scan(3)
    meta = {"NT": 4, "BT": 16}
    assert split.split_problem(meta, 1) == "split must be an integer >= 2, got 1"
    assert split.split_programs(meta) == (4, None)
    assert split.split_programs({"NT": 6, "BT": 16}) == (2, None)
    assert split.split_programs({"NT": 3, "BT": 16}) == (
        0,
        "the 3 hidden tiles of 16 units do not divide among 2 programs",
    )


def test_the_programs_must_all_fit_on_the_device_at_once(monkeypatch):
    """A cooperative launch of more programs than can be resident fails; the backend says so
    first (one program per SM assumed: 255 registers per thread)."""
    import types

    props = types.SimpleNamespace(multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    cuda = torch.device("cuda")
    assert split.residency_problem(128, cuda) is None
    assert split.residency_problem(136, cuda) == (
        "136 split programs (batch x heads x split) exceed the 132 SMs that can hold them at once"
    )
    assert split.residency_problem(10**6, torch.device("cpu")) is None  # the interpreter
    meta = {"NT": 16, "BT": 16}
    assert split.split_programs(meta, 33, cuda) == (4, None)  # 132 programs
    assert split.split_programs(meta, 34, cuda) == (2, None)  # 136 would not fit: 2 per (b, h)
    assert split.split_programs(meta, 67, cuda) == (
        0,
        "134 split programs (batch x heads x split) exceed the 132 SMs that can hold them at once",
    )


def _depth2():
    inputs, state = memory_inputs(B=1, T=40, H=2, D=16, depth=2, hidden=32, dtype=torch.float32)
    return inputs, state


def test_the_split_backend_equals_chunk(threads):
    """`backend = "triton_split"` through dispatch: hidden 32 is 2 tiles, so 2 programs."""
    inputs, state = _depth2()
    config = dict(chunk_size=16, activation="silu", max_grad_norm=0.5)
    y, end = neural_memory_scan(*inputs, state, backend="triton_split", **config)
    y_ref, end_ref = chunk_neural_memory(*inputs, state, **config)
    assert (y - y_ref).abs().max() < 1e-5
    for a, b in zip(end.weights + end.momentum, end_ref.weights + end_ref.momentum, strict=True):
        assert (a - b).abs().max() < 1e-5


def test_the_split_backend_says_why_it_cannot_run(monkeypatch):
    inputs, state = memory_inputs(B=1, T=8, H=1, D=16, depth=2, hidden=48, dtype=torch.float32)  # 3 tiles
    with pytest.raises(ValueError, match=r"'triton_split' cannot run here: the 3 hidden tiles .* among 2 programs"):
        neural_memory_scan(*inputs, state, chunk_size=8, activation="silu", backend="triton_split")
    monkeypatch.delattr(tl, "atomic_poll")
    with pytest.raises(ValueError, match=r"no tl.atomic_poll \(the split scan needs triton >= 3.9\)"):
        neural_memory_scan(*_depth2()[0], _depth2()[1], chunk_size=8, activation="silu", backend="triton_split")


@pytest.fixture
def checked_on_cpu(monkeypatch):
    monkeypatch.setattr(self_check, "CHECKED_DEVICES", ("cpu",))
    monkeypatch.delenv("TITANS_TRITON_SELF_CHECK", raising=False)
    self_check.forget()
    yield
    self_check.forget()


def test_the_self_check_runs_the_split_and_catches_a_broken_meeting(monkeypatch, threads, checked_on_cpu):
    """The first-use check runs the split-state scan, forward and backward, for `triton_split`
    (a key of its own) and passes; with the meetings' wait left out it fails, and the forced
    backend raises."""
    _, state = _depth2()
    q = torch.zeros(1, 4, 2, 16)
    assert self_check.failure(q, state, 8, "silu", 0.5, False, "triton_split") is None
    (key,) = self_check._RESULTS
    assert key[-1] == "triton_split"
    assert "split-state scan" in self_check._RESULTS[key].message
    self_check.forget()
    _break_meetings(monkeypatch)
    with pytest.raises(RuntimeError, match=r"titans\.backend = 'triton_split': Triton memory scan self-check failed"):
        dispatch.resolve_backend("triton_split", q, state, chunk_size=8, activation="silu", max_grad_norm=0.5)


def test_auto_races_the_split_against_the_one_program_kernels(monkeypatch, checked_on_cpu):
    """`auto` where the split is a candidate (any device but sm_90): both designs pass their
    self-check and run the race's forward and backward; the faster one is chosen."""
    from devtools.threaded_grid import threaded_grid
    from titans_plugin.kernels import design_race

    monkeypatch.setattr(dispatch, "AUTO_TRITON_DEVICES", ("cpu",))
    monkeypatch.setattr(design_race, "RACED_DEVICES", ("cpu",))
    monkeypatch.setattr(design_race, "RACE_CHUNKS", 2)
    monkeypatch.delenv("TITANS_AUTO_RACE", raising=False)
    design_race.forget()
    _, state = _depth2()
    q = torch.zeros(1, 40, 2, 16)
    with threaded_grid():
        chosen = dispatch.resolve_backend("auto", q, state, chunk_size=8, activation="silu", max_grad_norm=0.5)
    (race,) = design_race.results()
    design_race.forget()
    assert set(race.seconds) == {"triton_split", "triton"}
    assert all(0 < s < float("inf") for s in race.seconds.values()), race.message
    assert chosen == race.winner == min(race.seconds, key=race.seconds.get)


def test_auto_runs_the_split_only_where_it_splits_as_its_check_did(monkeypatch):
    """The split takes 4 programs per (batch, head) where 4 x batch x heads fit the SMs, else
    2; its self-check's problem (2 x 2 pairs) takes 4, so `auto` leaves it out where a call
    would take 2 (132 SMs, hidden 64 in 4 tiles of 16)."""
    import types

    from titans_plugin.kernels.triton_backend import capability

    props = types.SimpleNamespace(multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(capability, "arch_of", lambda device: 80)
    _, state = memory_inputs(B=1, T=8, H=2, D=16, depth=2, hidden=64, dtype=torch.float32)
    cfg = dict(chunk_size=8, activation="silu", max_grad_norm=None, resets=False)

    def q(pairs):
        return types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16, shape=(pairs, 8, 1, 16))

    assert dispatch._splits_as_checked("triton_split", q(33), state, **cfg)  # 132 programs: 4 each
    assert not dispatch._splits_as_checked("triton_split", q(34), state, **cfg)  # 2 each: unchecked
    assert dispatch._splits_as_checked("triton", q(34), state, **cfg)
