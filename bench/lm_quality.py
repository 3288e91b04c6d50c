"""Language-model quality on the embedded corpus: validation loss per block type against a
Transformer, same flavor, same token budget, through the real torchtitan training loop.

Runs in the project environment (torchtitan) with the bench extra (matplotlib):
`.venv/bin/pip install -e .[bench]` once, then

    .venv/bin/python -m bench.lm_quality                  # 6 runs of 400 steps, ~45 min on 2 cores
    .venv/bin/python -m bench.lm_quality --configs debug_mac debug_mal   # re-measure two rows
    .venv/bin/python -m bench.lm_quality --configs debug_mag --set max_grad_norm=0 --no-write
    .venv/bin/python -m bench.lm_quality --render-only    # redraw table and plot from the JSON

Each run is `torchrun -m torchtitan.train` on train_configs/<name>.toml (debugmodel flavor:
width 128, 4 layers; seq 512, batch 8), with checkpoints off and validation (10 batches of
the held-out split) every `--val-every` steps. Parameter counts differ by block type (a
memory adds its projections); the table prints them, as torchtitan reports them.

Every measured row is kept in docs/lm_quality.json (with its date and command), so a run
of some configs replaces those rows and keeps the others; the table and plot are drawn
from all of them. Runs with `--set` overrides are ablations: printed, never stored.
"""

import argparse
import json
import os
import re
import time

from bench.common import REPO, machine, publish, table
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


RESULTS = os.path.join(REPO, "docs", "lm_quality.json")


def run(name: str, steps: int, val_every: int, overrides: list[str], extra: tuple[str, ...] = ()) -> dict:
    """One training run of train_configs/<name>.toml; `overrides` are [titans] FIELD=VALUE,
    `extra` more torchtitan flags (0.2.2 spelling, e.g. --debug.seed 1)."""
    args = [
        "--training.steps",
        str(steps),
        "--validation.freq",
        str(val_every),
        "--checkpoint.no-enable",
        "--job.dump_folder",
        f"./outputs/lm_quality/{name}",
        *extra,
    ]
    for item in overrides:
        key, _, value = item.partition("=")
        args += [f"--titans.{key}", value]
    t0 = time.perf_counter()
    rc, log = run_torchrun(f"train_configs/{name}.toml", args, timeout=3600)
    if rc != 0:
        raise RuntimeError(f"{name} failed:\n{log[-3000:]}")
    val = {int(m.group(1)): float(m.group(2)) for m in VAL_RE.finditer(log)}
    params = PARAMS_RE.search(log)
    return {
        "name": name,
        "steps": steps,
        "train": losses(log),
        "val": val,
        "s": time.perf_counter() - t0,
        "params": params.group(1) if params else "?",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(dated=False),
    }


def load_results() -> dict:
    if not os.path.exists(RESULTS):
        return {}
    with open(RESULTS) as f:
        stored = json.load(f)
    for r in stored.values():  # JSON keys are strings
        r["train"] = {int(k): v for k, v in r["train"].items()}
        r["val"] = {int(k): v for k, v in r["val"].items()}
    return stored


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        steps = [s for s in sorted(r["val"]) if s > 1]  # step 1 (loss ~8) would flatten the rest
        label = f"{CONFIGS[r['name']]} ({r['date']})"  # rows stored with their final loss only plot as a point
        ax.plot(steps, [r["val"][s] for s in steps], marker="o", label=label)
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
    p.add_argument("--set", nargs="*", default=[], help="[titans] overrides FIELD=VALUE (an ablation: not stored)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--render-only", action="store_true", help="no runs: redraw the table and plot from the JSON")
    a = p.parse_args()
    if a.render_only:
        a.configs = []
    for name in a.configs:
        if name not in CONFIGS:
            raise ValueError(f"--configs must be among {list(CONFIGS)}, got {name!r}")
    for item in a.set:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
    stored = load_results()
    for name in a.configs:
        r = run(name, a.steps, a.val_every, a.set)
        print(name, a.set or "", r["params"], f"val {r['val']}", f"{r['s']:.0f}s", flush=True)
        if not a.set:
            stored[name] = r
    if a.set or a.no_write:
        return
    if a.configs:
        with open(RESULTS, "w") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
    results = [stored[name] for name in CONFIGS if name in stored]
    rows = [
        [
            CONFIGS[r["name"]],
            r["params"],
            r["steps"],
            f"{r['train'][max(r['train'])]:.3f}",
            f"{r['val'][max(r['val'])]:.3f}" if r["val"] else "-",
            f"{r['s'] / 60:.1f}",
            r["date"],
        ]
        for r in results
    ]
    header = ["model", "parameters", "steps", "final train loss", "validation loss", "minutes", "measured"]
    doc = (
        f"Machine: {machine(dated=False)}. Command: `.venv/bin/python -m bench.lm_quality --steps {a.steps}` "
        f"(rows re-measured with `--configs NAME`). Same flavor (debugmodel), data, batch (8 x 512 tokens) "
        f"and sequence length for every row.\n\n{table(header, rows)}\n\n![validation loss](lm_quality.png)\n"
    )
    publish(doc, "results.md", "lm-quality", True, lambda path: plot(results, path))


if __name__ == "__main__":
    main()
