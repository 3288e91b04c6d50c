"""Single-needle documents in the style of RULER's S-NIAH tasks, on the embedded corpus.

A document is a haystack of corpus stories with one needle at a relative depth, optionally
with distractor needles elsewhere, and a question at the end; the answer is a multi-token
value read back by greedy decoding and scored by exact match of the whole value.

Three needle kinds (RULER's niah_single_1/2/3 in spirit):
    passkey   " The pass key is 58213. Remember it. 58213 is the pass key."
              " What is the pass key? The pass key is" -> " 58213"
    number    " The special magic number for river is: 4729105."
              " What is the special magic number for river? The special magic number for river is:" -> " 4729105"
    uuid      " The special magic code for river is: 7f3a91c2-e0b4."
              " What is the special magic code for river? The special magic code for river is:" -> " 7f3a91c2-e0b4"
Distractors are needles of the same kind with other key words (and other values); the
passkey kind has a single key and therefore no distractors.

Training documents take their haystack from the corpus's training stories, evaluation
documents from its held-out (validation) stories, so no evaluation haystack was trained on.
"""

import gzip
import json
import random
from dataclasses import dataclass

from titans_plugin.data.paths import CORPUS_FILE

KINDS = ("passkey", "number", "uuid")
KEY_WORDS = ("river", "apple", "stone", "moon", "cake", "bird", "boat", "tree", "star", "fish",
             "door", "rain", "ball", "lamp", "cloud", "bread", "shell", "garden", "window", "hill")  # fmt: skip
_HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Needle:
    text: str  # the sentence hidden in the haystack
    question: str  # what ends the prompt
    answer: str  # what greedy decoding must produce, leading space included


def make_needle(kind: str, rng: random.Random, key: str | None = None) -> Needle:
    """A needle of `kind` with a fresh random value (and `key`, or a random key word)."""
    if kind == "passkey":
        value = str(rng.randrange(10_000, 100_000))
        return Needle(
            f" The pass key is {value}. Remember it. {value} is the pass key.",
            " What is the pass key? The pass key is",
            f" {value}",
        )
    if kind not in ("number", "uuid"):
        raise ValueError(f"needle kind must be one of {KINDS}, got {kind!r}")
    key = key or rng.choice(KEY_WORDS)
    if kind == "number":
        noun, value = "number", str(rng.randrange(1_000_000, 10_000_000))
    else:
        noun = "code"
        value = "".join(rng.choice(_HEX) for _ in range(8)) + "-" + "".join(rng.choice(_HEX) for _ in range(4))
    return Needle(
        f" The special magic {noun} for {key} is: {value}.",
        f" What is the special magic {noun} for {key}? The special magic {noun} for {key} is:",
        f" {value}",
    )


def story_ids(tok, split: str, max_stories: int | None = None) -> list[int]:
    """The corpus's stories of `split` ("train" or "validation"), tokenized and joined."""
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    texts = []
    with gzip.open(CORPUS_FILE, "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == split:
                texts.append(row["text"])
                if max_stories is not None and len(texts) >= max_stories:
                    break
    return tok.encode(" " + " ".join(texts)).ids


# The passkey task's noise (Mohtashami and Jaggi, 2023; RULER's "noise" haystack): one
# passage repeated, so the haystack tells the memory almost nothing new after its first lap.
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def filler_ids(tok, repeats: int = 64) -> list[int]:
    """FILLER repeated, tokenized: a haystack source for haystack() like story_ids()."""
    return tok.encode(" " + " ".join([FILLER] * repeats)).ids


def haystack(stories: list[int], n_tokens: int, start: int) -> list[int]:
    """`n_tokens` of `stories` from `start`, cycling past the end."""
    out: list[int] = []
    at = start % len(stories)
    while len(out) < n_tokens:
        out += stories[at : at + n_tokens - len(out)]
        at = 0
    return out


@dataclass(frozen=True)
class Document:
    prompt: list[int]  # haystack with the needle(s), then the question
    answer: str
    answer_ids: list[int]
    needle_at: int  # the needle's first token in the prompt


def make_document(
    tok,
    stories: list[int],
    length: int,
    depth: float,
    kind: str,
    rng: random.Random,
    distractors: int = 0,
) -> Document:
    """A prompt of exactly `length` tokens: the needle's start at relative `depth` of the
    haystack part, `distractors` needles of the same kind with other keys at random depths,
    and the question last. The haystack starts at a random place in `stories`."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    needle = make_needle(kind, rng)
    key = needle.question.split(" for ")[1].split("?")[0] if kind != "passkey" else None
    others = [] if kind == "passkey" else [k for k in KEY_WORDS if k != key]
    extra = [tok.encode(make_needle(kind, rng, key=k).text).ids for k in rng.sample(others, distractors)]
    needle_ids = tok.encode(needle.text).ids
    question = tok.encode(needle.question).ids
    n_hay = length - len(needle_ids) - len(question) - sum(len(e) for e in extra)
    if n_hay < 0:
        raise ValueError(f"length {length} is too short for a {kind} needle and its question")
    hay = haystack(stories, n_hay, rng.randrange(len(stories)))
    pieces = [(int(depth * n_hay), needle_ids, True)] + [(rng.randrange(n_hay + 1), e, False) for e in extra]
    prompt, needle_at, last = [], -1, 0
    for at, ids, is_needle in sorted(pieces, key=lambda p: p[0]):
        prompt += hay[last:at]
        last = at
        if is_needle:
            needle_at = len(prompt)
        prompt += ids
    prompt += hay[last:] + question
    return Document(prompt, needle.answer, tok.encode(needle.answer).ids, needle_at)


def exact_match(generated: str, answer: str) -> bool:
    """The whole value, and nothing glued to it: " 58213." matches " 58213", " 582134" does not."""
    text, value = generated.strip(), answer.strip()
    return text.startswith(value) and not text[len(value) : len(value) + 1].isalnum()


def characters_right(generated: str, answer: str) -> float:
    """Partial credit: the fraction of the value's characters that the generation has at
    the same place (" b0fd5e00-f7ec" for " b0faeb3b-f7ec": 8 of 13). A model that knows only
    the format scores about its chance of guessing each character (a digit: 1 in 10)."""
    text, value = generated.strip(), answer.strip()
    return sum(a == b for a, b in zip(text, value, strict=False)) / len(value)
