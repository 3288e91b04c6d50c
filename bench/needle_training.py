"""Needle-curve training (bench/needle_curve.py runs it): the models, their training
documents and the training loop, and how a checkpoint is named and told apart.

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
"""

import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F

from bench.common import machine
from bench.small_models import VARIANTS, matched_args, n_params
from titans_plugin.evals.needles import KINDS, haystack, make_document, story_ids
from titans_plugin.evals.niah import tokenizer
from titans_plugin.model import TitansModelArgs, TitansTransformer, caches_to_hold

LONG_CONTEXT = {"forget_init": 1e-5, "max_grad_norm": 4.0}  # the recall work's setting
TRAIN_STORIES = 4000  # about 1M training tokens of haystack and text
ANSWER_ROOM = 16  # tokens kept after a training prompt for its answer and a full stop
MIN_DOC = 96  # the shortest needle document in training (a code needle and its question fit)
NEEDLE_ROOM = 40  # tokens a training document gives each needle and its question (they take 25-39)


# what a checkpoint's weights depend on besides the variant (train_len only sizes positions)
ARCHITECTURE = ("window", "dim", "memory_heads", "long_context")
# facts written before a recipe option existed were trained with its default
FACT_DEFAULTS = {"memory_heads": 4}


def fact(facts: dict, key: str):
    return facts[key] if key in facts else FACT_DEFAULTS[key]


def model_args(name: str, a) -> TitansModelArgs:
    # the FFN width keeps every variant at the default MAC's size (memory_heads included)
    overrides = {**(LONG_CONTEXT if a.long_context else {}), "memory_heads": a.memory_heads}
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
    return caches_to_hold(model.forward_cached(torch.tensor([stories[s : s + a.train_len] for s in starts]), caches)[1])


def warm_caches(model: TitansTransformer, stories: list[int], a, rng: random.Random) -> list | None:
    """--warm N: the caches after each row has read the same number of training lengths
    (0 to N - 1, drawn) of plain stories: the state a needle meets deep in a long
    haystack, which training from empty caches never shows."""
    caches = None
    for _ in range(rng.randrange(a.warm)):
        caches = read_stories(model, stories, a, rng, caches)
    return caches


def check_stream_options(a) -> None:
    """--carry and --warm: each at least 1, at most one of them above 1; --warm-stream with --warm."""
    if a.carry < 1 or a.warm < 1 or (a.carry > 1 and a.warm > 1):
        raise SystemExit(f"--carry {a.carry} --warm {a.warm}: each at least 1, and at most one of them above 1")
    if a.warm_stream and a.warm < 2:
        raise SystemExit(f"--warm-stream reads a background stream for --warm N with N >= 2, not --warm {a.warm}")


class StepCaches:
    """What each training step's forward starts from: empty caches (plain training), the
    row's own stream carried from the last step (--carry N, empty every N steps), a fresh
    warm-up (--warm N) or the background stream of stories (--warm N --warm-stream, which
    reads one training length on after each step's forward and restarts every N steps)."""

    def __init__(self, model: TitansTransformer, stories: list[int], a, rng: random.Random):
        self.model, self.stories, self.a, self.rng = model, stories, a, rng
        self.carried: list | None = None
        self.background: list | None = None

    def start(self, step: int) -> list | None:
        a = self.a
        if a.carry > 1:
            return None if step % a.carry == 0 else self.carried
        if a.warm > 1 and a.warm_stream:
            self.background = None if step % a.warm == 0 else self.background
            return self.background
        if a.warm > 1:
            return warm_caches(self.model, self.stories, a, self.rng)
        return None

    def end(self, caches: list) -> None:
        """After the step's forward, with the caches it ended with (detached)."""
        self.carried = caches if self.a.carry > 1 else None
        if self.a.warm > 1 and self.a.warm_stream:
            self.background = read_stories(self.model, self.stories, self.a, self.rng, self.background)


def train(job: tuple) -> dict:
    """Train one model, save its weights and facts. Runs in a worker process."""
    name, a = job
    check_stream_options(a)
    torch.set_num_threads(1)
    tok = tokenizer()
    stories = story_ids(tok, "train", TRAIN_STORIES)
    args = model_args(name, a)
    torch.manual_seed(a.seed)
    model = TitansTransformer(args)
    start = extend(model, name, a)
    model.cover_positions(max(a.carry, a.warm) * a.train_len)  # a carried or warmed stream's positions run on
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    rng = random.Random(a.seed + 1)
    streams = StepCaches(model, stories, a, rng) if a.carry > 1 or a.warm > 1 else None
    t0, log = time.perf_counter(), []
    for step in range(a.steps):
        x, y, answer = training_batch(tok, stories, a, rng, step)
        if streams is None:
            logits = model(x)
        else:
            logits, caches = model.forward_stream(x, streams.start(step))
            streams.end(caches)
        logits = logits.float()
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
        memory_heads=a.memory_heads,
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
    torch.save(model.state_dict(), os.path.join(a.out, f"{checkpoint_name(name)}.pt"))
    with open(os.path.join(a.out, f"{checkpoint_name(name)}.json"), "w") as f:
        json.dump(facts, f, indent=1)
    return facts


def extend(model: TitansTransformer, name: str, a) -> str | None:
    """With --extend-from DIR: start from the model trained in DIR (its weights; the optimizer
    and warm-up start afresh), typically at a longer --train-len than it was trained at. Returns
    what it started from, for the facts; None without the option."""
    if not a.extend_from:
        return None
    base = os.path.join(a.extend_from, checkpoint_name(name))
    if not os.path.exists(base + ".pt"):
        raise SystemExit(
            f"--extend-from {a.extend_from}: no {checkpoint_name(name)}.pt there; train {name} into it first"
        )
    with open(base + ".json") as f:
        source = json.load(f)
    for key in ARCHITECTURE:  # the architecture must be the checkpoint's
        if fact(source, key) != getattr(a, key):
            said = f"--{key.replace('_', '-')} {getattr(a, key)}"
            raise SystemExit(
                f"--extend-from {a.extend_from}: {name} was trained with {key} {fact(source, key)}, not {said}"
            )
    model.load_state_dict(torch.load(base + ".pt", weights_only=True))
    return f"{source['steps']} steps at {source['train_len']} tokens ({identity(source)})"


def checkpoint_name(name: str) -> str:
    return name.lower().replace(" ", "_")


def identity(facts: dict) -> str:
    """Which training run a model's facts (or a cell measured on it) belong to: a cell whose
    identity differs from its row's model was measured on an earlier training of the name."""
    return facts.get("source") or f"trained {facts['date']} in {facts['train_seconds']:.0f} s"
