"""`python -m bench.gpu_acceptance --dry-run`: the GPU acceptance script's every step at toy
sizes in the Triton interpreter, so the script a GPU machine will run is itself tested; and
the roofline model's calibration reads its results."""

import json
import os
import subprocess
import sys

import pytest

from bench import gpu_acceptance
from devtools.paths import REPO

pytestmark = pytest.mark.slow  # the Triton interpreter and a torchrun run


def test_the_dry_run_passes_every_step_and_the_roofline_reads_it(tmp_path):
    out = tmp_path / "acceptance.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "bench.gpu_acceptance", "--dry-run", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["failures"] == []
    assert len(results["self_checks"]) == 4
    assert all(r["ok"] and r["max_error"] < 1e-4 for r in results["self_checks"])
    assert {r["pattern"] for r in results["block_parity"]} == {"CA", "GA", "LA", "M"}
    assert {r["impl"] for r in results["speed"]["rows"]} == {"triton", "chunk", "sdpa"}
    split = results["split_speed"]
    if hasattr(__import__("triton.language").language, "atomic_poll"):
        assert "self-check passed" in split["self_check"]
        assert split["difference"] < 1e-5
        assert split["gradient_difference"] < 1e-4
        assert [(r["impl"], r["direction"]) for r in split["rows"]] == [
            ("triton", "forward"),
            ("triton", "forward+backward"),
            ("triton_split", "forward"),
            ("triton_split", "forward+backward"),
        ]
        assert all(r["correct"] for r in results["exchange"]["rows"])
        assert "no interpreter path" in results["exchange"]["not_run"]["cluster"]
        cluster = results["cluster_speed"]  # the op's emulation of the kernel: no Gluon on CPU
        assert "self-check passed" in cluster["self_check"]
        assert "Gluon cluster forward" in cluster["self_check"]
        assert cluster["difference"] < 1e-5
        assert cluster["gradient_difference"] < 1e-4
        assert [r["impl"] for r in cluster["rows"]] == ["triton", "triton", "gluon_cluster", "gluon_cluster"]
        assert "no timing to stall" in cluster["stall"]["not_run"]
    else:  # triton < 3.9: the steps say why they did not run
        assert "tl.atomic_poll" in split["not_run"]
        assert "tl.atomic_poll" in results["exchange"]["not_run"]
    assert all(r["ok"] for r in results["training"])
    assert all(r["ok"] for r in results["ring_attention"])
    assert [(r["dtype"], r["restarts"]) for r in results["precision"]] == [
        ("torch.float16", False),
        ("torch.float16", True),
    ]
    assert all(max(r["errors"].values()) < 1e-2 for r in results["precision"])  # fp16 rounding, no more
    report = gpu_acceptance.report(results)  # what --render writes into docs/benchmarks.md
    assert "Meetings of split programs" in report
    for heading in ("self-check", "dk worst at", "block", "scan", "config", "ring attention"):
        assert f"| {heading} |" in report
    calibration = subprocess.run(
        [sys.executable, "-m", "bench.roofline", "--measured", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert calibration.returncode == 0, calibration.stderr
    assert "measured us/chunk" in calibration.stdout
    rows = [line for line in calibration.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(results["sizes"]["lengths"])  # a row per length


def test_a_design_report_says_what_auto_runs_and_its_race():
    row = {"impl": "gluon_cluster", "direction": "forward", "T": 4096, "B": 2, "H": 16, "tokens_per_s": 1e6}
    design = {"self_check": "passed", "difference": 1e-3, "gradient_difference": 2e-3, "rows": [row | {"speedup": 1.5}]}
    design["stall"] = {"stall_ns": 20000, "identical": True}
    design["auto"] = {
        "backend": "gluon_cluster",
        "races": ["memory scan designs raced on cuda:0: ...; gluon_cluster runs"],
    }
    text = gpu_acceptance._design_report(design, "Cluster")[0]
    assert "With the last CTA stalled 20,000 ns at every exchange: identical to unstalled." in text
    assert text.endswith(
        "Backend `auto` runs `gluon_cluster` here; memory scan designs raced on cuda:0: ...; gluon_cluster runs."
    )
