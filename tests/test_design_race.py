"""`auto`'s choice among the kernel designs (kernels/design_race.py and dispatch): the
designs per device, the race (the fastest forward + backward wins, once per configuration
and batch x heads, a design that raises loses), and dispatch racing only the designs that
support the configuration and passed their self-check, warning when a preferred design
failed it."""

import logging
import math

import pytest
import torch

from titans_plugin.kernels import MemoryState, chunk, design_race, dispatch, naive, self_check

CONFIG = dict(chunk_size=8, activation="silu", max_grad_norm=None, resets=False)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("TITANS_AUTO_RACE", raising=False)
    monkeypatch.delenv("TITANS_TRITON_SELF_CHECK", raising=False)
    monkeypatch.setattr(dispatch, "_warned", set())
    design_race.forget()
    yield
    design_race.forget()


def _state(B=1, H=1, depth=2, hidden=16, d=8) -> MemoryState:
    dims = [d] + [hidden] * (depth - 1) + [d]
    w = tuple(torch.zeros(B, H, dims[i], dims[i + 1]) for i in range(depth))
    return MemoryState(w, w)


def _q(B=1, T=40, H=1, d=8):
    return torch.zeros(B, T, H, d)


def test_the_designs_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert design_race.designs(cpu) == ("triton",)  # not raced there
    monkeypatch.setattr(design_race, "RACED_DEVICES", ("cpu", "cuda"))
    assert design_race.designs(cpu) == ("triton_split", "triton")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert design_race.designs(cuda) == ("gluon_cluster", "triton")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert design_race.designs(cuda) == ("triton_split", "triton")
    monkeypatch.setenv("TITANS_AUTO_RACE", "0")
    assert design_race.designs(cuda) == ("triton",)


def _timed(monkeypatch, seconds: dict):
    """time_design replaced by fixed times per scan, counting its calls."""
    calls = []

    def fake(scan, inputs, state, config, initial):
        calls.append(scan.__name__)
        if seconds[scan.__name__] is None:
            raise RuntimeError("no kernel for this shape")
        return seconds[scan.__name__]

    monkeypatch.setattr(design_race, "time_design", fake)
    return calls


def _scan(name):
    def scan(*args, **kwargs):
        raise AssertionError("the race is timed by the fake")

    scan.__name__ = name
    return scan


def test_the_fastest_design_wins_once_per_configuration_and_shape(monkeypatch, caplog):
    calls = _timed(monkeypatch, {"cluster": 2e-3, "one": 3e-3})
    scans = {"cluster": _scan("cluster"), "one": _scan("one")}
    with caplog.at_level(logging.INFO, logger=design_race.__name__):
        for _ in range(3):
            assert design_race.fastest(scans, _q(), _state(), **CONFIG) == "cluster"
    assert calls == ["cluster", "one"]  # raced once, then remembered
    (race,) = design_race.results()
    assert race.seconds == {"cluster": 2e-3, "one": 3e-3}
    assert "cluster 2.000 ms, one 3.000 ms; cluster runs" in caplog.text
    assert f"batch 1 x heads 1, {design_race.RACE_CHUNKS * 8} tokens" in caplog.text  # always 16 chunks
    # another batch x heads, another clip: raced again; another length: not
    design_race.fastest(scans, _q(B=2), _state(B=2), **CONFIG)
    design_race.fastest(scans, _q(T=1000), _state(), **CONFIG)
    design_race.fastest(scans, _q(), _state(), **(CONFIG | {"max_grad_norm": 1.0}))
    assert len(calls) == 2 * 3
    assert [r.message for r in design_race.races_for(_q(T=7), _state(), **CONFIG)] == [race.message]


def test_a_tie_goes_to_the_design_listed_first_and_a_design_that_raises_loses(monkeypatch):
    _timed(monkeypatch, {"cluster": 2e-3, "one": 2e-3, "broken": None})
    assert (
        design_race.fastest({"cluster": _scan("cluster"), "one": _scan("one")}, _q(), _state(), **CONFIG) == "cluster"
    )
    assert (
        design_race.fastest({"broken": _scan("broken"), "one": _scan("one")}, _q(B=3), _state(B=3), **CONFIG) == "one"
    )
    assert design_race.results()[-1].seconds["broken"] == math.inf


def test_where_no_design_runs_in_the_race_the_one_program_kernels_do(monkeypatch):
    _timed(monkeypatch, {"cluster": None, "triton": None})
    assert design_race.fastest({"cluster": _scan("cluster"), "triton": _scan("triton")}, _q(), _state(), **CONFIG) == (
        "triton"
    )


