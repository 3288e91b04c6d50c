"""Run a function on P local processes joined in a gloo process group (tests of the
distributed code paths without torchrun)."""

import datetime
import os
import tempfile
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, size, store_path, fn, args):
    # a mismatched exchange fails within a minute instead of hanging
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=size, timeout=timeout)
    try:
        fn(rank, size, *args)
    except BaseException:
        # spawn reports only the first rank that failed, often a symptom of another's
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(fn, size: int, *args) -> None:
    """fn(rank, size, *args) on `size` processes; an exception on any rank fails the call.
    fn must be importable (a module-level function)."""
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_entry, args=(size, os.path.join(d, "store"), fn, args), nprocs=size, join=True)
