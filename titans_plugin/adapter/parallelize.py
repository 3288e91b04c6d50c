"""The plugin's parallelize function: TP, activation checkpointing, compile, FSDP2/HSDP/DDP.

Order as torchtitan's llama3: tensor parallel, then activation checkpointing, then
per-block torch.compile, then data parallel. Activation checkpointing uses torchtitan's
implementation; its selective "op" policy saves matmul and attention outputs, so the
memory scan's in-chunk matmuls are kept and only its elementwise work (gates, decays,
activations) is recomputed: the scan is sequential over chunks, so recomputing all of
it would cost a second scan per step.
"""

import torch
from torchtitan.config import TORCH_DTYPE_MAP
from torchtitan.models.llama3.infra.parallelize import (
    _op_sac_save_list, apply_compile, apply_ddp, apply_fsdp,
)
from torchtitan.distributed.activation_checkpoint import apply_ac
from torchtitan.tools.logging import logger

from .args import check_parallel_layout
from .cpu import accelerator_present, force_sum_reductions
from .tensor_parallel import apply_tensor_parallel


def parallelize_titans(model: torch.nn.Module, parallel_dims, job_config) -> torch.nn.Module:
    check_parallel_layout(model.model_args, parallel_dims.tp, parallel_dims.pp, parallel_dims.cp)
    if parallel_dims.tp_enabled:
        apply_tensor_parallel(
            model, parallel_dims.get_mesh("tp"),
            loss_parallel=not job_config.parallelism.disable_loss_parallel,
        )
        logger.info("Applied head-parallel tensor parallelism to the Titans model")

    compile_model = job_config.compile.enable and "model" in job_config.compile.components
    if job_config.activation_checkpoint.mode != "none":
        apply_ac(
            model, job_config.activation_checkpoint, model_compile_enabled=compile_model,
            op_sac_save_list=_op_sac_save_list, base_folder=job_config.job.dump_folder,
        )
    if compile_model:
        apply_compile(model, job_config.compile)

    if parallel_dims.fsdp_enabled:
        names = ["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"]
        apply_fsdp(
            model, parallel_dims.get_mesh(names),
            param_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_param],
            reduce_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_reduce],
            pp_enabled=parallel_dims.pp_enabled,
            cpu_offload=job_config.training.enable_cpu_offload,
            reshard_after_forward_policy=job_config.parallelism.fsdp_reshard_after_forward,
        )
        if not accelerator_present():
            force_sum_reductions(model)
    elif parallel_dims.dp_replicate_enabled:
        apply_ddp(model, parallel_dims.get_mesh("dp_replicate"), enable_compile=compile_model)
    return model
