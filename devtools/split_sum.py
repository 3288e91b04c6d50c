"""A toy split recurrence on the exchange of kernels/triton_backend/exchange.py: the test
kernel for the threaded interpreter grid and for the compile check of the barrier.

SPLIT programs per group each own a slice of x; per step, every program needs the sum of
all slices' partials, which depend on the previous step's sum (as a split memory scan's
inner error depends on the state every slice updated):

    acc_0 = 0;  acc_{c+1} = sigmoid(sum_s x[g, c, s] * (1 + acc_c))

so one missing or early read changes every later step."""

import torch
import triton
import triton.language as tl

from titans_plugin.kernels.triton_backend.exchange import all_reduce


@triton.jit
def split_sum_kernel(
    x_ptr,
    out_ptr,
    slots_ptr,
    counters_ptr,
    ok_ptr,
    STEPS: tl.constexpr,
    SPLIT: tl.constexpr,
    R: tl.constexpr,
    C: tl.constexpr,
    MEET: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
):
    """x [G, STEPS, SPLIT, R, C]; out [G * SPLIT, R, C]: each program's final acc; slots
    [G, 2, SPLIT, R, C] (the two alternating sets); counters [G, STEPS] int32, zeroed;
    ok [G * SPLIT] int32. MEET=False leaves the barrier out (what a test must catch)."""
    pid = tl.program_id(0)
    g = pid // SPLIT
    s = pid % SPLIT
    tile = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    acc = tl.zeros([R, C], dtype=tl.float32)
    ok = tl.full([], 1, tl.int32)
    for c in range(STEPS):
        x = tl.load(x_ptr + ((g * STEPS + c) * SPLIT + s) * (R * C) + tile)
        partial = x * (1.0 + acc)
        slots = slots_ptr + (g * 2 + c % 2) * (SPLIT * R * C)
        if MEET:
            total, arrived = all_reduce(partial, slots, counters_ptr + g * STEPS + c, s, SPLIT, R, C, TIMEOUT_NS)
            ok = ok & arrived
        else:
            tl.store(slots + s * (R * C) + tile, partial)
            total = tl.zeros([R, C], dtype=tl.float32)
            for j in range(SPLIT):
                total += tl.load(slots + j * (R * C) + tile)
        acc = tl.sigmoid(total)
    tl.store(out_ptr + pid * (R * C) + tile, acc)
    tl.store(ok_ptr + pid, ok)


def reference(x: torch.Tensor) -> torch.Tensor:
    """[G, STEPS, SPLIT, R, C] -> the final acc per group [G, R, C], in fp64."""
    x = x.double()
    acc = torch.zeros(x.shape[0], *x.shape[3:], dtype=torch.float64)
    for c in range(x.shape[1]):
        acc = torch.sigmoid((x[:, c] * (1 + acc[:, None])).sum(1))
    return acc


def run(
    x: torch.Tensor, meet: bool = True, timeout_ns: int = 10**10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch on x [G, STEPS, SPLIT, R, C] with NaN-filled slots: (out [G, SPLIT, R, C],
    ok [G, SPLIT], counters [G, STEPS])."""
    G, steps, split, R, C = x.shape
    out = torch.full((G * split, R, C), float("nan"))
    slots = torch.full((G, 2, split, R, C), float("nan"))
    counters = torch.zeros(G, steps, dtype=torch.int32)
    ok = torch.zeros(G * split, dtype=torch.int32)
    split_sum_kernel[(G * split,)](
        x.contiguous(), out, slots, counters, ok, STEPS=steps, SPLIT=split, R=R, C=C, MEET=meet, TIMEOUT_NS=timeout_ns
    )
    return out.view(G, split, R, C), ok.view(G, split), counters
