"""Needle in a haystack far past the training length: small MAC, MAG, MAL and LMM models and
the sliding-window and full-attention baselines, trained on CPU at --train-len tokens on the
embedded corpus mixed with needle documents, then asked for the needle at the training
length and at 4K to 1M tokens.

    python -m bench.needle_curve train             # every model; checkpoints in outputs/needle_curve/
    python -m bench.needle_curve evaluate          # every trained model at every length; docs/needle_curve.json
    python -m bench.needle_curve forgetting        # each memory head's half-life over held-out text
    python -m bench.needle_curve drift             # LM loss along 65,536 tokens: streamed, memory restarted
    python -m bench.needle_curve publish           # table + plot into docs/results.md
    python -m bench.needle_curve publish --also "MAG, trained on=MAG:DIR/results.json"  # + a staged model's row
    python -m bench.needle_curve train --variants MAG --steps 20 --out /tmp/nc   # smoke

Models and training recipe: bench/needle_training.py (its options: `train` in parser() below).

Evaluation: documents of exactly each length from the held-out stories (cycled past their
~150K tokens), the needle's start at depths 10-90% of the haystack, kinds in turn, no
distractors; the prompt is read through the incremental path (forward_cached) in pieces of
the training length, the answer decoded greedily and scored by exact match of the whole
value, with partial credit (the value's characters right, by place) beside it. The same
documents for every model. Full attention only up to --full-max tokens.

Every trained model's facts and every measured cell are kept in docs/needle_curve.json
(with the date and machine), so models trained on different days, or on different machines,
share one table; the checkpoints stay in --out. A run with another --out keeps its results
in that folder instead (smoke runs leave the docs alone).
"""

import argparse
import json
import math
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

from bench.common import machine, publish, read_store, store, table
from bench.needle_drift import DRIFT_TOKENS, MODES, SPANS, piece_losses, span_means
from bench.needle_tables import (
    by_kind,
    cell_key,
    cell_text,
    curriculum_text,
    filler_table,
    forgetting_table,
    plot,
    summary,
)
from bench.needle_training import (
    ARCHITECTURE,
    FACT_DEFAULTS,
    check_stream_options,
    checkpoint_name,
    fact,
    identity,
    model_args,
    train,
)
from bench.small_models import MEMORY_VARIANTS, VARIANTS
from devtools.paths import REPO
from titans_plugin.evals.needles import (
    KINDS,
    characters_right,
    exact_match,
    filler_ids,
    haystack,
    make_document,
    story_ids,
)
from titans_plugin.evals.niah import tokenizer
from titans_plugin.inference.sampling import Sampling, token_stream
from titans_plugin.inference.trained import Trained
from titans_plugin.memory.neural_memory import NeuralMemory
from titans_plugin.model import TitansTransformer

LENGTHS = [4096, 16384, 65536, 262144, 1048576]  # after each model's training length (retrieval there at all?)
DEPTHS = [0.1, 0.3, 0.5, 0.7, 0.9]
OUT = os.path.join(REPO, "outputs", "needle_curve")
RESULTS = os.path.join(REPO, "docs", "needle_curve.json")
# what makes two models' rows comparable: a row trained otherwise says how, beside its name
RECIPE = ("steps", "batch", "train_len", "window", "dim", "memory_heads", "long_context", "curriculum", "answer_weight",
          "seed", "lr", "needle_frac", "extends", "carry", "warm", "warm_stream")  # fmt: skip


def has_checkpoint(name: str, a) -> bool:
    return os.path.exists(os.path.join(a.out, f"{checkpoint_name(name)}.pt"))


def load(name: str, a) -> tuple[TitansTransformer, dict]:
    with open(os.path.join(a.out, f"{checkpoint_name(name)}.json")) as f:
        facts = json.load(f)
    for key in ("train_len", *ARCHITECTURE):
        setattr(a, key, fact(facts, key))
    model = TitansTransformer(model_args(name, a))
    model.load_state_dict(torch.load(os.path.join(a.out, f"{checkpoint_name(name)}.pt"), weights_only=True))
    return model.eval(), facts


def samples_at(length: int, a) -> int:
    return a.samples if length <= 65536 else a.samples_long


