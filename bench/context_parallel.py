"""Context parallel on CPU: peak memory per rank and where the time goes.

    python -m bench.context_parallel            # prints the table, writes docs/parallelism.md
    python -m bench.context_parallel --no-write
    python -m bench.context_parallel --linear   # a linear memory: cp_scan serial against parallel

For each model (the debug flavor's sizes, 4 layers, debug_mac.toml's [titans] settings),
one long sequence is trained for a step in one process and split over P = 2 and 4
processes (gloo, contiguous shards). Peak: the largest peak of live tensors over one
forward + backward on any rank (torch's MemTracker: exact, machine independent). Time
(P = 1 and 2 only: this machine has 2 cores, one per process): the step's wall time, and
how long a rank sat in point-to-point receives from the other shards (the state of the
shard before it in the forward, its gradient from the shard after it in the backward,
attention halos): the serialised part of the step.
"""

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed._tools.mem_tracker import MemTracker

from bench.common import machine, publish, table
from devtools.models import debug_model
from devtools.ranks import run_ranks
from titans_plugin.context_parallel import transport

VOCAB = 2048


def _step(model, tokens, labels, total):
    loss = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten(), reduction="sum") / total
    loss.backward()
    model.zero_grad(set_to_none=True)


class _WaitClock:
    """Time spent inside the point-to-point receives of the state chain."""

    def __init__(self):
        self.seconds = 0.0
        original = transport.SequenceShard.recv

        def timed(shard, *args):
            start = time.perf_counter()
            try:
                return original(shard, *args)
            finally:
                self.seconds += time.perf_counter() - start

        transport.SequenceShard.recv = timed


def _measure(model, tokens, labels, total, iters, timed):
    _step(model, tokens, labels, total)  # warm-up
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        _step(model, tokens, labels, total)
    peak = tracker.get_tracker_snapshot("peak")[tokens.device]["Total"] / 2**20
    if not timed:
        return peak, None, None
    clock = _WaitClock()
    times, waits = [], []
    for _ in range(iters):
        if dist.is_initialized():
            dist.barrier()
        clock.seconds = 0.0
        start = time.perf_counter()
        _step(model, tokens, labels, total)
        times.append(time.perf_counter() - start)
        waits.append(clock.seconds)
    return peak, statistics.median(times), statistics.median(waits)


# --linear: an LMM with a linear memory and no inner-gradient clip, scanned both ways
LINEAR = {"memory_depth": 1, "max_grad_norm": 0.0}
SCANS = {"serial": {**LINEAR, "cp_scan": "serial"}, "parallel": {**LINEAR, "cp_scan": "parallel"}}


def _rank(rank, size, pattern, seq_len, iters, timed, out_dir, overrides):
    torch.set_num_threads(1)
    data = torch.randint(0, VOCAB, (1, seq_len + 1), generator=torch.Generator().manual_seed(0))
    n = seq_len // size
    tokens, labels = data[:, rank * n : (rank + 1) * n], data[:, 1 + rank * n : 1 + (rank + 1) * n]
    model = debug_model(pattern, seq_len, **overrides)
    model.shard_sequence(dist.group.WORLD)
    result = _measure(model, tokens, labels, seq_len, iters, timed)
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(result, f)


def measure(pattern: str, seq_len: int, size: int, iters: int, overrides: dict | None = None):
    """(max peak MiB over ranks, step seconds, max wait seconds) for `size` shards."""
    timed = size <= os.cpu_count()
    if size == 1:
        torch.set_num_threads(1)
        data = torch.randint(0, VOCAB, (1, seq_len + 1), generator=torch.Generator().manual_seed(0))
        model = debug_model(pattern, seq_len, **(overrides or {}))
        return _measure(model, data[:, :-1], data[:, 1:], seq_len, iters, timed)
    with tempfile.TemporaryDirectory() as d:
        run_ranks(_rank, size, pattern, seq_len, iters, timed, d, overrides or {})
        results = [json.loads(pathlib.Path(d, f"{r}.json").read_text()) for r in range(size)]
    peak = max(r[0] for r in results)
    if not timed:
        return peak, None, None
    return peak, max(r[1] for r in results), max(r[2] for r in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patterns", nargs="*", default=["CA", "GA", "LA", "M"])
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--shards", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--linear", action="store_true", help="LMM with a linear memory: cp_scan serial vs parallel")
    a = p.parse_args()
    if a.linear:
        return linear(a)
    head = ["model", "P", "peak MiB per rank", "vs P = 1", "step s", "waiting on other shards s", "share of the step"]
    rows = []
    for pattern in a.patterns:
        base_peak = None
        for size in a.shards:
            peak, seconds, wait = measure(pattern, a.seq_len, size, a.iters)
            base_peak = base_peak or peak
            timing = ["—", "—", "—"] if seconds is None else [f"{seconds:.2f}", f"{wait:.2f}", f"{wait / seconds:.0%}"]
            rows.append([f"`{pattern}`", str(size), f"{peak:.0f}", f"{peak / base_peak:.2f}", *timing])
            print(table(head, rows[-1:]), flush=True)
    doc = (
        "### Measured: context parallel on CPU\n\n"
        f"Machine: {machine()}. Command: `python -m bench.context_parallel --iters {a.iters}`. "
        "Debug flavor (dim 128, 4 layers), debug_mac.toml's [titans] settings, one sequence of "
        f"{a.seq_len} tokens, fp32, chunked "
        "PyTorch scan, contiguous shards, one thread per process. Peak: the largest over the ranks of the "
        "live tensors over one forward + backward (torch's MemTracker: exact, machine independent). Step: "
        f"median of {a.iters}; waiting: the most time any rank spent in point-to-point receives (the "
        "previous shard's end state in the forward, the next shard's gradient in the backward, halos). "
        "P = 4 runs 4 processes on 2 cores, so only its memory is reported.\n\n" + table(head, rows)
    )
    publish(doc, "parallelism.md", "cp", write=not a.no_write)


def linear(a) -> None:
    head = ["cp_scan", "P", "peak MiB per rank", "step s", "waiting on other shards s", "share of the step"]
    rows = []
    for name, overrides in SCANS.items():
        for size in [s for s in a.shards if s > 1]:
            peak, seconds, wait = measure("M", a.seq_len, size, a.iters, overrides)
            timing = ["—", "—", "—"] if seconds is None else [f"{seconds:.2f}", f"{wait:.2f}", f"{wait / seconds:.0%}"]
            rows.append([f"`{name}`", str(size), f"{peak:.0f}", *timing])
            print(table(head, rows[-1:]), flush=True)
    peak, seconds, _ = measure("M", a.seq_len, 1, a.iters, LINEAR)
    doc = (
        "### Measured: a linear memory's scan across shards, serial against parallel\n\n"
        f"Machine: {machine()}. Command: `python -m bench.context_parallel --linear --iters {a.iters}`. "
        "The `M` model above "
        f"with a linear memory (memory_depth = 1, max_grad_norm = 0), one sequence of {a.seq_len} tokens, "
        f"otherwise as above. One process: peak {peak:.0f} MiB, step {seconds:.2f} s.\n\n" + table(head, rows)
    )
    publish(doc, "parallelism.md", "cp_linear", write=not a.no_write)


if __name__ == "__main__":
    main()
