"""Checks of a training layout against a Titans model, before anything is built.

Both torchtitan adapters describe their job's layout as a `Layout` (the field names in the
messages, `parallelism.tensor_parallel_degree` and so on, are the same in torchtitan 0.2.2
and 0.3.0) and call `check_layout` from their model config's `update_from_config`."""

from typing import NamedTuple

from titans_plugin.model import TitansModelArgs


class Layout(NamedTuple):
    tp: int = 1
    pp: int = 1
    cp: int = 1
    cp_load_balancer: str | None = "headtail"
    compile_model: bool = False  # torch.compile on, with "model" among its components
    cuda_graphs: bool = False  # the trainer replays forward + backward as a CUDA graph (torchtitan 0.3.0's default)
    seq_lens: dict[str, int] = {}  # the sequence lengths the model runs at, by config field


def check_layout(args: TitansModelArgs, layout: Layout) -> None:
    check_parallel_layout(args, layout.tp, layout.pp)
    check_compile(args, layout.compile_model, layout.seq_lens.get("training.seq_len"))
    check_context_parallel(args, layout.cp, layout.cp_load_balancer, layout.seq_lens, layout.compile_model)
    check_cuda_graphs(args, layout.cuda_graphs)


def check_cuda_graphs(args: TitansModelArgs, cuda_graphs: bool) -> None:
    """A CUDA graph replays the kernels it recorded on the same buffers: the carried memory
    (model/carry.py) is Python state between forwards, so a replay would read the state
    the recorded forward started from, forever, and never restart."""
    if cuda_graphs and args.titans.carries_memory(args.n_layers):
        raise ValueError(
            f"titans.carry_memory={args.titans.carry_memory} cannot run with CUDA graphs "
            "(training.disable_cuda_graphs = false, torchtitan 0.3.0's default): a replayed forward would "
            "start from the recorded forward's memory every step. Set training.disable_cuda_graphs = true "
            "(--training.disable_cuda_graphs) or titans.carry_memory = 0"
        )


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
    """Context parallel (context_parallel/transport.py): torchtitan cuts every sequence into cp
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
    if args.titans.carries_memory(args.n_layers):
        raise ValueError(
            f"titans.carry_memory={args.titans.carry_memory} cannot run with parallelism.context_parallel_degree={cp}: "
            "the memory carried from one forward to the next would have to cross from the last shard to the first. "
            "Set carry_memory = 0 or context_parallel_degree = 1"
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


def check_compile(args: TitansModelArgs, compile_model: bool, seq_len: int | None = None) -> None:
    """Packed documents are laid out by where they start, which per-block
    torch.compile(fullgraph=True) cannot trace. A carried memory's unfinished chunk (its
    pending inputs) is compiled at its length: where training.seq_len is not a multiple of
    the chunk, that length changes from one carried forward to the next, and each new one
    compiles every block again until torch's limit stops training (fullgraph)."""
    if compile_model and args.titans.attn_mask_type == "block_causal":
        raise ValueError(
            "titans.attn_mask_type='block_causal' cannot run with compile.enable = true (components "
            "including 'model'): the document layout depends on where documents start, which "
            "torch.compile(fullgraph=True) cannot trace. Set compile.enable = false, or leave 'model' "
            "out of compile.components, or titans.attn_mask_type = 'causal'"
        )
    chunk = args.titans.chunk_size
    if compile_model and seq_len is not None and seq_len % chunk and args.titans.carries_memory(args.n_layers):
        raise ValueError(
            f"titans.carry_memory={args.titans.carry_memory} with compile.enable = true (components including "
            f"'model') needs training.seq_len={seq_len} to be a multiple of titans.chunk_size={chunk}: a carried "
            "memory's unfinished chunk would change length from one forward to the next, and every block would "
            "compile again for each length until torch's recompile limit stops training. Set training.seq_len to "
            f"a multiple of {chunk}, or compile.enable = false, or titans.carry_memory = 0"
        )