@torch.no_grad()
def ask(model, tok, doc, piece: int) -> tuple[bool, float]:
    """Read the prompt in pieces, decode the answer greedily, score it: exact match, and
    the fraction of the value's characters right (partial credit)."""
    trained = Trained(model, None, piece)
    stream = token_stream(trained, torch.tensor([doc.prompt]), Sampling())
    out = [int(t[0]) for _, t in zip(range(len(doc.answer_ids) + 2), stream, strict=False)]
    text = tok.decode(out)
    return exact_match(text, doc.answer), characters_right(text, doc.answer)


def evaluate(job: tuple) -> dict:
    """One model at one length: exact-match hits over the samples. Runs in a worker."""
    name, length, a = job
    torch.set_num_threads(1)
    tok = tokenizer()
    stories = story_ids(tok, "validation") if a.haystack == "stories" else filler_ids(tok)
    model, facts = load(name, a)
    hits, chars, depths, kinds, t0 = [], [], [], [], time.perf_counter()
    for i in range(samples_at(length, a)):
        rng = random.Random(length * 1000 + i)  # the same documents for every model
        # depths 10, 50, 90, 30, 70%, ...: three samples already span the haystack
        depth, kind = DEPTHS[2 * i % len(DEPTHS)], KINDS[i % len(KINDS)]
        doc = make_document(tok, stories, length, depth, kind, rng)
        exact, right = ask(model, tok, doc, facts["train_len"])
        hits.append(exact)
        chars.append(right)
        depths.append(depth)
        kinds.append(kind)
    seconds = (time.perf_counter() - t0) / len(hits)
    partial = 100 * sum(chars) / len(chars)
    scored = f"{sum(hits)}/{len(hits)} exact, {partial:.0f}% of characters"
    print(f"{name} at {length:,}: {scored}, {seconds:.1f} s per sample", flush=True)
    facts = dict(depths=depths, kinds=kinds, seconds_per_sample=seconds, haystack=a.haystack)
    return dict(name=name, length=length, hits=hits, characters=chars, **facts)


FORGET_TOKENS = 16384  # of held-out stories, read like an evaluation prompt


@torch.no_grad()
def half_lives(model: TitansTransformer, tokens: list[int], piece: int) -> list[float]:
    """Every memory head's half-life in tokens while it reads `tokens` through the
    incremental path in pieces of `piece`: ln 2 over the mean of -log(1 - alpha) per token
    (alpha: its forgetting gate). That many tokens of such text halve what the memory holds
    by forgetting alone; new writes overwrite it too, so a needle lasts at most about this."""
    memories = [m for m in model.modules() if isinstance(m, NeuralMemory)]
    decay: list[torch.Tensor] = [torch.zeros((), dtype=torch.float64) for _ in memories]
    seen = [0] * len(memories)

    def recording(i: int, original):
        def gates(x):
            theta, eta, alpha = original(x)
            decay[i] = decay[i] + (-torch.log1p(-alpha.double())).sum(dim=(0, 1))  # [H]
            seen[i] += alpha.shape[0] * alpha.shape[1]
            return theta, eta, alpha

        return gates

    for i, m in enumerate(memories):
        m.gates = recording(i, m.gates)  # type: ignore[method-assign]
    try:
        model.cover_positions(len(tokens))
        x, caches = torch.tensor([tokens]), None
        for lo in range(0, len(tokens), piece):
            _, caches = model.forward_cached(x[:, lo : lo + piece], caches)
    finally:
        for m in memories:
            del m.gates  # the class's method again
    rates = [float(head) / n for total, n in zip(decay, seen, strict=True) for head in total.reshape(-1)]
    return [math.log(2) / rate if rate > 0 else math.inf for rate in rates]


def cmd_forgetting(a) -> None:
    tok = tokenizer()
    tokens = haystack(story_ids(tok, "validation"), FORGET_TOKENS, 0)
    for n in a.variants:
        if n not in MEMORY_VARIANTS or not has_checkpoint(n, a):
            continue
        model, facts = load(n, a)
        lives = sorted(half_lives(model, tokens, facts["train_len"]))
        r = dict(name=n, tokens=FORGET_TOKENS, half_lives=lives, date=time.strftime("%Y-%m-%d"))
        store(_results_path(a), "forgetting", n, r)
        print(f"{n}: memory heads' half-lives {', '.join(f'{h:,.0f}' for h in lives)} tokens", flush=True)


