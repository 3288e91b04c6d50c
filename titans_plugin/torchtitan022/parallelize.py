"""torchtitan 0.2.2's parallelize function: TP, activation checkpointing, compile,
FSDP2/HSDP/DDP.

Order as torchtitan's llama3: tensor parallel, then activation checkpointing, then
per-block torch.compile, then data parallel. Activation checkpointing uses torchtitan's
implementation with the plugin's save list for the selective "op" policy (training/sac.py).
"""

from torch import nn
from torchtitan.config import TORCH_DTYPE_MAP
from torchtitan.distributed.activation_checkpoint import apply_ac
from torchtitan.models.llama3.infra.parallelize import apply_compile, apply_ddp, apply_fsdp
from torchtitan.tools.logging import logger

from titans_plugin.model import TitansTransformer
from titans_plugin.training.compile import prepare_block_compile
from titans_plugin.training.cpu import accelerator_present, force_sum_reductions
from titans_plugin.training.sac import sac_save_list
from titans_plugin.training.tensor_parallel import apply_tensor_parallel
from titans_plugin.utils.torch_internals import replicate_finding_unused


def parallelize_titans(model: TitansTransformer, parallel_dims, job_config) -> TitansTransformer:
    """The layout was checked against the model in TitansTrainArgs.update_from_config."""
    if parallel_dims.cp_enabled:
        # torchtitan shards each batch on the sequence before the model; the model
        # exchanges across shards what its blocks need (context_parallel/transport.py). The
        # gradients are summed over the cp ranks by FSDP, whose mesh includes them.
        model.shard_sequence(parallel_dims.get_mesh("cp").get_group())
        logger.info("Applied context parallelism (contiguous sequence shards) to the Titans model")
    if parallel_dims.tp_enabled:
        apply_tensor_parallel(
            model,
            parallel_dims.get_mesh("tp"),
            loss_parallel=not job_config.parallelism.disable_loss_parallel,
        )
        logger.info("Applied head-parallel tensor parallelism to the Titans model")

    compile_model = job_config.compile.enable and "model" in job_config.compile.components
    if job_config.activation_checkpoint.mode != "none":
        apply_ac(
            model,
            job_config.activation_checkpoint,
            model_compile_enabled=compile_model,
            op_sac_save_list=sac_save_list(),
            base_folder=job_config.job.dump_folder,
        )
    if compile_model:
        prepare_block_compile(model)
        apply_compile(model, job_config.compile)

    if parallel_dims.fsdp_enabled:
        names = ["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"]
        apply_fsdp(
            model,
            parallel_dims.get_mesh(names),
            param_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_param],
            reduce_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_reduce],
            pp_enabled=parallel_dims.pp_enabled,
            cpu_offload=job_config.training.enable_cpu_offload,
            reshard_after_forward_policy=job_config.parallelism.fsdp_reshard_after_forward,
        )
        if not accelerator_present():
            force_sum_reductions(model)
    elif parallel_dims.dp_replicate_enabled:
        mesh = parallel_dims.get_mesh("dp_replicate")
        if model.memory_carry.every > 1:
            # a carried forward leaves the learned initial memory out of the loss
            # (model/carry.py): DDP must not wait for its gradient
            replicate_finding_unused(model, mesh, compiled=compile_model)
            logger.info("Applied DDP to the model (finding unused parameters: titans.carry_memory)")
        else:
            apply_ddp(model, mesh, enable_compile=compile_model)
        sum_new_gradients_over_ranks(model, mesh.size())
    return model


def sum_new_gradients_over_ranks(model: nn.Module, ranks: int) -> None:
    """Make DDP's mean all-reduce a sum of the ranks' gradients, gradient accumulation included.

    torchtitan divides each rank's summed loss by the token count of the whole global
    batch, so the ranks' gradients must be summed, not averaged (it disables FSDP's division
    for that reason but not DDP's: averaged, every gradient would be 1/dp of the true one and
    the clip would bind at other steps than in one process). DDP reduces what .grad holds
    after each backward, and torchtitan 0.2.2 accumulates micro-batches without no_sync, so
    .grad then holds the earlier micro-batches' already reduced sum beside this one's own
    gradient: a sum all-reduce would count that part once per rank. Scaling each new
    gradient by the rank count before it accumulates makes the mean exact: the reduced part,
    the same on every rank, stays as it is, and the new part becomes the ranks' sum.

    The hooks go on at each forward, onto parameters that have none yet: torchtitan builds
    the model on the meta device and parallelizes it before `to_empty` replaces every
    parameter with a new one."""

    def hook_new_parameters(module: nn.Module, args) -> None:
        for param in module.parameters():
            if param.requires_grad and not getattr(param, "_titans_sums_over_ranks", False):
                param.register_hook(lambda grad: grad * ranks)
                param._titans_sums_over_ranks = True  # type: ignore[attr-defined]

    model.register_forward_pre_hook(hook_new_parameters)
