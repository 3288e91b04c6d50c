"""Long-range recall beyond the attention window: MAC, MAG, MAL, LMM vs sliding-window and
full attention, trained from scratch on CPU at equal parameters and steps, over seeds.

    python -m bench.recall_suite                 # default rows, ~25 min on 2 cores: tables,
                                                 # docs/results.md, docs/recall.png
    python -m bench.recall_suite --steps 50 --seeds 1 --no-write            # smoke run
    python -m bench.recall_suite --variants MAG MAC --set max_grad_norm=0 \\
        --section recall-clip-off                                          # an ablation

Every model: 2 layers of one block type, width 64, 4 heads, window (and MAC segment) 16,
memory chunk 16, depth-2 memory. The FFN width of each variant is chosen so that all
variants land within a few percent of the MAC model's parameter count (printed). Training:
`--steps` AdamW steps of 32 sequences of `--train-len` tokens, every answer at least 4
windows (64 tokens) behind its query; loss on the answers only. Evaluation: 256 fresh
sequences at the training length (answers >= 4 windows back), at 8x it (>= 32 windows) and
at 32x it (>= 128 windows): lengths never trained on. Memory variants run `--seeds` seeds,
the attention baselines one. Tasks: titans_plugin/evals/recall_tasks.py. Two stacked
sliding-window layers see at most 2 x 16 = 32 tokens back, so they cannot reach any answer.
"""

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from bench.common import machine, publish, table
from bench.small_models import MEMORY_VARIANTS, VARIANTS, matched_args, n_params
from titans_plugin.config import TitansConfig
from titans_plugin.evals.recall_tasks import IGNORE, N_VALUES, TASKS, VOCAB, make_batch
from titans_plugin.model import TitansTransformer

WINDOW, TRAIN_T, BATCH, LR = 16, 96, 32, 3e-3
STRETCH = [(1, 4), (8, 32), (32, 128)]  # (x training length, min answer distance in windows)
EVAL_SAMPLES, EVAL_TOKENS = 256, 32768  # eval batches hold at most this many tokens
CHANCE = 1 / N_VALUES


