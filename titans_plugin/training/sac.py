"""What selective activation checkpointing's "op" policy keeps, for both adapters.

torchtitan's llama3 keeps every other `mm` and the attention kernels; each torchtitan model
declares its own list like this. Ours adds the memory scan's batched matmuls and the Triton
scan op, so the scan's matmuls are kept and only its elementwise work (gates, decays,
activations) is recomputed. docs/parallelism.md gives the measured memory and time."""

import torch

from titans_plugin.kernels.triton_backend import ops  # noqa: F401  defines torch.ops.titans.memory_scan
from titans_plugin.utils.torch_internals import saved_private_ops


def sac_save_list() -> set:
    return {
        torch.ops.aten.mm.default,
        torch.ops.aten.bmm.default,  # the chunked scan's per-chunk matmuls
        torch.ops.titans.memory_scan.default,  # the Triton scan: its saved states replace a second scan
        *saved_private_ops(),
        torch.ops.aten.max.default,
    }
