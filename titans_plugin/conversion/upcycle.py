"""Upcycle a trained Transformer checkpoint into a Titans hybrid checkpoint.

    python -m titans_plugin.conversion.upcycle outputs/debug_attention/checkpoint/step-400 \
        train_configs/debug_mal.toml -o outputs/upcycled/step-0 [--set memory_out_init=zero]
    python -m titans_plugin.conversion.upcycle CHECKPOINT my_configs:titans_8b_mag -o OUT   # torchtitan 0.3
    torchrun --nproc_per_node 8 -m titans_plugin.conversion.upcycle ...      # sharded, 1/8 per process

Input: the hybrid's config (torchtitan 0.2.2: its TOML; 0.3.0: MODULE:FUNCTION, as
`--module MODULE --config FUNCTION`) and a Transformer checkpoint, either a torchtitan DCP
step folder of a llama3-shaped model (torchtitan's llama3 of either version, or a Titans
model of `A` layers) or a Hugging Face Llama folder of safetensors (read through the
installed torchtitan's llama3 state-dict adapter, as `checkpoint.initial_load_in_hf` does).
Output: a DCP folder with the hybrid's model weights, for `checkpoint.initial_load_path`
(with `checkpoint.initial_load_model_only = true`). Every weight the hybrid shares with
the checkpoint (same name and shape: embeddings, norms, attention, feed-forward) is
copied; what is new (memory, gates, persistent tokens) is initialised by the hybrid's own
`init_weights`, so `[titans]` options such as `memory_out_init` apply. A checkpoint that
does not match the hybrid's sizes (layer count, a tensor's shape, a Transformer weight it
lacks) is an error naming the first mismatch, before anything is written.

Under torchrun the model is built on the meta device and sharded with FSDP2 across the
processes before it is materialised, and DCP reads and writes each process's shards, so
no process holds more than its share of the model.
"""

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import cast

import torch
import torch.distributed as dist


def _layer(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("layers.") else None


def plan(model_shapes: dict, checkpoint_shapes: dict, source: str) -> tuple[list[str], list[str]]:
    """(names to copy, names to initialise); raises, naming the first mismatch, when the
    checkpoint is not a Transformer of the hybrid's sizes."""
    hint = "(the hybrid's model.flavor must have the checkpoint's sizes; only [titans] may differ)"
    ours = {_layer(k) for k in model_shapes} - {None}
    theirs = {_layer(k) for k in checkpoint_shapes} - {None}
    if ours != theirs:
        raise ValueError(f"checkpoint {source} has {len(theirs)} layers and the hybrid {len(ours)} {hint}")
    # What the Transformer's layers hold (attention, feed-forward, norms): a hybrid layer
    # that has one of these names must find it in the same layer of the checkpoint.
    transformer_layer = {k.split(".", 2)[2] for k in checkpoint_shapes if _layer(k) is not None}
    shared, new = [], []
    for name, shape in model_shapes.items():
        if name not in checkpoint_shapes:
            in_layer = _layer(name) is not None and name.split(".", 2)[2] in transformer_layer
            if _layer(name) is None or in_layer:
                raise ValueError(f"checkpoint {source} has no {name}, which the hybrid has {hint}")
            new.append(name)
        elif checkpoint_shapes[name] != shape:
            raise ValueError(
                f"checkpoint {source} does not match the hybrid config: {name} is "
                f"{list(checkpoint_shapes[name])} in the checkpoint and {list(shape)} in the model {hint}"
            )
        else:
            shared.append(name)
    return shared, new


def _build_sharded(args, device: torch.device):
    """The hybrid on `device`, FSDP2-sharded across the processes when there are several."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from titans_plugin.model import TitansTransformer

    with torch.device("meta"):
        model = TitansTransformer(args)
    if dist.is_initialized() and dist.get_world_size() > 1:
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for layer in model.layers.values():
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=device)
    return model


def _load_in_groups(checkpoint, state: dict, names: list[str], log) -> None:
    """Read the top-level tensors, then one layer at a time, printing progress: an 8B
    checkpoint takes minutes, and a silent process looks hung."""
    groups: dict = {}
    for name in names:
        groups.setdefault(_layer(name), []).append(name)
    order = sorted(groups, key=lambda g: -1 if g is None else g)
    start = time.monotonic()
    for i, group in enumerate(order, 1):
        checkpoint.load({k: state[k] for k in groups[group]})
        if i == len(order) or i % max(1, len(order) // 8) == 0:
            what = "embeddings and output" if group is None else f"layer {group}"
            log(f"  read {i}/{len(order)} ({what}), {time.monotonic() - start:.1f} s")


def upcycle(source: str, config: str, output: str, overrides: Sequence[str] = (), log=print) -> dict:
    """Write the hybrid checkpoint; returns {"copied": [...], "initialised": [...]}."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from .checkpoints import open_checkpoint
    from .stack import adapter

    build = adapter("build")

    if os.path.exists(output) and os.listdir(output):
        raise ValueError(f"output folder {output!r} is not empty: refusing to overwrite a checkpoint")
    args = build.train_args(build.load_job_config(config, *overrides))
    checkpoint = open_checkpoint(source, args)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(int(os.environ.get("UPCYCLE_SEED", "0")))
    model = _build_sharded(args, device)
    state = cast(dict[str, torch.Tensor], get_model_state_dict(model))
    shared, new = plan({k: tuple(v.shape) for k, v in state.items()}, checkpoint.shapes, source)
    n_bytes = sum(state[k].numel() * state[k].element_size() for k in shared)
    log(f"copying {len(shared)} tensors ({n_bytes / 2**20:,.1f} MiB) from {checkpoint.kind} {source}")
    _load_in_groups(checkpoint, state, shared, log)
    parts = sorted({k.split(".")[2] if k.startswith("layers.") else k for k in new})  # memory, gate, ...
    log(f"initialised {len(new)} new tensors (per layer: {', '.join(parts)})")
    log(f"writing {len(state)} tensors to {output}")
    dcp.save(state, checkpoint_id=output)
    log("done")
    return {"copied": shared, "initialised": new}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m titans_plugin.conversion.upcycle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        help="the Transformer: a torchtitan DCP step folder (.../checkpoint/step-400) or a Hugging Face Llama folder",
    )
    p.add_argument(
        "config",
        help="the hybrid's config: a TOML (torchtitan 0.2.2) or MODULE:FUNCTION (0.3.0); its model sizes must be "
        "the checkpoint's",
    )
    p.add_argument("-o", "--output", required=True, help="the DCP folder to write (must not exist or be empty)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a [titans] field (--set memory_out_init=zero)"
    )
    a = p.parse_args(argv)
    overrides = [x for item in a.set for x in (f"--titans.{item.partition('=')[0]}", item.partition("=")[2])]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank0 = not distributed or dist.get_rank() == 0
    try:
        upcycle(a.source, a.config, a.output, overrides, log=print if rank0 else (lambda *_: None))
    except ValueError as err:
        if rank0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            # every process is past its last collective before any tears its group down:
            # otherwise gloo can abort a process at exit, after the checkpoint is written
            dist.barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
