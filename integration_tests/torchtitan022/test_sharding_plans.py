"""Sharding plans of paper-size models at TP=4 x FSDP=2 (8 ranks), without devices."""

import json
import os
import subprocess
import sys

import pytest

from devtools.paths import REPO

PROBE = "integration_tests.torchtitan022.shard_plan_probe"


def probe(config: str, tp: int, dp: int, *overrides: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", PROBE, os.path.join(REPO, config), "--tp", str(tp), "--dp-shard", str(dp), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pattern", ["mac", "mag", "mal", "lmm"])
def test_400m_tp4_fsdp2_per_rank_shapes(pattern):
    params = probe("train_configs/paper_400m_mac.toml", 4, 2, "--titans.pattern", pattern)
    dim, heads, head_dim, hidden = 1024, 16, 64, 256
    world = 8
    # every parameter is a DTensor on the 2-D (fsdp, tp) mesh
    assert all(len(p["placements"]) == 2 for p in params.values()), [
        n for n, p in params.items() if len(p["placements"]) != 2
    ]
    layer = "layers.0"
    mem = f"{layer}.memory"
    expect = {
        # head-parallel memory: column-wise into heads, row-wise out, per-head tensors on the head dim
        f"{mem}.wq.weight": [heads * head_dim // world, dim],
        f"{mem}.w_gates.weight": [3 * heads // world, dim],
        f"{mem}.wo.weight": [dim // 2, heads * head_dim // 4],
        f"{mem}.init_memory.0": [heads // world, head_dim, hidden],
        f"{mem}.init_memory.1": [heads // world, hidden, head_dim],
        f"{mem}.out_norm_weight": [heads // world, head_dim],
        f"{mem}.conv_k": [heads * head_dim // world, 4],
        # replicated on TP, sharded by FSDP
        f"{mem}.input_norm.weight": [dim // 2],
        f"{layer}.attention_norm.weight": [dim // 2],
        f"{layer}.feed_forward.w1.weight": [params[f"{layer}.feed_forward.w1.weight"]["global"][0] // world, dim],
        f"{layer}.feed_forward.w2.weight": [dim // 2, params[f"{layer}.feed_forward.w2.weight"]["global"][1] // 4],
    }
    if pattern != "lmm":
        expect[f"{layer}.attention.wq.weight"] = [dim // world, dim]
        expect[f"{layer}.attention.wo.weight"] = [dim // 2, dim // 4]
    if pattern in ("mac", "mag"):
        expect[f"{layer}.attention.persistent"] = [4 // 2, dim]  # replicated on TP, FSDP on dim 0
    if pattern in ("mac", "mag"):
        expect[f"{layer}.gate.norm_y.weight"] = [dim // 2]
    for name, shape in expect.items():
        assert params[name]["local"] == shape, (name, params[name])
    # mesh order (fsdp, tp): heads sharded on TP, norms replicated on TP
    assert params[f"{mem}.init_memory.0"]["placements"][1] == "S(0)"
    assert params[f"{mem}.wo.weight"]["placements"][1] == "S(1)"
    assert params[f"{layer}.attention_norm.weight"]["placements"] == ["S(0)", "R"]


def test_tp_degree_that_does_not_divide_memory_heads_fails_before_sharding():
    """TP 4 divides the 12 attention and KV heads of the 170M flavor, not 6 memory heads."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            PROBE,
            os.path.join(REPO, "train_configs/paper_170m_mac.toml"),
            "--tp",
            "4",
            "--dp-shard",
            "1",
            "--titans.memory_heads",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode != 0
    assert "parallelism.tensor_parallel_degree=4 must divide titans.memory_heads=6" in out.stderr, out.stderr[-2000:]
