"""Build a Titans model on the meta device, shard it with the plugin's parallelize function
on a fake process group of `world` ranks (no devices, no communication), and print rank
0's local parameter shapes and placements as JSON.

    python -m integration_tests.torchtitan022.shard_plan_probe CONFIG --tp 4 --dp-shard 2 [torchtitan overrides]
"""

import argparse
import json
import sys


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--dp-shard", type=int, required=True)
    a, overrides = p.parse_known_args()

    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.utils import init_fake_mode

    from titans_plugin.torchtitan022.build import build_model, load_job_config, train_args
    from titans_plugin.torchtitan022.parallelize import parallelize_titans

    world = a.tp * a.dp_shard
    job = load_job_config(
        a.config,
        "--parallelism.tensor_parallel_degree",
        str(a.tp),
        "--parallelism.data_parallel_shard_degree",
        str(a.dp_shard),
        *overrides,
    )
    init_fake_mode(world)
    dims = ParallelDims(dp_replicate=1, dp_shard=a.dp_shard, cp=1, tp=a.tp, pp=1, ep=1, etp=1, world_size=world)
    dims.build_mesh()
    model = build_model(train_args(job), device="meta")
    parallelize_titans(model, dims, job)
    out = {}
    for name, param in model.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        placements = [str(pl) for pl in param.placements] if hasattr(param, "placements") else []
        name = name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")
        out[name] = {"global": list(param.shape), "local": list(local.shape), "placements": placements}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