def cmd_drift(a) -> None:
    torch.set_num_threads(1)  # as the evaluation's workers
    tok = tokenizer()
    tokens = haystack(story_ids(tok, "validation"), DRIFT_TOKENS + 1, 0)
    rows = []
    for n in a.variants:
        if n == "Full attention" or not has_checkpoint(n, a):
            continue  # full attention: its cache grows with the whole read (--full-max)
        model, facts = load(n, a)
        piece = facts["train_len"]
        if SPANS[0][1] % piece:
            print(f"{n}: trained at {piece:,} tokens, which does not divide the first span's {SPANS[0][1]:,}; skipped")
            continue
        r = dict(name=n, tokens=DRIFT_TOKENS, piece=piece, spans=SPANS, date=time.strftime("%Y-%m-%d"))
        for mode in MODES:
            losses = piece_losses(model, tokens, piece, mode)
            r[mode] = None if losses is None else span_means(losses, piece)
            cells = ["-"] * len(SPANS) if losses is None else [f"{x:.3f}" for x in r[mode]]
            rows.append([n, mode, *cells])
            print(table(["model", "read", *(f"{lo:,}-{hi:,}" for lo, hi in SPANS)], rows[-1:]), flush=True)
        store(_results_path(a), "drift", n, r)
    print(table(["model", "read", *(f"tokens {lo:,}-{hi:,}" for lo, hi in SPANS)], rows))


def _results_path(a) -> str:
    return RESULTS if os.path.abspath(a.out) == os.path.abspath(OUT) else os.path.join(a.out, "results.json")


def _checkpoint_facts(name: str, a) -> dict:
    base = os.path.join(a.out, checkpoint_name(name))
    with open(base + ".json") as f:
        facts = json.load(f)
    if "date" not in facts:  # trained before the facts carried their date: the checkpoint's, said so
        facts["date"] = time.strftime("%Y-%m-%d", time.localtime(os.path.getmtime(base + ".pt")))
        facts["machine"] = machine(dated=False)
        facts["inferred"] = "date from the checkpoint file's time, machine from the machine that evaluated it"
    return facts


def cmd_train(a) -> None:
    check_stream_options(a)  # before any worker starts
    with ProcessPoolExecutor(a.workers) as pool:
        for done in as_completed([pool.submit(train, (n, a)) for n in a.variants]):
            facts = done.result()
            store(_results_path(a), "models", facts["name"], facts)  # as each finishes
            print(json.dumps(facts), flush=True)


def cmd_evaluate(a) -> None:
    stored = read_store(_results_path(a))
    models = dict(stored.get("models", {}))
    for n in a.variants:
        if os.path.exists(os.path.join(a.out, f"{checkpoint_name(n)}.json")) and n not in models:
            models[n] = _checkpoint_facts(n, a)  # trained before training recorded its facts here
            store(_results_path(a), "models", n, models[n])
    results = stored.get("cells", {})

    def lengths(name: str) -> list[int]:  # by default the model's own training length first
        return a.lengths or [models[name]["train_len"], *LENGTHS]

    jobs = []
    for n in a.variants:
        if n not in models:
            continue
        missing = [
            length
            for length in lengths(n)
            if not (n == "Full attention" and length > a.full_max) and cell_key(n, length, a.haystack) not in results
        ]
        if missing and not has_checkpoint(n, a):
            print(f"{n}: no checkpoint in {a.out} for its {len(missing)} missing cells: train it first", flush=True)
            continue
        jobs += [(n, length, a) for length in missing]
    jobs.sort(key=lambda job: job[1])  # shortest first: every model's short cells before any long one
    with ProcessPoolExecutor(a.workers) as pool:
        for r in pool.map(evaluate, jobs):
            r.update(date=time.strftime("%Y-%m-%d"), machine=machine(dated=False))
            r["checkpoint"] = identity(models[r["name"]])  # which training of the name it measured
            key = cell_key(r["name"], r["length"], a.haystack)
            store(_results_path(a), "cells", key, r)  # a stopped run keeps what it measured


# what a later stage of training changes by design; any other difference is named beside a staged row
STAGE_KEYS = ("steps", "batch", "train_len", "lr", "extends", "carry", "warm", "warm_stream")


