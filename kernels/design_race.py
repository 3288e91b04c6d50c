"""Which kernel design `auto` runs: of those that support a configuration and passed their
first-use self-check, the one measured fastest here.

The designs compute the same scan (to rounding, each checked against the exact chunked path
by kernels/self_check.py) but split the work differently: one program per (batch, head)
(`triton`), the state split over a cluster of sm_90 CTAs (`gluon_cluster`), or split over
programs that meet through global memory (`triton_split`). Which one is fastest depends on
the device, the batch x heads (how many programs fill it) and the configuration, and the
roofline model's terms are estimates until a GPU has measured them. So the first time a
process would run a configuration at a batch x heads with more than one candidate, it times
a forward and backward of each on random inputs of that batch and heads and RACE_CHUNKS
chunks (the cost per chunk is what differs), keeps the fastest and logs the times. Every
candidate passed its self-check first, so the race costs start-up time, never correctness;
where no design runs in the race, the one-program kernels do. With the self-check turned
off (TITANS_TRITON_SELF_CHECK=0) only the one-program kernels are considered.

Candidates per device (`designs`): on sm_90 the Gluon cluster forward and the one-program
kernels; on other CUDA devices the split-state scan and the one-program kernels. A race is
one process's measurement: ranks of a distributed job measure for themselves and may pick
different designs, which agree to rounding. `TITANS_AUTO_RACE=0` (or naming a backend)
keeps one design: with it `auto` runs the one-program kernels, as before the race.
"""

import logging
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import self_check
from .state import MemoryState

log = logging.getLogger(__name__)

RACED_DEVICES = ("cuda",)  # where auto races (tests add "cpu": the interpreter)
RACE_CHUNKS = 16  # chunks of the timed problem: enough to amortise the launch
REPEATS = 3  # timed forward + backward passes per design, after one untimed (compile, allocate)
_RACES: dict[tuple, "Race"] = {}


class Race(NamedTuple):
    winner: str
    seconds: dict[str, float]  # the fastest forward + backward per design
    message: str


def enabled() -> bool:
    return os.environ.get("TITANS_AUTO_RACE", "1") != "0"


def designs(device: torch.device) -> tuple[str, ...]:
    """The kernel designs `auto` considers on `device`, in order of preference at a tie, the
    one-program kernels last (the fallback)."""
    if not enabled() or not self_check.enabled() or device.type not in RACED_DEVICES:
        return ("triton",)  # the other designs only where their self-check runs
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        return ("gluon_cluster", "triton")
    return ("triton_split", "triton")


def fastest(
    scans: dict[str, Callable], q: torch.Tensor, state: MemoryState, *, chunk_size, activation, max_grad_norm, resets
) -> str:
    """The name of the fastest of `scans` (each `dispatch` scan, checked for this
    configuration) at q's batch and heads: raced the first time, then remembered."""
    if len(scans) == 1:
        return next(iter(scans))
    key = self_check.configuration(q.device, q.dtype, state, chunk_size, activation, bool(max_grad_norm), resets)
    race_key = (*_pairs_key(key, q), tuple(scans))
    if race_key not in _RACES:
        _RACES[race_key] = _race(scans, key, q.shape[0], q.shape[2], max_grad_norm)
        log.info(_RACES[race_key].message)
    return _RACES[race_key].winner


def _pairs_key(key: tuple, q: torch.Tensor) -> tuple:
    """A self-check configuration key (any backend) with q's batch and heads: what a race is run for."""
    return (*key[:-1], q.shape[0], q.shape[2])


def results() -> list[Race]:
    """Every race this process has run (what the acceptance script and users can print)."""
    return list(_RACES.values())


def races_for(q: torch.Tensor, state: MemoryState, *, chunk_size, activation, max_grad_norm, resets) -> list[Race]:
    """The races run for this configuration at q's batch and heads."""
    key = self_check.configuration(q.device, q.dtype, state, chunk_size, activation, bool(max_grad_norm), resets)
    prefix = _pairs_key(key, q)
    return [race for race_key, race in _RACES.items() if race_key[:-1] == prefix]


def forget() -> None:
    """Drop every remembered race (tests)."""
    _RACES.clear()


def _race(scans: dict[str, Callable], key: tuple, B: int, H: int, max_grad_norm) -> Race:
    T = RACE_CHUNKS * key[9]  # key: self_check.configuration's
    # real tensors even when the first call comes under torch.inference_mode()
    with torch.inference_mode(False):
        inputs, state, restarts, initial = self_check.problem(key, B, H, T)
        config = dict(chunk_size=key[9], activation=key[3], max_grad_norm=max_grad_norm, resets=restarts)
        seconds = {}
        for name, scan in scans.items():
            try:
                seconds[name] = time_design(scan, inputs, state, config, initial)
            except Exception as exc:  # a design that cannot run this shape loses; the others still race
                seconds[name] = float("inf")
                log.warning("memory scan design %r raised %r in the race; it is not used here", name, exc)
    winner = min(seconds, key=lambda name: seconds[name])  # the earlier design at a tie
    if seconds[winner] == float("inf"):  # none ran: the one-program kernels (checked), never an untimed design
        winner = "triton" if "triton" in seconds else winner
    times = ", ".join(f"{name} {1e3 * s:.3f} ms" for name, s in seconds.items())
    label = self_check.describe(key)
    message = f"memory scan designs raced on {label}, batch {B} x heads {H}, {T} tokens: {times}; {winner} runs"
    return Race(winner, seconds, message)


def time_design(scan: Callable, inputs, state: MemoryState, config: dict, initial) -> float:
    """The fastest of REPEATS forward + backward passes of `scan` (after one untimed)."""
    device = inputs[0].device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def once() -> float:
        ins = tuple(t.detach().requires_grad_() for t in inputs)
        st = MemoryState(tuple(w.detach().requires_grad_() for w in state.weights), state.momentum)
        sync()
        start = time.perf_counter()
        with torch.enable_grad():  # the race may come under torch.no_grad(), as the check may
            y, end = scan(*ins, st, **config, initial=initial)
            loss = y.float().sum() + sum(w.float().sum() for w in end.weights)
            loss.backward()
        sync()
        return time.perf_counter() - start

    once()
    return min(once() for _ in range(REPEATS))