@torch.no_grad()
def accuracy(model, task: str, T: int, min_distance: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    batch = max(1, min(64, EVAL_TOKENS // T))
    hits = total = 0
    for _ in range(EVAL_SAMPLES // batch):
        x, y = make_batch(task, batch, T, min_distance, g)
        pred = model(x).argmax(-1)
        mask = y != IGNORE
        hits += (pred[mask] == y[mask]).sum().item()
        total += mask.sum().item()
    return hits / total


def run(job: tuple) -> dict:
    """Train one (task, variant, seed) and evaluate it at every stretch. Runs in a worker."""
    task, name, seed, steps, train_len, overrides = job
    torch.set_num_threads(1)
    args = matched_args(VARIANTS[name], vocab=VOCAB, window=WINDOW, max_len=32 * train_len, overrides=overrides)
    torch.manual_seed(seed)
    model = TitansTransformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = make_batch(task, BATCH, train_len, 4 * WINDOW, g)
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    acc = [accuracy(model, task, k * train_len, d * WINDOW, seed=100 + i) for i, (k, d) in enumerate(STRETCH)]
    return dict(task=task, name=name, seed=seed, acc=acc, loss=loss.item(), seconds=seconds, params=n_params(args))


def summarise(runs: list[dict]) -> dict:
    """(task, name) -> mean / min / max accuracy per stretch, over seeds."""
    out = {}
    for task, name in {(r["task"], r["name"]) for r in runs}:
        mine = [r for r in runs if r["task"] == task and r["name"] == name]
        per_stretch = list(zip(*[r["acc"] for r in mine], strict=True))
        out[task, name] = dict(
            mean=[statistics.mean(a) for a in per_stretch],
            lo=[min(a) for a in per_stretch],
            hi=[max(a) for a in per_stretch],
            seeds=len(mine),
            params=mine[0]["params"],
            seconds=statistics.mean(r["seconds"] for r in mine),
            loss=statistics.mean(r["loss"] for r in mine),
        )
    return out


def verdicts(summary: dict, tasks, names) -> list[str]:
    lines = []
    for task in tasks:
        at1 = {n: summary[task, n]["lo"][0] for n in MEMORY_VARIANTS if (task, n) in summary}
        met = [n for n, x in at1.items() if x >= 0.9]
        missed = [f"{n} (worst seed {100 * x:.1f}%)" for n, x in at1.items() if x < 0.9]
        line = f"- {task}, >= 90% at >= 4 windows in every seed: {', '.join(met) or 'none'}"
        line += f"; missed: {', '.join(missed)}" if missed else ""
        if (task, "SWA") in summary:
            line += f". SWA {100 * summary[task, 'SWA']['mean'][0]:.1f}% (chance {100 * CHANCE:.2f}%)"
        lines.append(line + ".")
    if "passkey" in tasks:
        at8 = {n: summary["passkey", n]["mean"][1] for n in ("MAG", "LMM") if ("passkey", n) in summary}
        if at8:
            lines.append(
                "- passkey at 8x the training length (>= 32 windows), target >= 80% for MAG and LMM: "
                + ", ".join(f"{n} {100 * x:.1f}% {'(met)' if x >= 0.8 else '(missed)'}" for n, x in at8.items())
                + "."
            )
    return lines


def plot(summary: dict, tasks, names, train_len: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(11, 4), sharey=True, squeeze=False)
    xs = [d for _, d in STRETCH]
    for ax, task in zip(axes[0], tasks, strict=True):
        for name in names:
            s = summary.get((task, name))
            if s:
                mean = [100 * a for a in s["mean"]]
                err = [
                    [m - 100 * lo for m, lo in zip(mean, s["lo"], strict=True)],
                    [100 * hi - m for m, hi in zip(mean, s["hi"], strict=True)],
                ]
                ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, label=f"{name} ({s['seeds']} seeds)")
        ax.set_title(f"{task} (trained at {train_len} tokens)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{d}\n({k}x len)" for k, d in STRETCH])
        ax.set_xlabel("minimum answer distance (attention windows)")
        ax.axhline(100 * CHANCE, color="grey", lw=0.8, ls=":")
    axes[0][0].set_ylabel("accuracy %: mean, bars min-max over seeds (dotted: chance)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _parse_set(items: list[str]) -> dict:
    fields = TitansConfig.__dataclass_fields__
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set expects FIELD=VALUE with FIELD one of {sorted(fields)}, got {item!r}")
        kind = type(fields[key].default)
        out[key] = kind(value) if kind in (int, float) else value
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3, help="seeds per memory variant (baselines run one)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--tasks", nargs="*", default=list(TASKS))
    p.add_argument("--train-len", type=int, default=TRAIN_T, help="training length (answers >= 4 windows back)")
    p.add_argument("--set", nargs="*", default=[], help="[titans] overrides for every model, FIELD=VALUE")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="training runs in parallel")
    p.add_argument("--section", default="recall", help="docs/results.md section (and PNG name) to write")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    overrides = _parse_set(a.set)
    jobs = [
        (task, name, seed, a.steps, a.train_len, overrides)
        for task in a.tasks
        for name in a.variants
        for seed in range(a.seeds if name in MEMORY_VARIANTS else 1)
    ]
    runs = []
    with ProcessPoolExecutor(a.workers) as pool:
        for r in pool.map(run, jobs):
            runs.append(r)
            print(r["task"], r["name"], f"seed {r['seed']}", [f"{100 * x:.1f}" for x in r["acc"]], flush=True)
    summary = summarise(runs)
    rows = []
    for task in a.tasks:
        for name in a.variants:
            s = summary[task, name]
            cells = [
                f"{100 * m:.1f}" + (f" ({100 * lo:.0f}-{100 * hi:.0f})" if s["seeds"] > 1 else "")
                for m, lo, hi in zip(s["mean"], s["lo"], s["hi"], strict=True)
            ]
            rows.append([task, name, f"{s['params']:,}", s["seeds"], f"{s['seconds']:.0f}", f"{s['loss']:.3f}", *cells])
    header = ["task", "model", "params", "seeds", "train s", "final loss"]
    header += [f"acc % at {k * a.train_len} ({k}x, d>={d}w)" for k, d in STRETCH]
    command = f"python -m bench.recall_suite --steps {a.steps} --seeds {a.seeds} --train-len {a.train_len}"
    if a.variants != list(VARIANTS):
        command += " --variants " + " ".join(f"'{v}'" if " " in v else v for v in a.variants)
    if a.tasks != list(TASKS):
        command += " --tasks " + " ".join(a.tasks)
    if a.set:
        command += " --set " + " ".join(a.set)
    if a.section != "recall":
        command += f" --section {a.section}"
    png = f"{a.section}.png"
    doc = (
        f"Machine: {machine()}. Command: `{command}`. "
        f"Settings: {overrides or 'defaults'}. Accuracy: mean over seeds (min-max).\n\n{table(header, rows)}\n\n"
        + "\n".join(verdicts(summary, a.tasks, a.variants))
        + f"\n\n![recall accuracy vs distance]({png})\n"
    )
    publish(
        doc, "results.md", a.section, not a.no_write, lambda path: plot(summary, a.tasks, a.variants, a.train_len, path)
    )


if __name__ == "__main__":
    main()
