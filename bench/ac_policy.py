"""Activation checkpointing of Titans blocks: peak memory and step time per policy.

    python -m bench.ac_policy              # prints the table, writes docs/parallelism.md
    python -m bench.ac_policy --no-write

Policies, each applied per block with torchtitan's apply_ac: none; full (recompute the
block); selective "2" (full on every other block, torchtitan's default option); selective
"op" with llama3's save list (every other mm and the attention kernels: the memory scan's
batched matmuls are recomputed); selective "op" with the plugin's list
(titans_plugin/training/sac.py: the scan's bmm and the Triton scan op
are kept too). Peak memory is the peak of live tensors (parameters, gradients, activations,
temporaries) over one forward + backward, from torch's MemTracker, so it is exact and the
same on any machine; step time is the median of timed steps on this machine.
"""

import argparse
import copy
import statistics
import time

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torchtitan.config import ActivationCheckpoint
from torchtitan.distributed.activation_checkpoint import apply_ac

from bench.common import machine, publish, table
from devtools.models import debug_model
from titans_plugin.model import TitansTransformer
from titans_plugin.training.sac import sac_save_list

SAC_SAVE_LIST = sac_save_list()
LLAMA3_SAVE_LIST = SAC_SAVE_LIST - {torch.ops.aten.bmm.default, torch.ops.titans.memory_scan.default}
POLICIES = {
    "none": None,
    "full": (ActivationCheckpoint(mode="full"), None),
    "selective 2 (every other block full)": (ActivationCheckpoint(mode="selective", selective_ac_option="2"), None),
    "selective op, llama3's list": (ActivationCheckpoint(mode="selective", selective_ac_option="op"), LLAMA3_SAVE_LIST),
    "selective op, plugin's list": (ActivationCheckpoint(mode="selective", selective_ac_option="op"), SAC_SAVE_LIST),
}


def step(model: torch.nn.Module, tokens: torch.Tensor) -> None:
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    model.zero_grad(set_to_none=True)


def measure(base: TitansTransformer, policy, tokens: torch.Tensor, iters: int) -> tuple[float, float]:
    """(peak MiB, median step seconds)."""
    model = copy.deepcopy(base)
    if policy is not None:
        config, save_list = policy
        apply_ac(model, config, op_sac_save_list=save_list)
    step(model, tokens)  # warm-up
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        step(model, tokens)
    peak = tracker.get_tracker_snapshot("peak")[tokens.device]["Total"] / 2**20
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step(model, tokens)
        times.append(time.perf_counter() - start)
    return peak, statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patterns", nargs="*", default=["CA", "GA", "LA", "M"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokens = torch.randint(0, 2048, (a.batch, a.seq_len + 1), generator=torch.Generator().manual_seed(0))
    rows = []
    for pattern in a.patterns:
        base = debug_model(pattern, a.seq_len)
        results = {name: measure(base, policy, tokens, a.iters) for name, policy in POLICIES.items()}
        none_peak, none_time = results["none"]
        for name, (peak, seconds) in results.items():
            rows.append(
                [
                    f"`{pattern}`",
                    name,
                    f"{peak:.0f}",
                    f"{peak / none_peak:.2f}",
                    f"{seconds:.2f}",
                    f"{seconds / none_time:.2f}",
                ]
            )
        print(table(["model", "policy", "peak MiB", "vs none", "step s", "vs none"], rows[-len(POLICIES) :]))
    doc = (
        "### Measured: peak memory and step time per policy\n\n"
        f"Machine: {machine()}. Command: `python -m bench.ac_policy`. Debug flavor (dim 128, 4 layers), "
        f"debug_mac.toml's [titans] settings, batch {a.batch} x {a.seq_len} tokens, fp32, chunked PyTorch "
        "scan. Peak: live tensors over one forward + backward (torch's MemTracker: exact, machine "
        f"independent). Step: median of {a.iters} forward + backward steps.\n\n"
        + table(["model", "policy", "peak MiB", "vs none", "step s", "vs none"], rows)
    )
    publish(doc, "parallelism.md", "ac", write=not a.no_write)


if __name__ == "__main__":
    main()
