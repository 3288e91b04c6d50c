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

Each meeting has its slots (`place`): one region per meeting of a chunk, in two sets
alternated by chunk, so two meetings in a row never share slots. A fast program's next
partial goes to other slots, and it cannot come back to these before every program of its
group has passed the meeting in between, that is, finished reading these.

Needs `tl.atomic_poll` (triton 3.9). On CPU, devtools/threaded_grid.py runs such kernels
in the interpreter with one thread per program."""

import triton
import triton.language as tl

from .pieces import copy_flat


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


@triton.jit
def place(xch, bh, ci, x: tl.constexpr, MEETINGS: tl.constexpr, SPLIT: tl.constexpr, SLOT: tl.constexpr):
    """Where meeting x (of MEETINGS a chunk) of chunk ci meets for group bh: its slots and
    its one-use counter. xch: (slots [B*H, MEETINGS, 2, SPLIT, SLOT] fp32, counters
    [B*H, n_chunks, MEETINGS] int32 zeroed by the host, n_chunks). Meetings in a row differ
    in x within a chunk, and a scan that holds one meeting a chunk alternates the sets by
    chunk, so consecutive meetings never share slots."""
    slots_ptr, counters_ptr, n_chunks = xch
    g = bh.to(tl.int64)
    slots = slots_ptr + ((g * MEETINGS + x) * 2 + ci % 2) * (SPLIT * SLOT)
    counter = counters_ptr + (g * n_chunks + ci) * MEETINGS + x
    return slots, counter


@triton.jit
def sum_region(slots, stride, at: tl.constexpr, dst, N: tl.constexpr, SPLIT: tl.constexpr):
    """dst[:N] = the sum over the SPLIT programs' slots (stride floats apart) of their
    floats [at, at + N), in program order."""
    offs = tl.arange(0, 1024)
    for start in range(0, N, 1024):
        m = start + offs < N
        total = tl.zeros([1024], dtype=tl.float32)
        for j in range(SPLIT):
            total += tl.load(slots + j * stride + at + start + offs, mask=m, other=0.0)
        tl.store(dst + start + offs, total, mask=m)


@triton.jit
def share(
    slots,
    counter,
    s,
    SPLIT: tl.constexpr,
    R0,
    N0: tl.constexpr,
    R1,
    N1: tl.constexpr,
    R2,
    N2: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """all_reduce for partials a program keeps in memory: each of the regions R[:N] of this
    program's own memory (up to three; N = 0 for none) becomes its sum over the group, in
    program order. The regions are packed into this program's slot, the programs meet, and
    each sums the slots into its own regions. Returns 1 if every partner arrived."""
    STRIDE: tl.constexpr = N0 + N1 + N2
    mine = slots + s * STRIDE
    copy_flat(R0, mine, N0, 1024)
    copy_flat(R1, mine + N0, N1, 1024)
    copy_flat(R2, mine + N0 + N1, N2, 1024)
    ok = meet(counter, SPLIT, TIMEOUT_NS)
    sum_region(slots, STRIDE, 0, R0, N0, SPLIT)
    sum_region(slots, STRIDE, N0, R1, N1, SPLIT)
    sum_region(slots, STRIDE, N0 + N1, R2, N2, SPLIT)
    tl.debug_barrier()  # the next phase reads sums other threads wrote
    return ok
