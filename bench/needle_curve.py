"""Needle in a haystack far past the training length: small MAC, MAG, MAL and LMM models and
the sliding-window and full-attention baselines, trained on CPU at --train-len tokens on the
embedded corpus mixed with needle documents, then asked for the needle at the training
length and at 4K to 1M tokens.

    python -m bench.needle_curve train             # every model; checkpoints in outputs/needle_curve/
    python -m bench.needle_curve evaluate          # every trained model at every length; docs/needle_curve.json
    python -m bench.needle_curve forgetting        # each memory head's half-life over held-out text
    python -m bench.needle_curve publish           # table + plot into docs/results.md
    python -m bench.needle_curve train --variants MAG --steps 20 --out /tmp/nc   # smoke

Models (bench/small_models.py): 2 layers of one block type, width --dim, 4 heads, attention
window and MAC segment --window, parameters matched to the MAC model by the FFN width.
Training: --steps AdamW steps of --batch sequences of --train-len tokens (default 3,500
steps of 16 x 256, window 32). Three quarters of the sequences (--needle-frac) are needle
documents back to back (titans_plugin/evals/needles.py: passkey, number or uuid-like value,
up to 3 distractor needles in documents of 512 tokens or more, needle anywhere, haystack
from the training stories, lengths log-uniform from 96 tokens to the training length, or
with --curriculum to a limit that grows with the steps), each followed by its answer; the
rest are plain corpus text. Loss: next-token loss over every token, plus --answer-weight
times the loss on the answer tokens (so the few answer tokens are not drowned by the text).
With --carry N each row is a stream of N consecutive sequences: the caches are carried from
one step to the next, detached (truncated backpropagation), so the memory learns to retrieve
after reading up to N x --train-len tokens, while every needle stays within --train-len
tokens of its question. With --warm N each batch starts instead from the caches left by 0 to
N - 1 training lengths of plain stories (drawn per batch), read without gradients; with
--warm-stream too, from a background stream of stories that reads one training length a step
and restarts every N steps (cheaper at large N; the state is read by slightly older weights).

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
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
import torch.nn.functional as F

from bench.common import machine, publish, read_store, store, table
from bench.small_models import MEMORY_VARIANTS, VARIANTS, matched_args, n_params
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
from titans_plugin.model import TitansModelArgs, TitansTransformer

LENGTHS = [4096, 16384, 65536, 262144, 1048576]  # after each model's training length (retrieval there at all?)
DEPTHS = [0.1, 0.3, 0.5, 0.7, 0.9]
LONG_CONTEXT = {"forget_init": 1e-5, "max_grad_norm": 4.0}  # the recall work's setting
OUT = os.path.join(REPO, "outputs", "needle_curve")
RESULTS = os.path.join(REPO, "docs", "needle_curve.json")
# what makes two models' rows comparable: a row trained otherwise says how, beside its name
RECIPE = ("steps", "batch", "train_len", "window", "dim", "long_context", "curriculum", "answer_weight", "seed", "lr",
          "needle_frac", "extends", "carry", "warm", "warm_stream")  # fmt: skip
TRAIN_STORIES = 4000  # about 1M training tokens of haystack and text
ANSWER_ROOM = 16  # tokens kept after a training prompt for its answer and a full stop
MIN_DOC = 96  # the shortest needle document in training (a code needle and its question fit)
NEEDLE_ROOM = 40  # tokens a training document gives each needle and its question (they take 25-39)


def _args(name: str, a) -> TitansModelArgs:
    overrides = dict(LONG_CONTEXT if a.long_context else {})
    vocab = tokenizer().get_vocab_size()
    return matched_args(
        VARIANTS[name], vocab=vocab, window=a.window, max_len=a.train_len, overrides=overrides, dim=a.dim
    )


def needle_sequence(
    tok, stories: list[int], T: int, rng: random.Random, longest: int | None = None, distractors_from: int = 512
) -> tuple[list[int], list[bool]]:
    """T + 1 tokens of needle documents back to back, each followed by its answer and a full
    stop, and the mask of answer targets. Document lengths are log-uniform from MIN_DOC to
    `longest` (default T): many short documents, where the needle is often within the attention's reach, and
    long ones, where only the memory can carry it; several answers per sequence give more
    retrieval signal per token. The needle is at any depth, so the distances trained
    run from a few tokens to nearly T. Half of the number and code documents of at least
    `distractors_from` tokens carry 1 to 3 distractor needles (other keys), as many as
    the document has room for."""
    seq: list[int] = []
    mask: list[bool] = []
    while T + 1 - len(seq) >= MIN_DOC:
        drawn = int(math.exp(rng.uniform(math.log(MIN_DOC), math.log(longest or T))))
        length = min(drawn, T + 1 - len(seq)) - ANSWER_ROOM
        kind = rng.choice(KINDS)
        # distractors in half of the number and code documents long enough to hold them
        distractors = 0 if kind == "passkey" or length < distractors_from or rng.random() < 0.5 else rng.randint(1, 3)
        distractors = max(0, min(distractors, length // NEEDLE_ROOM - 2))
        doc = make_document(tok, stories, length, rng.random(), kind, rng, distractors)
        at = len(seq) + len(doc.prompt) - 1  # the target index of the first answer token
        seq += doc.prompt + doc.answer_ids + tok.encode(".").ids
        mask += [False] * (at - len(mask)) + [True] * len(doc.answer_ids)
    seq += haystack(stories, T + 1 - len(seq), rng.randrange(len(stories)))
    seq = seq[: T + 1]
    return seq, (mask + [False] * T)[:T]


def longest_document(step: int, a) -> int:
    """The curriculum: the longest needle document at `step`. With --curriculum F it grows
    log-linearly from 2 x MIN_DOC to the training length over the first fraction F of the
    steps (short documents first: many answers per sequence, the needle a few windows
    back, where the recall suite's models learn to retrieve); without it, the training length."""
    start, end = 2 * MIN_DOC, a.train_len
    if a.curriculum <= 0 or start >= end:
        return end
    progress = min(1.0, step / (a.curriculum * a.steps))
    return int(math.exp(math.log(start) + progress * (math.log(end) - math.log(start))))


def training_batch(
    tok, stories: list[int], a, rng: random.Random, step: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """inputs [B, T], targets [B, T], and the mask of answer targets [B, T]: a fraction
    --needle-frac of the rows are needle documents, the rest plain corpus text."""
    T, rows, answers = a.train_len, [], []
    for _ in range(a.batch):
        if rng.random() < a.needle_frac:
            # distractors only from step --distractors-after on (a document too short for them otherwise)
            distractors_from = a.distractors_from if step >= a.distractors_after else a.train_len + 1
            seq, mask = needle_sequence(tok, stories, T, rng, longest_document(step, a), distractors_from)
        else:
            start = rng.randrange(len(stories) - T - 1)
            seq, mask = stories[start : start + T + 1], [False] * T
        rows.append(seq)
        answers.append(mask)
    x = torch.tensor(rows)
    return x[:, :-1], x[:, 1:], torch.tensor(answers)


@torch.no_grad()
def read_stories(model: TitansTransformer, stories: list[int], a, rng: random.Random, caches: list | None) -> list:
    """The caches after every row has read one more training length of plain stories, each
    row from its own place in them."""
    starts = [rng.randrange(len(stories) - a.train_len) for _ in range(a.batch)]
    return model.forward_cached(torch.tensor([stories[s : s + a.train_len] for s in starts]), caches)[1]


def warm_caches(model: TitansTransformer, stories: list[int], a, rng: random.Random) -> list | None:
    """--warm N: the caches after each row has read the same number of training lengths
    (0 to N - 1, drawn) of plain stories: the state a needle meets deep in a long
    haystack, which training from empty caches never shows."""
    caches = None
    for _ in range(rng.randrange(a.warm)):
        caches = read_stories(model, stories, a, rng, caches)
    return caches


def train(job: tuple) -> dict:
    """Train one model, save its weights and facts. Runs in a worker process."""
    name, a = job
    torch.set_num_threads(1)
    tok = tokenizer()
    stories = story_ids(tok, "train", TRAIN_STORIES)
    args = _args(name, a)
    torch.manual_seed(a.seed)
    model = TitansTransformer(args)
    start = extend(model, name, a)
    model.cover_positions(max(a.carry, a.warm) * a.train_len)  # a carried or warmed stream's positions run on
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    rng = random.Random(a.seed + 1)
    t0, log, caches, background = time.perf_counter(), [], None, None
    for step in range(a.steps):
        x, y, answer = training_batch(tok, stories, a, rng, step)
        if a.carry > 1:  # each row continues its stream: the memory has read up to carry x train_len tokens
            logits, caches = model.forward_stream(x, None if step % a.carry == 0 else caches)
            logits = logits.float()
        elif a.warm > 1 and a.warm_stream:  # a background stream, one length further each step
            background = None if step % a.warm == 0 else background
            logits, _ = model.forward_stream(x, background)
            logits = logits.float()
            background = read_stories(model, stories, a, rng, background)
        elif a.warm > 1:  # the batch starts after 0 to warm - 1 training lengths of stories, read without a graph
            logits, _ = model.forward_stream(x, warm_caches(model, stories, a, rng))
            logits = logits.float()
        else:
            logits = model(x).float()
        lm = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        ans = F.cross_entropy(logits[answer], y[answer]) if answer.any() else logits.new_zeros(())
        loss = lm + a.answer_weight * ans
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        log.append((lm.item(), ans.item()))
        if step % 50 == 0 or step == a.steps - 1:
            longest = longest_document(step, a)
            print(f"{name} step {step}: lm {lm.item():.3f} answer {ans.item():.3f} (docs <= {longest})", flush=True)
    seconds = time.perf_counter() - t0
    tail = log[-20:]
    facts = dict(
        name=name,
        params=n_params(args),
        train_seconds=seconds,
        steps=a.steps,
        batch=a.batch,
        train_len=a.train_len,
        window=a.window,
        dim=a.dim,
        long_context=a.long_context,
        curriculum=a.curriculum,
        answer_weight=a.answer_weight,
        seed=a.seed,
        lr=a.lr,
        needle_frac=a.needle_frac,
        carry=a.carry,
        warm=a.warm,
        warm_stream=a.warm_stream,
        distractors_from=a.distractors_from,
        distractors_after=a.distractors_after,
        extends=start,
        lm_loss=sum(lm for lm, _ in tail) / len(tail),
        answer_loss=sum(x for _, x in tail) / len(tail),
        date=time.strftime("%Y-%m-%d"),
        machine=machine(dated=False),
    )
    os.makedirs(a.out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(a.out, f"{_file(name)}.pt"))
    with open(os.path.join(a.out, f"{_file(name)}.json"), "w") as f:
        json.dump(facts, f, indent=1)
    return facts


def extend(model: TitansTransformer, name: str, a) -> str | None:
    """With --extend-from DIR: start from the model trained in DIR (its weights; the optimizer
    and warm-up start afresh), typically at a longer --train-len than it was trained at. Returns
    what it started from, for the facts; None without the option."""
    if not a.extend_from:
        return None
    base = os.path.join(a.extend_from, _file(name))
    if not os.path.exists(base + ".pt"):
        raise SystemExit(f"--extend-from {a.extend_from}: no {_file(name)}.pt there; train {name} into it first")
    with open(base + ".json") as f:
        source = json.load(f)
    for key in ("window", "dim", "long_context"):  # the architecture must be the checkpoint's
        if source[key] != getattr(a, key):
            said = f"--{key.replace('_', '-')} {getattr(a, key)}"
            raise SystemExit(f"--extend-from {a.extend_from}: {name} was trained with {key} {source[key]}, not {said}")
    model.load_state_dict(torch.load(base + ".pt", weights_only=True))
    return f"{source['steps']} steps at {source['train_len']} tokens ({identity(source)})"


def _file(name: str) -> str:
    return name.lower().replace(" ", "_")


def load(name: str, a) -> tuple[TitansTransformer, dict]:
    with open(os.path.join(a.out, f"{_file(name)}.json")) as f:
        facts = json.load(f)
    for key in ("train_len", "window", "dim", "long_context"):
        setattr(a, key, facts[key])
    model = TitansTransformer(_args(name, a))
    model.load_state_dict(torch.load(os.path.join(a.out, f"{_file(name)}.pt"), weights_only=True))
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


def cell_key(name: str, length: int, haystack: str = "stories") -> str:
    """Where a cell is stored: the stories' cells as name@length, the others with their haystack."""
    return f"{name}@{length}" + ("" if haystack == "stories" else f"/{haystack}")


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
        if n not in MEMORY_VARIANTS or not os.path.exists(os.path.join(a.out, f"{_file(n)}.pt")):
            continue
        model, facts = load(n, a)
        lives = sorted(half_lives(model, tokens, facts["train_len"]))
        r = dict(name=n, tokens=FORGET_TOKENS, half_lives=lives, date=time.strftime("%Y-%m-%d"))
        store(_results_path(a), "forgetting", n, r)
        print(f"{n}: memory heads' half-lives {', '.join(f'{h:,.0f}' for h in lives)} tokens", flush=True)


def _results_path(a) -> str:
    return RESULTS if os.path.abspath(a.out) == os.path.abspath(OUT) else os.path.join(a.out, "results.json")


def _checkpoint_facts(name: str, a) -> dict:
    base = os.path.join(a.out, _file(name))
    with open(base + ".json") as f:
        facts = json.load(f)
    if "date" not in facts:  # trained before the facts carried their date: the checkpoint's, said so
        facts["date"] = time.strftime("%Y-%m-%d", time.localtime(os.path.getmtime(base + ".pt")))
        facts["machine"] = machine(dated=False)
        facts["inferred"] = "date from the checkpoint file's time, machine from the machine that evaluated it"
    return facts


def identity(facts: dict) -> str:
    """Which training run a model's facts (or a cell measured on it) belong to: a cell whose
    identity differs from its row's model was measured on an earlier training of the name."""
    return facts.get("source") or f"trained {facts['date']} in {facts['train_seconds']:.0f} s"


def cmd_train(a) -> None:
    if a.carry < 1 or a.warm < 1 or (a.carry > 1 and a.warm > 1):
        raise SystemExit(f"--carry {a.carry} --warm {a.warm}: each at least 1, and at most one of them above 1")
    if a.warm_stream and a.warm < 2:
        raise SystemExit(f"--warm-stream reads a background stream for --warm N with N >= 2, not --warm {a.warm}")
    with ProcessPoolExecutor(a.workers) as pool:
        for done in as_completed([pool.submit(train, (n, a)) for n in a.variants]):
            facts = done.result()
            store(_results_path(a), "models", facts["name"], facts)  # as each finishes
            print(json.dumps(facts), flush=True)


def cmd_evaluate(a) -> None:
    stored = read_store(_results_path(a))
    models = dict(stored.get("models", {}))
    for n in a.variants:
        if os.path.exists(os.path.join(a.out, f"{_file(n)}.json")) and n not in models:
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
        if missing and not os.path.exists(os.path.join(a.out, f"{_file(n)}.pt")):
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


def cmd_publish(a) -> None:
    stored = read_store(_results_path(a))
    facts, cells = stored.get("models", {}), stored.get("cells", {})
    results = {k: r for k, r in cells.items() if r.get("haystack", "stories") == "stories"}
    names = [n for n in a.variants if n in facts]
    if not names:
        raise SystemExit(f"no trained models in {_results_path(a)}: run `python -m bench.needle_curve train` first")
    f0 = facts[names[0]]
    lengths = sorted({r["length"] for r in results.values() if r["name"] in names})
    rows = []
    for n in names:
        f = facts[n]
        differs = [f"{k} {f.get(k)}" for k in RECIPE if k in f and k in f0 and f[k] != f0[k]]
        row = [n + (f" ({', '.join(differs)})" if differs else ""), f"{f['params']:,}", f["date"]]
        row += [f"{f['train_seconds'] / 60:.0f}", f"{f['lm_loss']:.3f}", f"{f['answer_loss']:.3f}"]
        for length in lengths:
            r = results.get(f"{n}@{length}")
            earlier = r is not None and (r.get("source") or r.get("checkpoint")) != identity(f)
            row.append(_cell(r) + (" †" if earlier else ""))
        rows.append(row)
    header = ["model", "params", "trained", "train min", "final LM loss", "final answer loss"]
    header += [f"{length:,} tokens ({length // f0['train_len']}x)" for length in lengths]
    setting = "`forget_init = 1e-5`, `max_grad_norm = 4`" if f0["long_context"] else "the defaults"
    machines = "; ".join(sorted({facts[n]["machine"] for n in names}))
    doc = (
        f"Machine: {machines}. Trained at {f0['train_len']:,} tokens, {f0['steps']} steps of "
        f"{f0['batch']} sequences, width {f0['dim']}, window {f0['window']}, answer loss weight "
        f"{f0.get('answer_weight', 1.0):g}{_curriculum(f0)}, memory setting: {setting}. "
        "Commands: `python -m bench.needle_curve train`, `... evaluate`, `... publish` "
        "(runs kept in docs/needle_curve.json). "
        "Cells: exact-match % / % of the value's characters right, by place (samples); '-' = not run; "
        "† = measured on an earlier training of the same name.\n\n"
        f"{table(header, rows)}\n\n![needle accuracy vs context length](needle-curve.png)\n"
    )
    doc += by_kind(results, names, lengths)
    doc += filler_table(cells, names)
    doc += forgetting_table(stored.get("forgetting", {}), names)
    publish(doc, "results.md", "needle-curve", not a.no_write, lambda path: plot(results, names, lengths, f0, path))


def filler_table(cells: dict, names) -> str:
    """The cells asked with the repeated filler passage as the haystack (--haystack repeat)."""
    filler = {k: r for k, r in cells.items() if r.get("haystack") == "repeat"}
    lengths = sorted({r["length"] for r in filler.values() if r["name"] in names})
    rows = [[n] + [_cell(filler.get(cell_key(n, L, "repeat"))) for L in lengths] for n in names]
    rows = [row for row in rows if any(c != "-" for c in row[1:])]
    if not rows:
        return ""
    header = ["model"] + [f"{L:,} tokens" for L in lengths]
    intro = (
        "The same needles in a haystack of one passage repeated (the passkey task's noise, `python -m "
        "bench.needle_curve evaluate --haystack repeat`), exact % / characters % (samples):"
    )
    return f"\n{intro}\n\n{table(header, rows)}\n"


def forgetting_table(forgetting: dict, names) -> str:
    """Each memory model's heads' half-lives (`forgetting` step), as quantiles."""
    rows = []
    for n in names:
        r = forgetting.get(n)
        if r is None:
            continue
        lives = sorted(r["half_lives"])
        longer = sum(h > r["tokens"] for h in lives)
        cells = [f"{h:,.0f}" for h in (lives[0], statistics.median(lives), lives[-1])]
        rows.append([n, len(lives), *cells, f"{longer} of {len(lives)}"])
    if not rows:
        return ""
    tokens = next(iter(forgetting.values()))["tokens"]
    header = ["model", "memory heads", "shortest", "median", "longest", f"longer than {tokens:,}"]
    intro = (
        f"The memory heads' half-lives in tokens by forgetting alone (`python -m bench.needle_curve forgetting`: "
        f"ln 2 over the mean of -log(1 - alpha) while reading {tokens:,} tokens of held-out stories):"
    )
    return f"\n{intro}\n\n{table(header, rows)}\n"


def breakdown(results: dict, names, lengths, field: str, groups, score: str) -> list[list[str]]:
    """Rows of a model's cells split by a recorded per-sample field (`kinds`, `depths`):
    per group, the % of `score` (`hits` or `characters`), "-" where none was recorded."""
    rows = []
    for n in names:
        cells = [results.get(f"{n}@{length}") for length in lengths]
        if not any(r and field in r for r in cells):
            continue
        row = [n]
        for r in cells:
            if not (r and field in r):
                row.append("-")
                continue
            pct = []
            for group in groups:
                values = [v for v, g in zip(r[score], r[field], strict=True) if g == group]
                pct.append(f"{100 * sum(values) / len(values):.0f}" if values else "-")
            row.append(" / ".join(pct))
        rows.append(row)
    return rows


def by_kind(results: dict, names, lengths) -> str:
    """Exact match per needle kind, and characters right per depth, for the cells that
    recorded each sample's kind and depth: does a model fail on every kind, or only on the
    long values; does it fail with the needle's distance, or with the document's length?"""
    header = ["model"] + [f"{length:,} tokens" for length in lengths]
    text = ""
    kinds = breakdown(results, names, lengths, "kinds", KINDS, "hits")
    if kinds:
        intro = f"Exact match % by needle kind ({' / '.join(KINDS)}), where each sample's kind was recorded:"
        text += f"\n{intro}\n\n{table(header, kinds)}\n"
    depths = breakdown(results, names, lengths, "depths", DEPTHS, "characters")
    if depths:
        order = " / ".join(f"{d:.0%}" for d in DEPTHS)
        intro = (
            f"Characters right % by the needle's depth in the haystack ({order}; 90% is nearest the question), "
            "where each sample's depth was recorded:"
        )
        text += f"\n{intro}\n\n{table(header, depths)}\n"
    return text


def _curriculum(facts: dict) -> str:
    fraction = facts.get("curriculum", 0.0)
    return f", documents growing over the first {fraction:.0%} of the steps" if fraction else ""


def summary(r: dict) -> tuple[float, float | None, int]:
    """exact-match %, characters-right % (None if not measured) and the sample count of one
    cell: from its per-sample lists, or from the counts of a cell stored without them."""
    if "hits" in r:
        chars = r.get("characters")
        return 100 * sum(r["hits"]) / len(r["hits"]), 100 * sum(chars) / len(chars) if chars else None, len(r["hits"])
    return 100 * r["exact"] / r["samples"], r.get("characters_pct"), r["samples"]


def _cell(r: dict | None) -> str:
    """exact % / characters % (samples)."""
    if r is None:
        return "-"
    exact, chars, n = summary(r)
    return f"{exact:.0f}{'' if chars is None else f' / {chars:.0f}'} ({n})"


def plot(results: dict, names, lengths, f0: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for n in names:
        pts = [(L, results[f"{n}@{L}"]) for L in lengths if f"{n}@{L}" in results]
        if not pts:
            continue
        xs = [L for L, _ in pts]
        (line,) = ax.plot(xs, [summary(r)[0] for _, r in pts], marker="o", label=n)
        chars = [(L, c) for L, r in pts if (c := summary(r)[1]) is not None]
        if chars:  # partial credit, dashed, in the model's colour
            xs, ys = [L for L, _ in chars], [c for _, c in chars]
            ax.plot(xs, ys, ls="--", marker=".", color=line.get_color(), alpha=0.7)
    ax.axvline(f0["train_len"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{L >> 20}M" if L >= 2**20 else f"{L >> 10}K" if L >= 1024 else str(L) for L in lengths])
    ax.set_xlabel(f"context length (tokens); dotted: training length {f0['train_len']}")
    ax.set_ylabel("needle exact match % (dashed: characters right %)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["train", "evaluate", "forgetting", "publish"])
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
    p.add_argument("--no-write", action="store_true")
    return p


def main() -> None:
    a = parser().parse_args()
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "forgetting": cmd_forgetting, "publish": cmd_publish}
    commands[a.command](a)


if __name__ == "__main__":
    main()
