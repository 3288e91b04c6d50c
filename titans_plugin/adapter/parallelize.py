"""The plugin's parallelize function: TP, activation checkpointing, compile, FSDP2/HSDP/DDP.

Order as torchtitan's llama3: tensor parallel, then activation checkpointing, then
per-block torch.compile, then data parallel. Activation checkpointing uses torchtitan's
implementation with our save list for the selective "op" policy: llama3's (every other
`mm`, the attention kernels) plus the memory scan's batched matmuls and the Triton scan
op, so the scan's matmuls are kept and only its elementwise work (gates, decays,
activations) is recomputed. docs/parallelism.md gives the measured memory and time.
"""

import torch
import torch.distributed as dist
from torchtitan.config import TORCH_DTYPE_MAP
from torchtitan.distributed.activation_checkpoint import apply_ac
from torchtitan.models.llama3.infra.parallelize import apply_compile, apply_ddp, apply_fsdp
from torchtitan.tools.logging import logger

from titans_plugin.kernels import triton_op  # noqa: F401  defines torch.ops.titans.memory_scan

from .cpu import accelerator_present, force_sum_reductions
from .tensor_parallel import apply_tensor_parallel

# Outputs the selective "op" policy keeps (torchtitan's llama3 keeps every other mm and
# the attention kernels; each torchtitan model declares its own list like this).
SAC_SAVE_LIST = {
    torch.ops.aten.mm.default,
    torch.ops.aten.bmm.default,  # the chunked scan's per-chunk matmuls
    torch.ops.titans.memory_scan.default,  # the Triton scan: its saved states replace a second scan
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_attention_math.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
    torch.ops.aten.max.default,
}


def parallelize_titans(model: torch.nn.Module, parallel_dims, job_config) -> torch.nn.Module:
    """The layout was checked against the model in TitansTrainArgs.update_from_config."""
    if parallel_dims.cp_enabled:
        # torchtitan shards each batch on the sequence before the model; the model
        # exchanges across shards what its blocks need (blocks/sequence_shard.py). The
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
            op_sac_save_list=SAC_SAVE_LIST,
            base_folder=job_config.job.dump_folder,
        )
    if compile_model:
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
        apply_ddp(model, mesh, enable_compile=compile_model)
        model.register_comm_hook(mesh.get_group(), sum_gradients)
    return model


def sum_gradients(process_group, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-reduce with a sum, not DDP's default mean.

    torchtitan divides each rank's summed loss by the token count of the whole global
    batch, so the ranks' gradients already add up to the batch gradient; it disables
    FSDP's division for that reason but not DDP's, whose mean would make every gradient
    1/dp of the true one (the clip threshold then binds at a different step, and the run
    departs from the single-process one).
    """
    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])