def staged_rows(specs: list[str]) -> tuple[dict, dict]:
    """--also LABEL=MODEL:FILE[,FILE...]: one more row, named LABEL, for MODEL trained in
    another --out (a length extension, say), from that folder's results.json (or a copy).
    The files must hold one training run of MODEL: cells measured on it in several files (a
    copy of the checkpoint evaluated with more samples) join, the cell with more samples
    standing (the first file's on a tie)."""
    facts: dict = {}
    cells: dict = {}
    for spec in specs:
        label, _, source = spec.partition("=")
        model, _, files = source.partition(":")
        if not (label and model and files):
            raise SystemExit(f"--also {spec!r}: expected LABEL=MODEL:FILE[,FILE...]")
        if label in facts or label in VARIANTS:
            raise SystemExit(f"--also {label!r}: a label of its own, please (it names another row)")
        stored = []
        for path in files.split(","):
            if not os.path.exists(path):
                raise SystemExit(f"--also {label!r}: no file {path}")
            stored.append(read_store(path))
        runs = {identity(f): f for s in stored for n, f in s.get("models", {}).items() if n == model}
        if len(runs) != 1:
            raise SystemExit(f"--also {label!r}: its files hold {len(runs)} training runs of {model}; expected 1")
        ((run, f),) = runs.items()
        facts[label] = f
        for s in stored:
            for r in s.get("cells", {}).values():
                measured_on = r.get("source") or r.get("checkpoint")
                if r["name"] != model or r.get("haystack", "stories") != "stories" or measured_on != run:
                    continue
                key = f"{label}@{r['length']}"
                if key not in cells or summary(r)[2] > summary(cells[key])[2]:
                    cells[key] = r
        if not any(k.startswith(f"{label}@") for k in cells):
            raise SystemExit(f"--also {label!r}: no cell of its files was measured on that training of {model}")
    return facts, cells


def recorded(facts: dict, key: str):
    """A recipe setting as recorded, or as facts written before it existed read it (None: unknown)."""
    return facts.get(key, FACT_DEFAULTS.get(key))


