"""Continued training from a Transformer checkpoint (upcycling) against training the
hybrid from scratch and against training the Transformer longer, on the embedded corpus.

    .venv/bin/python -m bench.upcycle_quality          # 6 runs, ~25 min on 2 cores
    .venv/bin/python -m bench.upcycle_quality --render-only   # table and plot from docs/upcycle.json

1. The Transformer (train_configs/debug_attention.toml) trains `--pretrain` steps and
   saves its weights.
2. From that checkpoint, `--steps` more steps each for: the Transformer itself; a MAG
   hybrid (debug_mag.toml) converted with `python -m titans_plugin.conversion.upcycle`; a stacked MAL
   hybrid (debug_mal.toml) converted with `memory_out_init = zero` and its window widened
   to the sequence, so that it starts as the Transformer.
3. The same MAG and MAL hybrids trained `--steps` steps from scratch.
Every run is `torchrun -m torchtitan.train` (debugmodel flavor, seq 512, batch 8) with
validation on 10 held-out batches every `--steps / 4` steps and at step 1; continued runs
load the converted weights with `checkpoint.initial_load_path` (fresh optimizer and
warm-up, as a lab continuing from a checkpoint would).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from bench.common import REPO, machine, publish, table
from devtools.torchrun import losses, run_torchrun

VAL_RE = re.compile(r"validate step:\s*(\d+)\s+\S*loss:\s*([-\w.]+)")
MAL_AS_TRANSFORMER = ["--titans.memory_out_init", "zero", "--titans.window", "512"]


def train(config: str, dump: str, steps: int, val_every: int, extra: list[str]) -> dict:
    args = ["--training.steps", str(steps), "--validation.freq", str(val_every), "--validation.steps", "10"]
    args += ["--metrics.log_freq", "10", "--job.dump_folder", dump, *extra]
    rc, log = run_torchrun(os.path.join("train_configs", config), args, timeout=3600)
    if rc != 0:
        raise RuntimeError(log[-3000:])
    return {"val": {int(s): float(v) for s, v in VAL_RE.findall(log)}, "train": losses(log)}


def upcycle(source: str, config: str, out: str, sets: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "titans_plugin.conversion.upcycle",
        source,
        os.path.join("train_configs", config),
        "-o",
        out,
    ]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pretrain", type=int, default=200)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--render-only", action="store_true", help="table and plot from docs/upcycle.json")
    a = p.parse_args()
    if a.render_only:
        with open(os.path.join(REPO, "docs", "upcycle.json")) as f:
            saved = json.load(f)
        runs = {k: {part: {int(s): v for s, v in r[part].items()} for part in r} for k, r in saved["runs"].items()}
        a.pretrain, a.steps = saved["pretrain"], saved["steps"]
        return render(a, runs, saved["machine"])
    runs = measure(a)
    if not a.no_write:  # the curves behind the table and plot
        with open(os.path.join(REPO, "docs", "upcycle.json"), "w") as f:
            json.dump({"machine": machine(), "pretrain": a.pretrain, "steps": a.steps, "runs": runs}, f, indent=1)
    render(a, runs, machine())


def measure(a) -> dict:
    val_every = max(1, a.steps // 4)
    load = ["--checkpoint.enable", "--checkpoint.initial_load_model_only", "--checkpoint.initial_load_path"]
    runs = {}
    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "attention")
        save = ["--checkpoint.enable", "--checkpoint.interval", str(a.pretrain), "--checkpoint.last_save_model_only"]
        train("debug_attention.toml", base, a.pretrain, a.pretrain, save)
        step = os.path.join(base, "checkpoint", f"step-{a.pretrain}")
        upcycle(step, "debug_mag.toml", os.path.join(work, "mag"), [])
        mal = os.path.join(work, "mal")
        upcycle(step, "debug_mal.toml", mal, ["memory_out_init=zero", "window=512"])
        arms = [
            ("Transformer, continued", "debug_attention.toml", [*load, step]),
            ("MAG, upcycled", "debug_mag.toml", [*load, os.path.join(work, "mag")]),
            ("MAG, from scratch", "debug_mag.toml", []),
            ("MAL (zero memory output), upcycled", "debug_mal.toml", [*MAL_AS_TRANSFORMER, *load, mal]),
            ("MAL (zero memory output), from scratch", "debug_mal.toml", MAL_AS_TRANSFORMER),
        ]
        for label, config, extra in arms:
            dump = os.path.join(work, f"run{len(runs)}")
            runs[label] = train(config, dump, a.steps, val_every, extra)
            print(label, runs[label]["val"], flush=True)
    return runs


def render(a, runs: dict, machine_text: str) -> None:
    rows = [
        [label, f"{r['val'][1]:.3f}", f"{r['val'][a.steps]:.3f}", f"{r['train'][1]:.3f}"] for label, r in runs.items()
    ]
    text = "\n\n".join(
        [
            "### Upcycling a Transformer: continued training against training from scratch",
            f"Machine: {machine_text}. Command: `.venv/bin/python -m bench.upcycle_quality --pretrain {a.pretrain} "
            f"--steps {a.steps}`. The Transformer (debug flavor, seq 512, batch 8) first trains {a.pretrain} steps; "
            f"every row then trains {a.steps} steps (fresh optimizer and warm-up). Validation loss on 10 held-out "
            "batches of the embedded corpus; the MAL rows widen the window to the sequence (512) and start the "
            "memory's output projection at zero, so the upcycled one starts as the Transformer.",
            table(["run", "validation loss at step 1", f"validation loss at step {a.steps}", "first train loss"], rows),
            "![upcycling](upcycle.png)",
        ]
    )

    def figure(path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for label, r in runs.items():
            steps = sorted(r["val"])
            ax.plot(steps, [r["val"][s] for s in steps], marker="o", label=label)
        ax.set_ylim(top=1.6)  # from-scratch runs start near 8 (the table has it); this shows the rest
        ax.set_xlabel(f"steps after the Transformer's {a.pretrain}")
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    publish(text, "results.md", "upcycle", not a.no_write, figure)


if __name__ == "__main__":
    main()
