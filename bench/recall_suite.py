"""Long-range recall beyond the attention window: MAC, MAG, MAL, LMM vs sliding-window and
full attention, trained from scratch on CPU at equal parameters and steps.

    .venv-bench/bin/python -m bench.recall_suite            # ~20 min on 2 cores; tables,
                                                            # docs/results.md, docs/recall.png
    .venv-bench/bin/python -m bench.recall_suite --steps 50 --no-write   # smoke run

Every model: 2 layers of one block type, width 64, 4 heads, window (and MAC segment) 16,
memory chunk 16, depth-2 memory. The FFN width of each variant is chosen so that all
variants land within a few percent of the MAC model's parameter count (printed). Training:
`--steps` AdamW steps of 32 sequences of 96 tokens, every answer at least 4 windows (64
tokens) behind its query; loss on the answers only. Evaluation: 256 fresh sequences per
length, at 96 (distance >= 4 windows), 256 (>= 8) and 1024 tokens (>= 32 windows, lengths the
models never trained on). Tasks: titans_plugin/evals/recall_tasks.py. Two stacked sliding-window layers see
at most 2 x 16 = 32 tokens back, so they cannot reach any answer.
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F

from bench.common import machine, publish, table
from titans_plugin.config import TitansConfig
from titans_plugin.evals.recall_tasks import IGNORE, TASKS, VOCAB, make_batch
from titans_plugin.model import TitansModelArgs, TitansTransformer

VARIANTS = {"MAC": "C", "MAG": "G", "MAL": "L", "LMM": "M", "SWA": "W", "Full attention": "A"}
WINDOW, TRAIN_T, BATCH, LR = 16, 96, 32, 3e-3
EVAL = [(96, 4 * WINDOW), (256, 8 * WINDOW), (1024, 32 * WINDOW)]  # (seq_len, min distance)
EVAL_SAMPLES = 256


def _args(letter: str, ffn_mult: float | None) -> TitansModelArgs:
    return TitansModelArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        vocab_size=VOCAB,
        multiple_of=16,
        ffn_dim_multiplier=ffn_mult,
        max_seq_len=max(t for t, _ in EVAL),
        titans=TitansConfig(
            pattern=letter, memory_heads=4, window=WINDOW, segment_len=WINDOW, chunk_size=16, n_persistent=4
        ),
    )


def _n_params(args: TitansModelArgs) -> int:
    return sum(p.numel() for p in TitansTransformer(args).parameters())


def matched_args(letter: str, target: int) -> TitansModelArgs:
    """The FFN multiplier (0.5 to 4 in steps of 0.05) whose model is closest to target."""
    grid = [None] + [round(0.5 + 0.05 * i, 2) for i in range(71)]
    return min((_args(letter, m) for m in grid), key=lambda a: abs(_n_params(a) - target))


@torch.no_grad()
def accuracy(model, task: str, T: int, min_distance: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    hits = total = 0
    for _ in range(EVAL_SAMPLES // 64):
        x, y = make_batch(task, 64, T, min_distance, g)
        pred = model(x).argmax(-1)
        mask = y != IGNORE
        hits += (pred[mask] == y[mask]).sum().item()
        total += mask.sum().item()
    return hits / total


def train(args: TitansModelArgs, task: str, steps: int, train_len: int = TRAIN_T, seed: int = 0):
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
    return model.eval(), time.perf_counter() - t0, loss.item()


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(11, 4), sharey=True)
    for ax, task in zip(axes, TASKS):
        for name in VARIANTS:
            r = results.get((task, name))
            if r:
                ax.plot([d // WINDOW for _, d in EVAL], [100 * a for a in r["acc"]], marker="o", label=name)
        ax.set_title(task)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("minimum answer distance (attention windows)")
        ax.axhline(100 / 16, color="grey", lw=0.8, ls=":")
    axes[0].set_ylabel("accuracy %  (dotted: chance)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--tasks", nargs="*", default=list(TASKS))
    p.add_argument(
        "--train-len", type=int, default=TRAIN_T, help="training sequence length (answers stay >= 4 windows back)"
    )
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    target = _n_params(_args("C", None))
    results, rows = {}, []
    for task in a.tasks:
        for name in a.variants:
            args = matched_args(VARIANTS[name], target)
            model, seconds, loss = train(args, task, a.steps, a.train_len)
            acc = [accuracy(model, task, T, d, seed=100 + i) for i, (T, d) in enumerate(EVAL)]
            results[task, name] = {"acc": acc}
            rows.append(
                [task, name, f"{_n_params(args):,}", f"{seconds:.0f}", f"{loss:.3f}", *[f"{100 * x:.1f}" for x in acc]]
            )
            print(rows[-1], flush=True)
    header = [
        "task",
        "model",
        "params",
        "train s",
        "final loss",
        *[f"acc % T={T} (d>={d // WINDOW}w)" for T, d in EVAL],
    ]
    text = table(header, rows)
    verdict = []
    for task in a.tasks:
        mem = {n: results[task, n]["acc"][0] for n in ("MAC", "MAG", "MAL", "LMM") if (task, n) in results}
        met = [n for n, x in mem.items() if x >= 0.9]
        missed = [f"{n} {100 * x:.1f}%" for n, x in mem.items() if x < 0.9]
        swa = results.get((task, "SWA"))
        verdict.append(
            f"- {task}: >= 90% at >= 4 windows: {', '.join(met) or 'none'}"
            + (f"; missed: {', '.join(missed)}" if missed else "")
            + (f". SWA: {100 * swa['acc'][0]:.1f}% (chance 6.25%)." if swa else ".")
        )
    doc = (
        f"Machine: {machine()}. Command: `.venv-bench/bin/python -m bench.recall_suite "
        f"--steps {a.steps} --train-len {a.train_len}`. Each model trained once, seed 0.\n\n{text}\n\n"
        + "\n".join(verdict)
        + "\n\n![recall accuracy vs distance](recall.png)\n"
    )
    publish(doc, "results.md", "recall", not a.no_write, lambda path: plot(results, path))


if __name__ == "__main__":
    main()