def cmd_publish(a) -> None:
    stored = read_store(_results_path(a))
    facts, cells = stored.get("models", {}), stored.get("cells", {})
    results = {k: r for k, r in cells.items() if r.get("haystack", "stories") == "stories"}
    names = [n for n in a.variants if n in facts]
    if not names:
        raise SystemExit(f"no trained models in {_results_path(a)}: run `python -m bench.needle_curve train` first")
    f0 = facts[names[0]]
    staged_facts, staged_cells = staged_rows(a.also)
    results = {k: r for k, r in results.items() if r["name"] in names} | staged_cells
    lengths = sorted({r["length"] for r in results.values()})
    every = {**{n: facts[n] for n in names}, **staged_facts}
    rows = []
    for n, f in every.items():
        same = STAGE_KEYS if n in staged_facts else ()
        settings = [(k, recorded(f, k), recorded(f0, k)) for k in RECIPE if k not in same]
        differs = [f"{k} {v}" for k, v, v0 in settings if None not in (v, v0) and v != v0]
        row = [
            n + (f" ({', '.join(differs)})" if differs else ""),
            f"{f['params']:,}",
            f["date"],
            f"{f['train_len']:,}",
        ]
        minutes = f"{f['train_seconds'] / 60:.0f}" + (" (last stage)" if f.get("extends") else "")
        row += [minutes, f"{f['lm_loss']:.3f}", f"{f['answer_loss']:.3f}"]
        for length in lengths:
            r = results.get(f"{n}@{length}")
            earlier = r is not None and (r.get("source") or r.get("checkpoint")) != identity(f)
            row.append(cell_text(r) + (" †" if earlier else ""))
        rows.append(row)
    names = list(every)
    header = ["model", "params", "trained", "training length", "train min", "final LM loss", "final answer loss"]
    header += [f"{length:,} tokens" for length in lengths]
    setting = "`forget_init = 1e-5`, `max_grad_norm = 4`" if f0["long_context"] else "the defaults"
    machines = "; ".join(sorted({every[n]["machine"] for n in names}))
    doc = (
        f"Machine: {machines}. Trained at {f0['train_len']:,} tokens, {f0['steps']} steps of "
        f"{f0['batch']} sequences, width {f0['dim']}, window {f0['window']}, answer loss weight "
        f"{f0.get('answer_weight', 1.0):g}{curriculum_text(f0)}, memory setting: {setting}. "
        "Commands: `python -m bench.needle_curve train`, `... evaluate`, `... publish` "
        "(runs kept in docs/needle_curve.json). "
        + (
            "Rows for models trained further (`publish --also`) are named by their stages; beside the name, "
            "how their first stage differs from the recipe above; their minutes are the last stage's. "
            if staged_facts
            else ""
        )
        + "Cells: exact-match % / % of the value's characters right, by place (samples); '-' = not run; "
        "† = measured on an earlier training of the same name.\n\n"
        f"{table(header, rows)}\n\n![needle accuracy vs context length](needle-curve.png)\n"
    )
    doc += by_kind(results, names, lengths, DEPTHS)
    doc += filler_table(cells, names)
    doc += forgetting_table(stored.get("forgetting", {}), names)
    train_lens = sorted({f["train_len"] for f in every.values()})
    publish(
        doc, "results.md", "needle-curve", not a.no_write, lambda path: plot(results, names, lengths, train_lens, path)
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["train", "evaluate", "forgetting", "drift", "publish"])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default=OUT, help="checkpoints (and results.json, if not the default folder)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    # training
    # The recipe that learns to retrieve on 2 cores (docs/results.md): short sequences, many
    # steps, a small window, the answer loss weighted twice. 300 steps of 8 x 2,048 tokens
    # (window 64, weight 1) learned no retrieval at all, with or without --curriculum.
    p.add_argument("--steps", type=int, default=3500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train-len", type=int, default=256)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument(
        "--memory-heads", type=int, default=4, help="memory heads (of dim / this many dimensions each; 4: 16 each)"
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--needle-frac", type=float, default=0.75)
    p.add_argument(
        "--distractors-from",
        type=int,
        default=512,
        help="the shortest training document with distractor needles (512: none at the default --train-len 256)",
    )
    p.add_argument("--distractors-after", type=int, default=0, help="the first step that trains with distractors")
    p.add_argument(
        "--extend-from",
        help="continue from the checkpoints in this folder (a length extension: pass a longer --train-len)",
    )
    p.add_argument(
        "--carry",
        type=int,
        default=1,
        help="streams of this many training sequences per row: the caches carried from one step to the next "
        "(the memory reads up to carry x --train-len tokens), the gradient within one sequence",
    )
    p.add_argument(
        "--warm",
        type=int,
        default=1,
        help="start each batch after 0 to this many minus one training lengths of plain stories, read without "
        "gradients (the memory meets the needles after a long haystack)",
    )
    p.add_argument(
        "--warm-stream",
        action="store_true",
        help="--warm N from one background stream of stories per row, read one training length further each step "
        "and restarted every N steps (one piece read a step, however long the warm-up; the state read by the "
        "weights of up to N - 1 steps before)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--curriculum", type=float, default=0.0, help="grow the longest needle document over this fraction of the steps"
    )
    p.add_argument("--answer-weight", type=float, default=2.0, help="weight of the answer-token loss")
    p.add_argument("--no-long-context", dest="long_context", action="store_false", help="train with the defaults")
    # evaluation
    p.add_argument("--lengths", type=int, nargs="*", help=f"default: the training length, then {LENGTHS}")
    p.add_argument("--samples", type=int, default=20, help="documents per length up to 65,536 tokens")
    p.add_argument("--samples-long", type=int, default=3, help="documents per length beyond 65,536 tokens")
    p.add_argument("--full-max", type=int, default=65536, help="longest context full attention is asked at")
    p.add_argument(
        "--haystack", choices=["stories", "repeat"], default="stories", help="held-out stories, or one passage repeated"
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="LABEL=MODEL:FILE[,FILE...]",
        help="publish: a row for MODEL trained in another --out, from its results.json (or copies); "
        "several files of one training run join; repeat for more rows",
    )
    p.add_argument("--no-write", action="store_true")
    return p


def main() -> None:
    a = parser().parse_args()
    commands = dict(
        train=cmd_train, evaluate=cmd_evaluate, forgetting=cmd_forgetting, drift=cmd_drift, publish=cmd_publish
    )
    commands[a.command](a)


if __name__ == "__main__":
    main()
