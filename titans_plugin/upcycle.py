"""Upcycle a trained Transformer checkpoint into a Titans hybrid checkpoint.

    python -m titans_plugin.upcycle outputs/debug_attention/checkpoint/step-400 \
        train_configs/debug_mal.toml -o outputs/upcycled/step-0 [--set memory_out_init=zero]
    torchrun --nproc_per_node 8 -m titans_plugin.upcycle ...      # sharded, 1/8 per process

Input: a torchtitan DCP step folder of a llama3-shaped model (torchtitan's llama3, or a
Titans model of `A` layers: the parameter names are the same) and the hybrid's TOML.
Output: a DCP folder with the hybrid's model weights, for `checkpoint.initial_load_path`
(with `checkpoint.initial_load_model_only = true`). Every weight the hybrid shares with
the checkpoint (same name and shape: embeddings, norms, attention, feed-forward) is
copied; what is new (memory, gates, persistent tokens) is initialised by the hybrid's own
`init_weights`, so `[titans]` options such as `memory_out_init` apply. A name present in
both with different shapes is an error naming it, before anything is written.

Under torchrun the model is built on the meta device and sharded with FSDP2 across the
processes before it is materialised, and DCP reads and writes each process's shards, so
no process holds more than its share of the model.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist


def _model_part(metadata) -> dict:
    """Checkpoint entries that are tensors (the model; torchtitan also stores optimizer,
    scheduler and dataloader state in a step folder, under their own prefixes)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    return {k: tuple(m.size) for k, m in metadata.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}


def plan(model_shapes: dict, checkpoint_shapes: dict, source: str) -> tuple[list[str], list[str]]:
    """(names to copy, names to initialise); raises on a shape mismatch or no overlap."""
    shared, new = [], []
    for name, shape in model_shapes.items():
        if name not in checkpoint_shapes:
            new.append(name)
        elif checkpoint_shapes[name] != shape:
            raise ValueError(
                f"checkpoint {source} does not match the hybrid config: {name} is "
                f"{list(checkpoint_shapes[name])} in the checkpoint and {list(shape)} in the model "
                "(model sizes must be the checkpoint's; only [titans] may differ)"
            )
        else:
            shared.append(name)
    if not shared:
        raise ValueError(f"checkpoint {source} shares no parameter name with the hybrid model")
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


def upcycle(source: str, config: str, output: str, overrides: list[str] = (), log=print) -> dict:
    """Write the hybrid checkpoint; returns {"copied": [...], "initialised": [...]}."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from titans_plugin.adapter.build import load_job_config, train_args

    if not os.path.isdir(source):
        raise ValueError(f"checkpoint folder {source!r} does not exist")
    if os.path.exists(output) and os.listdir(output):
        raise ValueError(f"output folder {output!r} is not empty: refusing to overwrite a checkpoint")
    args = train_args(load_job_config(config, *overrides))
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(int(os.environ.get("UPCYCLE_SEED", "0")))
    model = _build_sharded(args, device)
    state = get_model_state_dict(model)
    checkpoint = _model_part(dcp.FileSystemReader(source).read_metadata())
    shared, new = plan({k: tuple(v.shape) for k, v in state.items()}, checkpoint, source)
    n_bytes = sum(state[k].numel() * state[k].element_size() for k in shared)
    log(f"copying {len(shared)} tensors ({n_bytes / 2**20:,.1f} MiB) from {source}")
    dcp.load({k: state[k] for k in shared}, checkpoint_id=source)
    parts = sorted({k.split(".")[2] if k.startswith("layers.") else k for k in new})  # memory, gate, ...
    log(f"initialised {len(new)} new tensors (per layer: {', '.join(parts)})")
    log(f"writing {len(state)} tensors to {output}")
    dcp.save(state, checkpoint_id=output)
    log("done")
    return {"copied": shared, "initialised": new}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m titans_plugin.upcycle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="a torchtitan DCP step folder of the Transformer (e.g. .../checkpoint/step-400)")
    p.add_argument("config", help="the hybrid's TOML (model sizes must be the checkpoint's)")
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
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
