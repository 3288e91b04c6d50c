"""Tensor-parallel plan for Titans blocks: head-parallel attention and memory.

Inside a block every projection into heads is column-wise (each rank holds whole heads),
every projection out of heads is row-wise (one all-reduce), and the memory scan runs on
the local heads with no communication. Per-head parameters that are not Linear weights
(the learned initial memory, the per-head output norm, the conv channels) are sharded on
their head dimension. Norms, gates and persistent tokens are replicated.

Norms and persistent tokens are replicated DTensors (every parameter must be a DTensor
for torchtitan's gradient-norm clipping under TP) whose modules return local tensors, so
the model computes on plain tensors; the only DTensor the model itself meets is a
per-head parameter of the memory (NeuralMemory's one helper, _local_heads).

The residual stream between blocks is replicated (no sequence parallel): MAC reads the
memory and projects retrieved tokens through the same attention weights outside of a
single module call, which module-input hooks cannot see. The communication volume per
block is the same as with sequence parallel (all-reduce = reduce-scatter + all-gather);
what it costs is activation memory for the norms, which docs/parallelism.md quantifies.
"""

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from titans_plugin.blocks.prefixed_memory import PersistentTokens
from titans_plugin.memory import NeuralMemory


def _shard_param_on_heads(module: nn.Module, name: str, mesh: DeviceMesh) -> None:
    param = getattr(module, name)
    if param is None:
        return
    sharded = nn.Parameter(distribute_tensor(param.data, mesh, [Shard(0)]), requires_grad=param.requires_grad)
    module.register_parameter(name, sharded)


def _shard_memory(memory: NeuralMemory, mesh: DeviceMesh) -> None:
    parallelize_module(
        memory,
        mesh,
        {
            "wq": ColwiseParallel(),
            "wk": ColwiseParallel(),
            "wv": ColwiseParallel(),
            "w_gates": ColwiseParallel(),
            "w_out_gate": ColwiseParallel(),
            "wo": RowwiseParallel(output_layouts=Replicate()),
        },
    )
    for name in ("conv_q", "conv_k", "conv_v", "out_norm_weight"):
        _shard_param_on_heads(memory, name, mesh)
    for i in range(len(memory.init_memory)):
        _shard_param_on_heads(memory.init_memory, str(i), mesh)


def _inputs_to_replicated(module, inputs, mesh):
    return tuple(
        DTensor.from_local(t, mesh, [Replicate()], run_check=False)
        if isinstance(t, torch.Tensor) and not isinstance(t, DTensor)
        else t
        for t in inputs
    )


def _output_to_local(module, output, mesh):
    return output.to_local() if isinstance(output, DTensor) else output


def _replicate_with_local_output(model: nn.Module, mesh: DeviceMesh) -> None:
    """Norm weights and persistent tokens become replicated DTensors (gradient-norm
    clipping needs every parameter to be a DTensor under TP); the module takes and
    returns local tensors. With a replicated residual stream every rank computes the same
    gradient for them, so no reduction is needed."""
    for module in model.modules():
        if isinstance(module, (nn.RMSNorm, PersistentTokens)):
            distribute_module(module, mesh, input_fn=_inputs_to_replicated, output_fn=_output_to_local)


def _replicate_remaining(model: nn.Module, mesh: DeviceMesh) -> None:
    """Parameters no plan touched (attention's persistent tokens, read only through the
    column-wise wk and wv) become replicated DTensors."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not isinstance(param, DTensor):
                replicated = nn.Parameter(distribute_tensor(param.data, mesh, [Replicate()]), param.requires_grad)
                module.register_parameter(name, replicated)


def block_plan(block: nn.Module) -> dict:
    plan = {
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=Replicate()),
    }
    if getattr(block, "attention", None) is not None:
        plan.update(
            {
                "attention.wq": ColwiseParallel(),
                "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(),
                "attention.wo": RowwiseParallel(output_layouts=Replicate()),
            }
        )
    return plan


def apply_tensor_parallel(model: nn.Module, mesh: DeviceMesh, loss_parallel: bool) -> None:
    parallelize_module(
        model,
        mesh,
        {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
            "output": ColwiseParallel(
                input_layouts=Replicate(),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            ),
        },
    )
    for block in model.layers.values():
        parallelize_module(block, mesh, block_plan(block))
        memory = getattr(block, "memory", None)
        if memory is not None:
            _shard_memory(memory, mesh)
    _replicate_with_local_output(model, mesh)
    _replicate_remaining(model, mesh)