def test_without_the_self_check_only_the_one_program_kernels_are_considered(monkeypatch):
    monkeypatch.setattr(design_race, "RACED_DEVICES", ("cpu",))
    monkeypatch.setenv("TITANS_TRITON_SELF_CHECK", "0")
    assert design_race.designs(torch.device("cpu")) == ("triton",)


def test_a_single_candidate_is_not_raced(monkeypatch):
    calls = _timed(monkeypatch, {"one": 1.0})
    assert design_race.fastest({"one": _scan("one")}, _q(), _state(), **CONFIG) == "one"
    assert calls == []
    assert design_race.results() == []


@pytest.mark.parametrize(("resets", "mode"), [(False, torch.no_grad), (True, torch.inference_mode)])
def test_a_real_race_times_forward_and_backward_under_no_grad(resets, mode):
    """The race's own problem (one sequence, restarts when asked) through two real scans,
    its first call under no_grad or inference mode."""
    scans = {"chunk": chunk.chunk_neural_memory, "naive": naive.naive_neural_memory}
    with mode():
        winner = design_race.fastest(scans, _q(), _state(), **(CONFIG | {"resets": resets}))
    (race,) = design_race.results()
    assert winner == min(race.seconds, key=race.seconds.get)
    assert all(0 < s < math.inf for s in race.seconds.values()), race.seconds


def _designs(monkeypatch, names, failing=(), refusing=()):
    """dispatch with fake designs `names` (each supported unless refusing, each passing its
    self-check unless failing), raced on the CPU."""
    monkeypatch.setattr(dispatch, "AUTO_TRITON_DEVICES", ("cpu",))
    monkeypatch.setattr(design_race, "designs", lambda device: tuple(names))
    for name in names:
        supports = (lambda *a, n=name, **k: f"{n} does not run this") if name in refusing else (lambda *a, **k: None)
        monkeypatch.setitem(dispatch._SCANS, name, (_scan(name), supports))
    monkeypatch.setattr(
        self_check, "failure", lambda *args: f"{args[-1]} self-check failed" if args[-1] in failing else None
    )


def test_auto_races_the_designs_that_passed_their_self_check(monkeypatch):
    _designs(monkeypatch, ["gluon_cluster", "triton"])
    _timed(monkeypatch, {"gluon_cluster": 1e-3, "triton": 2e-3})
    assert dispatch.resolve_backend("auto", _q(), _state(), **CONFIG) == "gluon_cluster"
    _timed(monkeypatch, {"gluon_cluster": 3e-3, "triton": 2e-3})
    assert dispatch.resolve_backend("auto", _q(B=2), _state(B=2), **CONFIG) == "triton"


def test_a_preferred_design_that_fails_its_check_is_warned_and_left_out(monkeypatch):
    _designs(monkeypatch, ["gluon_cluster", "triton"], failing=["gluon_cluster"])
    calls = _timed(monkeypatch, {"gluon_cluster": 1e-3, "triton": 2e-3})
    with pytest.warns(UserWarning, match="does not use 'gluon_cluster' on this CPU device: gluon_cluster self-check"):
        assert dispatch.resolve_backend("auto", _q(), _state(), **CONFIG) == "triton"
    assert calls == []  # one candidate left: no race


def test_a_failed_one_program_check_is_warned_while_another_design_runs(monkeypatch):
    _designs(monkeypatch, ["gluon_cluster", "triton"], failing=["triton"])
    with pytest.warns(UserWarning, match="does not use 'triton' on this CPU device: triton self-check failed"):
        assert dispatch.resolve_backend("auto", _q(), _state(), **CONFIG) == "gluon_cluster"


def test_a_design_outside_its_scope_is_left_out_quietly_and_none_left_means_chunk(monkeypatch, recwarn):
    _designs(monkeypatch, ["gluon_cluster", "triton"], refusing=["gluon_cluster"])
    assert dispatch.resolve_backend("auto", _q(), _state(), **CONFIG) == "triton"
    assert not [w for w in recwarn if "gluon_cluster" in str(w.message)]
    _designs(monkeypatch, ["gluon_cluster", "triton"], refusing=["gluon_cluster"], failing=["triton"])
    with pytest.warns(UserWarning, match="uses 'chunk' on this CPU device: triton self-check failed"):
        assert dispatch.resolve_backend("auto", _q(), _state(), **CONFIG) == "chunk"


def test_a_forced_design_is_never_raced(monkeypatch):
    _designs(monkeypatch, ["gluon_cluster", "triton"])
    calls = _timed(monkeypatch, {"gluon_cluster": 1e-3, "triton": 2e-3})
    assert dispatch.resolve_backend("triton", _q(), _state(), **CONFIG) == "triton"
    assert calls == []
