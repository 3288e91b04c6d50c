"""Run torchtitan under torchrun the way ./run_train.sh does, and read what it printed.

Configs and flags are written as torchtitan 0.2.2 spells them (a TOML under train_configs/,
`--job.dump_folder`, ...); with torchtitan 0.3.0 installed they become its config function
(`--module titans_plugin --config titans_<toml name>`) and its flag names."""

import glob
import os
import re
import subprocess
import sys
import tempfile
import warnings

from devtools.paths import REPO
from titans_plugin.conversion.stack import torchtitan_release

# 0.2.2 flag -> 0.3.0 flag
RENAMES_030 = {
    "--job.dump_folder": "--dump_folder",
    "--training.dataset": "--dataloader.dataset",
    "--training.dataset_path": "--dataloader.dataset_path",
    "--validation.enable": "--validator.enable",
    "--validation.no-enable": "--validator.no-enable",
    "--validation.freq": "--validator.freq",
    "--validation.steps": "--validator.steps",
    "--model.hf_assets_path": "--hf_assets_path",
}
DROPPED_030 = {"--validation.seq_len", "--activation_checkpoint.selective_ac_option"}  # each takes a value


def stack_args(config: str, args: list[str], release=None) -> list[str]:
    """torchtitan.train's arguments for `config` (a TOML under train_configs/) and `args`
    (0.2.2 spelling) on the installed torchtitan."""
    release = release or torchtitan_release()
    if release == (0, 2):
        return ["--job.config_file", os.path.join(REPO, config), *args]
    name = os.path.splitext(os.path.basename(config))[0]
    out, subcommands, i = ["--module", "titans_plugin", "--config", f"titans_{name}"], [], 0
    while i < len(args):
        flag = args[i]
        if flag in DROPPED_030:
            i += 2
            continue
        if flag == "--activation_checkpoint.mode":  # a subcommand in 0.3.0, after every flag
            subcommands.append(f"activation-checkpoint:{args[i + 1]}")
            i += 2
            continue
        out.append(RENAMES_030.get(flag, flag))
        i += 1
    return out + subcommands


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
    """torchtitan.train on `config` (a TOML under train_configs/) with `args` (0.2.2 spelling)."""
    return run_train(stack_args(config, args), nproc, timeout)


# A rank killed by one of these signals crashed in native code, not in a Python error (seen
# once in CI: a 4-process context x tensor parallel run on 2 cores, SIGABRT; not reproduced
# in 10 reruns). Such a run is run once more, and the crash reported as a warning that ends
# with every rank's errors; a run that fails twice fails.
NATIVE_CRASHES = ("Signal 6 (SIGABRT)", "Signal 11 (SIGSEGV)")


def run_train(train_args: list[str], nproc: int = 1, timeout: int = 600, env: dict | None = None) -> tuple[int, str]:
    """torchrun -m torchtitan.train with these arguments, as given; returns (exit code, output).
    The console shows rank 0 only; a failed run's output ends with every other rank's
    error output too, since the rank that failed first is often not rank 0."""
    rc, output = _run_train_once(train_args, nproc, timeout, env)
    if rc != 0 and any(signal in output for signal in NATIVE_CRASHES):
        warnings.warn(f"torchrun: a rank crashed, running again; its output ended:\n{output[-3000:]}", stacklevel=2)
        rc, output = _run_train_once(train_args, nproc, timeout, env)
    return rc, output


def _run_train_once(train_args: list[str], nproc: int, timeout: int, env: dict | None) -> tuple[int, str]:
    with tempfile.TemporaryDirectory(prefix="torchrun_logs_") as log_dir:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            "localhost:0",
            "--log-dir",
            log_dir,
            "--local-ranks-filter",
            "0",
            "--role",
            "rank",
            "--tee",
            "3",
            "-m",
            "torchtitan.train",
            *train_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(max(1, 2 // nproc)), **(env or {})}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            output += other_ranks_errors(log_dir)
    return proc.returncode, ANSI_RE.sub("", output)


def other_ranks_errors(log_dir: str, tail: int = 1000) -> str:
    """The end of each rank's stderr but rank 0's (torchrun's --log-dir layout:
    <run id>/attempt_<n>/<rank>/stderr.log)."""
    out = []
    for path in sorted(glob.glob(os.path.join(log_dir, "*", "attempt_*", "*", "stderr.log"))):
        rank = os.path.basename(os.path.dirname(path))
        if rank == "0":
            continue
        with open(path, errors="replace") as f:
            text = f.read()
        if text.strip():
            out.append(f"\n----- rank {rank} stderr (last {tail} characters) -----\n{text[-tail:]}")
    return "".join(out)


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
