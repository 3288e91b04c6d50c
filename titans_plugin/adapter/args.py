"""Model args as torchtitan sees them: our TitansModelArgs plus BaseModelArgs' hooks."""

import copy
from dataclasses import dataclass

from torch import nn
from torchtitan.protocols.model import BaseModelArgs

from titans_plugin.config import TitansConfig
from titans_plugin.model import TitansModelArgs
from titans_plugin.model.flops import model_nparams_and_flops


def check_parallel_layout(args: TitansModelArgs, tp: int, pp: int = 1) -> None:
    """Fail before training when a sharding layout cannot work."""
    if pp > 1:
        raise ValueError(
            "parallelism.pipeline_parallel_degree must be 1 for Titans models (pipelining is not supported)"
        )
    if tp <= 1:
        return
    kv = args.n_kv_heads or args.n_heads
    for name, heads in (("n_heads", args.n_heads), ("n_kv_heads", kv)):
        if heads % tp:
            raise ValueError(f"parallelism.tensor_parallel_degree={tp} must divide the attention model.{name}={heads}")
    if args.titans.uses_memory(args.n_layers) and args.titans.memory_heads % tp:
        raise ValueError(
            f"parallelism.tensor_parallel_degree={tp} must divide titans.memory_heads="
            f"{args.titans.memory_heads} (memory heads are sharded across TP ranks)"
        )


CP_LOAD_BALANCERS = ("headtail", None)


def check_context_parallel(
    args: TitansModelArgs, cp: int, load_balancer: str | None, seq_lens: dict[str, int], compile_enabled: bool
) -> None:
    """Context parallel (blocks/sequence_shard.py): torchtitan cuts every sequence into cp
    shards (2 cp chunks with its head-tail load balancer), which the model reorders into
    contiguous shards."""
    if cp <= 1:
        return
    if load_balancer not in CP_LOAD_BALANCERS:
        raise ValueError(
            f"parallelism.context_parallel_load_balancer={load_balancer!r} is not supported for Titans models: "
            "use 'headtail' (the default) or None (contiguous shards, no reordering)"
        )
    if args.titans.attn_mask_type == "block_causal":
        raise ValueError(
            f"titans.attn_mask_type='block_causal' cannot run with parallelism.context_parallel_degree={cp}: "
            "packed documents are laid out over the whole sequence. Use attn_mask_type = 'causal' or "
            "context_parallel_degree = 1"
        )
    if compile_enabled:
        raise ValueError(
            f"parallelism.context_parallel_degree={cp} cannot run with compile.enable = true (components "
            "including 'model'): the shards exchange states point to point, which torch.compile(fullgraph=True) "
            "cannot trace. Set compile.enable = false or context_parallel_degree = 1"
        )
    chunks = 2 * cp if load_balancer == "headtail" else cp
    for name, length in seq_lens.items():
        if length % chunks:
            raise ValueError(
                f"{name}={length} must be a multiple of {chunks} with parallelism.context_parallel_degree={cp} "
                f"and context_parallel_load_balancer={load_balancer!r} (the sequence is cut into {chunks} "
                "equal chunks)"
            )
        shard, chunk = length // cp, args.titans.chunk_size
        if args.titans.cp_scan == "parallel" and shard % chunk:
            raise ValueError(
                f"{name}={length} gives {shard} tokens per context-parallel shard, which must be a multiple of "
                f"titans.chunk_size={chunk} with titans.cp_scan='parallel' (each shard scans whole chunks from zero)"
            )


def _compile_enabled(compile_config) -> bool:
    return compile_config is not None and compile_config.enable and "model" in compile_config.components


def check_compile(args: TitansModelArgs, compile_config) -> None:
    """Packed documents are laid out by where they start, which per-block
    torch.compile(fullgraph=True) cannot trace."""
    if _compile_enabled(compile_config) and args.titans.attn_mask_type == "block_causal":
        raise ValueError(
            "titans.attn_mask_type='block_causal' cannot run with compile.enable = true (components "
            "including 'model'): the document layout depends on where documents start, which "
            "torch.compile(fullgraph=True) cannot trace. Set compile.enable = false, or leave 'model' "
            "out of compile.components, or titans.attn_mask_type = 'causal'"
        )


@dataclass
class TitansTrainArgs(TitansModelArgs, BaseModelArgs):
    def update_from_config(self, job_config, **kwargs) -> None:
        """Take the [titans] section and training.seq_len; validate everything now,
        before any model is built or any step runs."""
        titans = getattr(job_config, "titans", None)
        if titans is not None:
            self.titans = TitansConfig(**copy.deepcopy(vars(titans)))
        # The RoPE table must cover validation sequences too (validation.seq_len defaults
        # to 2048, independent of training.seq_len).
        validation = getattr(job_config, "validation", None)
        val_len = validation.seq_len if validation is not None and validation.enable else 0
        self.max_seq_len = max(job_config.training.seq_len, val_len)
        self.validate(seq_len=job_config.training.seq_len)
        p = job_config.parallelism
        check_parallel_layout(self, p.tensor_parallel_degree, p.pipeline_parallel_degree)
        compile_config = getattr(job_config, "compile", None)
        check_compile(self, compile_config)
        seq_lens = {"training.seq_len": job_config.training.seq_len}
        if val_len:
            seq_lens["validation.seq_len"] = val_len
        check_context_parallel(
            self,
            p.context_parallel_degree,
            p.context_parallel_load_balancer,
            seq_lens,
            _compile_enabled(compile_config),
        )

    def get_nparams_and_flops(self, model: nn.Module, seq_len: int) -> tuple[int, int]:
        return model_nparams_and_flops(model, seq_len)
