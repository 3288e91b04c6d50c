"""The one place the model meets a DTensor.

Tensor parallel (titans_plugin/integration/tensor_parallel.py) shards per-head parameters
(conv channels, the learned initial memory, the output norm) on their head dim, and FSDP
shards every parameter; the model computes on plain tensors of the local heads. Linear
layers need nothing: their tensor-parallel plan hands out local tensors."""

import torch


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor; any other tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def copy_whole(param: torch.Tensor, values: torch.Tensor) -> None:
    """param <- values (the whole tensor), also when param is sharded: a sharded parameter
    cannot be viewed per head when its shards split heads (12 gate biases over 8 processes)."""
    values = values.to(device=param.device, dtype=param.dtype)
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import DTensor, distribute_tensor

        assert isinstance(param, DTensor)
        values = distribute_tensor(values, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(values)
