"""Build a Titans model on the meta device, shard it with the plugin's parallelize function
on a fake process group of `world` ranks (no devices, no communication), and print rank
0's local parameter shapes and placements as JSON.

    python integration_tests/shard_plan_probe.py CONFIG --tp 4 --dp-shard 2 [torchtitan overrides]
"""

import argparse
import copy
import json
import sys

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--dp-shard", type=int, required=True)
    a, overrides = p.parse_known_args()

    import titans_plugin  # noqa: F401  (CPU support, train spec)
    from torchtitan.config import ConfigManager
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.utils import init_fake_mode
    from torchtitan.protocols.train_spec import get_train_spec

    world = a.tp * a.dp_shard
    job = ConfigManager().parse_args([
        "--job.config_file", a.config, "--parallelism.tensor_parallel_degree", str(a.tp),
        "--parallelism.data_parallel_shard_degree", str(a.dp_shard), *overrides,
    ])
    init_fake_mode(world)
    dims = ParallelDims(dp_replicate=1, dp_shard=a.dp_shard, cp=1, tp=a.tp, pp=1, ep=1, etp=1, world_size=world)
    dims.build_mesh()
    spec = get_train_spec("titans")
    args = copy.deepcopy(spec.model_args[job.model.flavor])
    args.update_from_config(job)
    with torch.device("meta"):
        model = spec.model_cls(args)
    spec.parallelize_fn(model, dims, job)
    out = {}
    for name, param in model.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        placements = [str(pl) for pl in param.placements] if hasattr(param, "placements") else []
        name = name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")
        out[name] = {"global": list(param.shape), "local": list(local.shape), "placements": placements}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
