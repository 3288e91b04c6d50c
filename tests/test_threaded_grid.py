"""The split exchange (kernels/triton_backend/exchange.py) on CPU: programs that meet
through global memory run in the threaded interpreter grid (devtools/threaded_grid.py) and
equal the fp64 reference; the same kernel with its barrier left out is caught, every run;
the plain interpreter cannot run them (its programs run one after another); and the
exchange compiles for sm_90 and sm_80 to a release add, a polling loop and an acquire
fence (sm_80: acq_rel)."""

import os
import subprocess
import sys

import pytest
import torch
import triton.language as tl

from devtools.paths import REPO

pytestmark = pytest.mark.skipif(
    not hasattr(tl, "atomic_poll") or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton >= 3.9 (tl.atomic_poll) and its interpreter",
)


def _x(groups=2, steps=5, split=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(groups, steps, split, 4, 8, generator=g)


@pytest.mark.parametrize("split", [1, 2, 4])
def test_programs_that_meet_equal_the_reference_in_the_threaded_grid(split):
    from devtools.split_sum import reference, run
    from devtools.threaded_grid import threaded_grid

    x = _x(split=split)
    with threaded_grid():
        out, ok, counters = run(x)
    want = reference(x)
    for s in range(split):  # every program holds the whole sum, bit for bit the same
        assert torch.equal(out[:, s], out[:, 0])
    assert (out[:, 0].double() - want).abs().max().item() < 1e-6
    assert ok.eq(1).all()
    assert counters.eq(split).all()  # every counter used once, by every program


@pytest.mark.parametrize("split", [2, 4])
def test_a_left_out_barrier_is_caught(split):
    from devtools.split_sum import reference, run
    from devtools.threaded_grid import threaded_grid

    x = _x(split=split)
    for _ in range(3):  # deterministic: program 0 runs alone until it waits, and it never waits
        with threaded_grid():
            out, _, _ = run(x, meet=False)
        assert not torch.isfinite(out[:, 0]).all() or (out[:, 0].double() - reference(x)).abs().max() > 1e-3


def test_the_plain_interpreter_cannot_run_programs_that_wait_for_later_ones():
    from devtools.split_sum import run

    out, ok, _ = run(_x(groups=1, steps=2, split=2), timeout_ns=20_000_000)
    assert ok[0, 0] == 0  # program 0 waited for program 1, which runs only after it


def test_the_threaded_grid_is_undone_on_exit():
    from triton.runtime import interpreter

    from devtools.split_sum import run
    from devtools.threaded_grid import threaded_grid

    before = interpreter.GridExecutor.__call__
    with threaded_grid():
        assert interpreter.GridExecutor.__call__ is not before
    assert interpreter.GridExecutor.__call__ is before
    assert "create_atomic_poll" not in interpreter.interpreter_builder.__dict__
    out, _, _ = run(_x(groups=1, steps=2, split=1))  # the sequential interpreter again
    assert torch.isfinite(out).all()


COMPILE = """
import re, torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import triton
from devtools.split_sum import split_sum_kernel
sig = dict(x_ptr="*fp32", out_ptr="*fp32", slots_ptr="*fp32", counters_ptr="*i32", ok_ptr="*i32")
meta = dict(STEPS=4, SPLIT=4, R=16, C=64, MEET=True, TIMEOUT_NS=10**9)
for arch in (90, 80):
    src = ASTSource(fn=split_sum_kernel, signature={**sig, **{k: "constexpr" for k in meta}}, constexprs=meta)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(launch_cooperative_grid=True))
    ptx = k.asm["ptx"]
    found = [bool(re.search(p, ptx)) for p in (r"red\\.global\\.gpu\\.release\\.add", r"ld\\.relaxed\\.gpu\\.global",
                                               r"fence\\.(acquire|acq_rel)\\.gpu")]
    print(arch, *["yes" if f else "no" for f in found])
"""


@pytest.mark.slow  # ahead-of-time compiles (ptxas), in a process without the interpreter
def test_the_exchange_compiles_to_release_and_acquire_for_sm90_and_sm80():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines()]
    # release add on arrival, relaxed polling loads, an acquire fence after the wait
    assert lines == [["90", "yes", "yes", "yes"], ["80", "yes", "yes", "yes"]], proc.stdout
