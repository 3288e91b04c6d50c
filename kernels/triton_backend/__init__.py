"""The Triton memory scan: one program per (batch, head) walks the chunks with the state in
fp32 tiles, as torch custom ops (CUDA, or any device under TRITON_INTERPRET=1).

config.py      the launch configuration: each kernel's compile-time arguments (a leaf)
capability.py  whether a configuration can run here (`unsupported_reason`, `launch_problem`)
ops.py         the custom ops `titans::memory_scan` and its backward, with their fakes and
               autograd; `triton_neural_memory`, the backend's scan
step.py        a chunk's work (inner errors, retrieval and state update), shared by the
               forward kernel (forward.py) and the backward's replay
split.py       the split-state scan (split_forward.py, split_backward.py): SPLIT programs
               per (batch, head) meet through global memory (exchange.py); a shard's
               chunk in split_step.py, the forward's phases in split_phases.py; the
               `triton_split` backend
backward.py    the backward kernel, its eleven phases in backward_state.py and
               backward_inputs.py, their scratch in backward_scratch.py
pieces.py      the building blocks every kernel uses (tiles, decays, activations)
compile.py     ahead-of-time compiles for an sm_<arch> target (no GPU needed)
"""

from .config import SUPPORTED_DEPTHS
from .ops import launch, launch_split, split_count, split_supports, supports, triton_neural_memory

__all__ = [
    "SUPPORTED_DEPTHS",
    "launch",
    "launch_split",
    "split_count",
    "split_supports",
    "supports",
    "triton_neural_memory",
]
