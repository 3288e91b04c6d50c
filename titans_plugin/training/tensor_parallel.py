"""Tensor-parallel plan for Titans blocks: head-parallel attention and memory, with
sequence parallelism between them.

Inside a block every projection into heads is column-wise (each rank holds whole heads),
every projection out of heads is row-wise, and the memory scan runs on the local heads
with no communication. Per-head parameters that are not Linear weights (the learned
initial memory, the per-head output norm, the conv channels) are sharded on their head
dimension. Norms, gates and persistent tokens are replicated.

Sequence parallel, as torchtitan's llama3 plan: the residual stream between sub-layers is
sharded on the sequence (each TP rank holds T / tp tokens of it), so are the norms that
read it. A sub-layer's norm all-gathers its output (the mixer and the feed-forward see
the whole sequence) and the sub-layer's last row-wise projection reduce-scatters back to
the rank's tokens. Where a row-wise output is read on the whole sequence (MAC's
retrieval, attention and memory update per segment; MAL's memory, whose persistent
prefix is cut after its projection) it stays an all-reduce, and is cut to the rank's
tokens where it joins the stream (an identity hook: `mixer_output`, MAL's
`memory_output`). Each block type declares these (blocks/base.py:
`whole_sequence_outputs`, `joins_stream`, `stream_norms`, `token_norms`).

Norms and persistent tokens are replicated DTensors (every parameter must be a DTensor
for torchtitan's gradient-norm clipping under TP) whose modules take and return local
tensors, so the model computes on plain tensors; the only DTensor the model itself meets
is a per-head parameter of the memory (titans_plugin/utils/dtensor.py).
"""

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleOutput,
    RowwiseParallel,
    parallelize_module,
)

from titans_plugin.blocks import TitansBlockBase
from titans_plugin.blocks.prefixed_memory import PersistentTokens
from titans_plugin.memory import NeuralMemory
from titans_plugin.model import TitansTransformer


def _shard_param_on_heads(module: nn.Module, name: str, mesh: DeviceMesh) -> None:
    param = getattr(module, name)
    if param is None:
        return
    sharded = nn.Parameter(distribute_tensor(param.data, mesh, [Shard(0)]), requires_grad=param.requires_grad)
    module.register_parameter(name, sharded)


SEQUENCE = Shard(1)


def _shard_memory(memory: NeuralMemory, mesh: DeviceMesh, output) -> None:
    parallelize_module(
        memory,
        mesh,
        {
            "wq": ColwiseParallel(),
            "wk": ColwiseParallel(),
            "wv": ColwiseParallel(),
            "w_gates": ColwiseParallel(),
            "w_out_gate": ColwiseParallel(),
            "wo": RowwiseParallel(output_layouts=output),
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


def _sequence_parallel_norm(norm: nn.Module, mesh: DeviceMesh, gather: bool) -> None:
    """A norm over the rank's tokens of the sequence-sharded stream. Its weight is a
    replicated DTensor, whose gradient DTensor sums over the ranks' tokens. gather: return
    the whole sequence (what the sub-layer after it reads); its gradient arrives already
    summed over the ranks (each column-wise projection all-reduces its input's), so the
    backward keeps the rank's part."""

    def inputs(module, args, mesh):
        return tuple(DTensor.from_local(t, mesh, [SEQUENCE], run_check=False) for t in args)

    def output(module, out, mesh):
        return out.redistribute(mesh, [Replicate()]).to_local() if gather else out.to_local()

    distribute_module(norm, mesh, input_fn=inputs, output_fn=output)


def _replicate_with_local_output(model: nn.Module, mesh: DeviceMesh, skip: set) -> None:
    """Norm weights and persistent tokens that read the whole sequence become replicated
    DTensors (gradient-norm clipping needs every parameter to be a DTensor under TP); the
    module takes and returns local tensors. Every rank computes the same gradient for
    them, so no reduction is needed."""
    for module in model.modules():
        if isinstance(module, (nn.RMSNorm, PersistentTokens)) and module not in skip:
            distribute_module(module, mesh, input_fn=_inputs_to_replicated, output_fn=_output_to_local)


def _replicate_remaining(model: nn.Module, mesh: DeviceMesh) -> None:
    """Parameters no plan touched (attention's persistent tokens, read only through the
    column-wise wk and wv) become replicated DTensors."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not isinstance(param, DTensor):
                replicated = nn.Parameter(distribute_tensor(param.data, mesh, [Replicate()]), param.requires_grad)
                module.register_parameter(name, replicated)


def block_plan(block: TitansBlockBase, sequence_parallel: bool = True) -> dict:
    """The block's Linear layers; sequence_parallel False: every sub-layer output is
    all-reduced and the stream stays replicated."""
    stream = SEQUENCE if sequence_parallel else Replicate()
    plan = {
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=stream),
    }
    if getattr(block, "attention", None) is not None:
        plan.update(
            {
                "attention.wq": ColwiseParallel(),
                "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(),
                "attention.wo": RowwiseParallel(
                    output_layouts=Replicate() if "attention.wo" in block.whole_sequence_outputs else stream
                ),
            }
        )
    # whole-sequence outputs cut to the rank's tokens before the residual add
    to_stream = PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=SEQUENCE, use_local_output=True)
    if sequence_parallel and block.joins_stream is not None:
        plan[block.joins_stream] = to_stream
    return plan


def sequence_parallel_applies(model: TitansTransformer) -> bool:
    """Packed documents run each memory layer on a re-laid-out sequence whose output is
    unpacked after the memory's row-wise projection, which needs the whole sequence:
    those models keep a replicated stream."""
    return model.model_args.titans.attn_mask_type != "block_causal"


def apply_tensor_parallel(
    model: TitansTransformer,
    mesh: DeviceMesh,
    loss_parallel: bool,
    sequence_parallel: bool = True,
    local_logits: bool = False,
) -> None:
    """loss_parallel: the logits stay sharded on the vocabulary, as a DTensor (torchtitan
    0.2.2, and 0.3.0's "partial_dtensor" backend) or, with local_logits, as this rank's
    slice (0.3.0's "spmd_types" backend); otherwise they are gathered. sequence_parallel
    False (0.3.0's parallelism.enable_sequence_parallel): every sub-layer output is
    all-reduced and the stream stays replicated."""
    sequence_parallel = sequence_parallel and sequence_parallel_applies(model)
    stream = SEQUENCE if sequence_parallel else Replicate()
    parallelize_module(
        model,
        mesh,
        {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=stream),
            "output": ColwiseParallel(
                input_layouts=Replicate(),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=local_logits or not loss_parallel,
            ),
        },
    )
    sequence_norms: set[nn.Module] = set()
    if sequence_parallel:
        sequence_norms.add(model.norm)
        _sequence_parallel_norm(model.norm, mesh, gather=True)
    for block in model.blocks():
        parallelize_module(block, mesh, block_plan(block, sequence_parallel))
        memory = getattr(block, "memory", None)
        if memory is not None:
            replicated = not sequence_parallel or "memory.wo" in block.whole_sequence_outputs
            _shard_memory(memory, mesh, Replicate() if replicated else SEQUENCE)
        if not sequence_parallel:
            continue
        for names, gather in ((block.stream_norms(), True), (block.token_norms, False)):
            for name in names:
                norm = block.get_submodule(name)
                _sequence_parallel_norm(norm, mesh, gather=gather)
                sequence_norms.add(norm)
    _replicate_with_local_output(model, mesh, skip=sequence_norms)
    _replicate_remaining(model, mesh)
