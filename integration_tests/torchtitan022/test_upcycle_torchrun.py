"""Upcycling end to end: train the attention model, convert its checkpoint to a MAL hybrid
with the converter sharded over two processes, and train from it in torchtitan
(checkpoint.initial_load_path), single process and FSDP2 = 2. The converted model starts
where the Transformer was: its first loss is the Transformer's on the same batch."""

import os
import subprocess
import sys

from devtools.paths import REPO
from devtools.torchrun import FAST, losses, run_torchrun

ATTENTION = "train_configs/debug_attention.toml"
MAL = "train_configs/debug_mal.toml"
SHORT = [*FAST, "--training.seq_len", "128", "--validation.seq_len", "128"]  # within MAL's window
ZERO = ["--titans.memory_out_init", "zero"]


def _train(config, dump, steps, extra=(), nproc=1):
    args = [*SHORT, "--training.steps", str(steps), "--job.dump_folder", dump, *extra]
    rc, log = run_torchrun(config, args, nproc=nproc)
    assert rc == 0, log[-4000:]
    return losses(log)


def _from(path):
    return ["--checkpoint.enable", "--checkpoint.initial_load_path", path, "--checkpoint.initial_load_model_only"]


def test_upcycled_hybrid_starts_at_the_transformer_loss_and_trains(tmp_path):
    source = str(tmp_path / "attention")
    save = ["--checkpoint.enable", "--checkpoint.interval", "6", "--checkpoint.last_save_model_only"]
    _train(ATTENTION, source, 6, save)
    step = os.path.join(source, "checkpoint", "step-6")
    hybrid = str(tmp_path / "hybrid")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend", "c10d"]
    cmd += ["--rdzv_endpoint", "localhost:0", "-m", "titans_plugin.conversion.upcycle", step, MAL, "-o", hybrid]
    cmd += ["--set", "memory_out_init=zero"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "copying" in proc.stdout
    assert "done" in proc.stdout

    # the Transformer continued for one step from its checkpoint: the reference first loss
    reference = _train(ATTENTION, str(tmp_path / "continued"), 1, _from(step))
    for name, nproc, extra in (("single", 1, []), ("fsdp2", 2, ["--training.local_batch_size", "2"])):
        curve = _train(MAL, str(tmp_path / name), 20, [*_from(hybrid), *ZERO, *extra], nproc=nproc)
        assert sorted(curve) == list(range(1, 21))
        if name == "single":
            assert abs(curve[1] - reference[1]) <= 1e-4 * reference[1], (curve[1], reference[1])
        assert min(curve[s] for s in range(15, 21)) < curve[1]
