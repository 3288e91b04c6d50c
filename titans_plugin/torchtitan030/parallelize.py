"""torchtitan 0.3.0's parallelize function for Titans models: context parallel, tensor
parallel, activation checkpointing, compile, FSDP2/HSDP (0.3.0 has no DDP; FSDP always
applies, as for llama3, and at degree 1 only installs the mixed-precision policy).

The tensor-parallel plan is the plugin's own (training/tensor_parallel.py, the same as on
0.2.2), applied on torchtitan's TP mesh; FSDP is torchtitan's own `apply_fsdp_to_decoder`
on the data-parallel mesh. Selective activation checkpointing keeps the plugin's save list
(training/sac.py)."""

from torchtitan.config import TORCH_DTYPE_MAP
from torchtitan.distributed.activation_checkpoint import SelectiveAC
from torchtitan.distributed.compile import apply_compile
from torchtitan.distributed.fsdp import apply_fsdp_to_decoder
from torchtitan.tools.logging import logger

from titans_plugin.training.compile import prepare_block_compile
from titans_plugin.training.cpu import accelerator_present, force_sum_reductions
from titans_plugin.training.sac import sac_save_list
from titans_plugin.training.tensor_parallel import apply_tensor_parallel

from .model import TitansModel


def data_parallel_mesh(parallel_dims, spmd_backend: str):
    """The mesh FSDP shards over: the data-parallel and context-parallel ranks (both hold
    other tokens of the same parameters), with a replicate dimension first for HSDP. At
    degree 1 it still installs the mixed-precision policy, as for llama3.

    The model's parameters are plain tensors (DTensors on the TP mesh under tensor
    parallel), not annotated for 0.3.0's full SPMD mesh, so FSDP gets a mesh of its own
    axes: under "partial_dtensor" torchtitan's folded "fsdp" axis; under "spmd_types"
    "dp_shard", or with context parallel the "loss" axis (data and context parallel
    ranks, flattened), or (dp_replicate, dp_shard) for HSDP."""
    if spmd_backend == "partial_dtensor":
        names = ["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"]
        return parallel_dims.get_mesh(names)
    if parallel_dims.cp_enabled:  # HSDP with context parallel is refused in update_from_config
        return parallel_dims.get_mesh("loss")
    if parallel_dims.dp_replicate_enabled:
        return parallel_dims.get_mesh(["dp_replicate", "dp_shard"])
    return parallel_dims.get_mesh("dp_shard")


class TitansSelectiveAC(SelectiveAC):
    """torchtitan's per-op selective checkpointing with the plugin's save list."""

    def get_save_ops(self) -> set:
        return sac_save_list()


def parallelize_titans(
    model: TitansModel, *, parallel_dims, training, parallelism, compile_config, ac_config, dump_folder: str
) -> TitansModel:
    """The layout was checked against the model in TitansModel.Config.update_from_config."""
    if parallel_dims.cp_enabled:
        # torchtitan cuts every sequence before the model; the model exchanges across
        # shards what its blocks need (context_parallel/). FSDP's mesh includes the cp
        # ranks, so their gradients are summed.
        model.shard_sequence(parallel_dims.get_mesh("cp").get_group(), parallelism.context_parallel_load_balancer)
        logger.info("Applied context parallelism (contiguous sequence shards) to the Titans model")
    if parallel_dims.tp_enabled:
        apply_tensor_parallel(
            model,
            parallel_dims.get_mesh("tp"),
            # torchtitan's cross-entropy takes vocabulary-sharded logits under both backends
            loss_parallel=True,
            sequence_parallel=parallelism.enable_sequence_parallel,
            local_logits=parallelism.spmd_backend == "spmd_types",
        )
        logger.info("Applied head-parallel tensor parallelism to the Titans model")
    if ac_config is not None:
        if type(ac_config) is SelectiveAC.Config:
            TitansSelectiveAC(ac_config, dump_folder=dump_folder).apply(model)
        else:
            ac_config.build(dump_folder=dump_folder).apply(model)
    if compile_config.enable and "model" in compile_config.components:
        prepare_block_compile(model)
        apply_compile(model, compile_config=compile_config, parallel_dims=parallel_dims)
    apply_fsdp_to_decoder(
        model,  # type: ignore[arg-type]  # it reads tok_embeddings, layers, norm, lm_head, enable_weight_tying
        data_parallel_mesh(parallel_dims, parallelism.spmd_backend),
        param_dtype=TORCH_DTYPE_MAP[training.mixed_precision_param],
        reduce_dtype=TORCH_DTYPE_MAP[training.mixed_precision_reduce],
        pp_enabled=parallel_dims.pp_enabled,
        cpu_offload=training.enable_cpu_offload,
        reshard_after_forward_policy=parallelism.fsdp_reshard_after_forward,
    )
    if not accelerator_present():
        force_sum_reductions(model)
    return model
