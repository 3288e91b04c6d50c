"""How programs that split one (batch, head)'s memory state meet: through global memory.

A split scan runs SPLIT programs per (batch, head), each owning a slice of the hidden
units; the chunk's coupled quantities (the inner error, the clip's norm, the retrieval's
sums) are sums over the slices. Each program stores its partial in its slot, all meet at a
counter, and each sums the slots in program order, so every program gets the same bits
(deterministic, whatever the arrival order).

The barrier: release-add on a counter, acquire-poll until it reads SPLIT. Each counter is
used once per launch (one per group, chunk and exchange, zeroed by the host): a single
running counter polled for equality can be pushed past the value a slow program waits for
and hang it. The programs of a group must be resident together: launch with
`launch_cooperative_grid=True`, so that a grid that cannot be co-resident fails to launch
instead of deadlocking, and pass a timeout, so that a stuck wait comes back as a failure
the host can report instead of a hang.

Slots come in two sets, alternated by exchange: a fast program's next partial goes to the
other set, and it cannot come back to this one before every program of its group has
passed the next meeting, that is, finished reading this one.

Needs `tl.atomic_poll` (triton 3.9). On CPU, devtools/threaded_grid.py runs such kernels
in the interpreter with one thread per program."""

import triton
import triton.language as tl


@triton.jit
def meet(counter_ptr, n_programs, TIMEOUT_NS: tl.constexpr):
    """Arrive at a one-use counter and wait until n_programs have: this program's earlier
    stores are visible to every program that passes the wait (release), and theirs to this
    one (acquire). Returns 1 when all arrived, 0 when the wait timed out."""
    tl.debug_barrier()  # every thread of this program has issued its stores
    tl.atomic_add(counter_ptr, 1, sem="release")
    arrived = tl.atomic_poll(counter_ptr, n_programs, sem="acquire", timeout_ns=TIMEOUT_NS)
    return arrived.to(tl.int32)


@triton.jit
def all_reduce(
    partial,
    slots_ptr,
    counter_ptr,
    s,
    SPLIT: tl.constexpr,
    R: tl.constexpr,
    C: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """The sum of `partial` [R, C] fp32 over the SPLIT programs of a group, in program
    order. slots_ptr: the group's [SPLIT, R, C] fp32 slots for this exchange (the caller
    alternates two sets); s: this program's index in the group; counter_ptr: this
    exchange's one-use counter. Returns (sum, 1 if every partner arrived else 0)."""
    tile = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    tl.store(slots_ptr + s * (R * C) + tile, partial)
    ok = meet(counter_ptr, SPLIT, TIMEOUT_NS)
    total = tl.zeros([R, C], dtype=tl.float32)
    for j in range(SPLIT):
        total += tl.load(slots_ptr + j * (R * C) + tile)
    return total, ok
