"""Language-model quality on the embedded corpus: validation loss per block type against a
Transformer, same flavor, same token budget, through the real torchtitan training loop.

Runs in the project environment (torchtitan) with the bench extra (matplotlib):
`.venv/bin/pip install -e .[bench]` once, then

    .venv/bin/python -m bench.lm_quality                  # 6 runs of 400 steps, ~45 min on 2 cores
    .venv/bin/python -m bench.lm_quality --steps 100 --configs debug_mac debug_attention

Each run is `torchrun -m torchtitan.train` on train_configs/<name>.toml (debugmodel flavor:
width 128, 4 layers; seq 512, batch 8), with checkpoints off and validation (10 batches of
the held-out split) every `--val-every` steps. Parameter counts differ by block type (a
memory adds its projections); the table prints them, as torchtitan reports them.
"""

import argparse
import re
import time

from bench.common import machine, publish, table
from devtools.torchrun import losses, run_torchrun

CONFIGS = {
    "debug_mac": "MAC (CA)",
    "debug_mag": "MAG (GA)",
    "debug_mal": "MAL (LA)",
    "debug_lmm": "LMM (M)",
    "debug_swa": "SWA (W)",
    "debug_attention": "Transformer (A)",
}
VAL_RE = re.compile(r"validate step:\s*(\d+)\s+\S*loss:\s*([-\w.]+)")
PARAMS_RE = re.compile(r"size:\s*([\d,]+)\s*total parameters")


def run(name: str, steps: int, val_every: int) -> dict:
    args = [
        "--training.steps",
        str(steps),
        "--validation.freq",
        str(val_every),
        "--checkpoint.no-enable",
        "--job.dump_folder",
        f"./outputs/lm_quality/{name}",
    ]
    t0 = time.perf_counter()
    rc, log = run_torchrun(f"train_configs/{name}.toml", args, timeout=3600)
    if rc != 0:
        raise RuntimeError(f"{name} failed:\n{log[-3000:]}")
    val = {int(m.group(1)): float(m.group(2)) for m in VAL_RE.finditer(log)}
    params = PARAMS_RE.search(log)
    return {
        "name": name,
        "train": losses(log),
        "val": val,
        "s": time.perf_counter() - t0,
        "params": params.group(1) if params else "?",
    }


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        steps = [s for s in sorted(r["val"]) if s > 1]  # step 1 (loss ~8) would flatten the rest
        ax.plot(steps, [r["val"][s] for s in steps], marker="o", label=CONFIGS[r["name"]])
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    results = []
    for name in a.configs:
        if name not in CONFIGS:
            raise ValueError(f"--configs must be among {list(CONFIGS)}, got {name!r}")
        results.append(run(name, a.steps, a.val_every))
        r = results[-1]
        print(name, r["params"], f"val {r['val']}", f"{r['s']:.0f}s", flush=True)
    rows = [
        [
            CONFIGS[r["name"]],
            r["params"],
            f"{r['train'][max(r['train'])]:.3f}",
            f"{r['val'][max(r['val'])]:.3f}" if r["val"] else "-",
            f"{r['s'] / 60:.1f}",
        ]
        for r in results
    ]
    text = table(["model", "parameters", f"train loss @ {a.steps}", "validation loss", "minutes"], rows)
    doc = (
        f"Machine: {machine()}. Command: `.venv/bin/python -m bench.lm_quality --steps {a.steps}`. "
        f"Same flavor (debugmodel), data, batch, sequence length and steps for every row; "
        f"{a.steps * 8 * 512:,} training tokens each.\n\n{text}\n\n![validation loss](lm_quality.png)\n"
    )
    publish(doc, "results.md", "lm-quality", not a.no_write, lambda path: plot(results, path))


if __name__ == "__main__":
    main()
