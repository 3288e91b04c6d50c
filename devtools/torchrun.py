"""Run torchtitan under torchrun the way ./run_train.sh does, and read what it printed."""

import os
import re
import subprocess
import sys

from devtools.paths import REPO

STEP_RE = re.compile(r"step:\s*(\d+)\s+\S*loss:\s*([-\w.]+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

# Small and fast: enough steps to see the loss fall, nothing else.
FAST = [
    "--training.seq_len",
    "256",
    "--validation.seq_len",
    "256",
    "--training.local_batch_size",
    "4",
    "--metrics.log_freq",
    "1",
    "--validation.no-enable",
    "--lr_scheduler.warmup_steps",
    "2",
]


def run_torchrun(config: str, args: list[str], nproc: int = 1, timeout: int = 600) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "localhost:0",
        "--local-ranks-filter",
        "0",
        "--role",
        "rank",
        "--tee",
        "3",
        "-m",
        "torchtitan.train",
        "--job.config_file",
        os.path.join(REPO, config),
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(max(1, 2 // nproc))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, ANSI_RE.sub("", proc.stdout + proc.stderr)


def losses(output: str) -> dict[int, float]:
    """Training losses by step (validation lines are skipped)."""
    out = {}
    for line in output.splitlines():
        if "validate" in line:
            continue
        m = STEP_RE.search(line)
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out
