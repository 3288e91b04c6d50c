"""Single-needle-in-a-haystack (S-NIAH, passkey style) prompts and their scoring.

The haystack is the embedded corpus's validation stories (cycled when shorter than the
length); the needle, " The pass key is <word>. Remember it. <word> is the pass key.", sits
at a relative depth of the haystack; the prompt ends with " What is the pass key? The pass
key is".

The pass keys are words that the tokenizer encodes as one token, so one forward pass scores
two things: exact (the argmax over the whole vocabulary is the key) and ranked (the key has
the highest logit among all candidate keys; chance = 1 / number of candidates). The prompt
is fed in pieces through the model's incremental path (forward_cached), so memory stays
bounded by the pieces plus the attention caches, whatever the length.
"""

import gzip
import json
import os

import torch

from titans_plugin.data.paths import CORPUS_FILE, TOKENIZER_DIR

KEY_WORDS = ["red", "blue", "green", "yellow", "apple", "river", "stone", "moon", "cake", "bird",
             "boat", "tree", "star", "fish", "cat", "dog", "hat", "door", "rain", "ball"]  # fmt: skip
NEEDLE = " The pass key is{key}. Remember it.{key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def tokenizer():
    """The embedded corpus's tokenizer."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))


def haystack_ids(tok, n_tokens: int) -> list[int]:
    texts = []
    with gzip.open(CORPUS_FILE, "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "validation":
                texts.append(row["text"])
            if len(texts) >= 400:
                break
    ids = tok.encode(" ".join(texts)).ids
    return (ids * (n_tokens // len(ids) + 1))[:n_tokens]


def single_token_keys(tok) -> dict[str, int]:
    """The candidate keys: every KEY_WORDS entry that is one token after a space."""
    keys = {}
    for w in KEY_WORDS:
        ids = tok.encode(" " + w).ids
        if len(ids) == 1:
            keys[w] = ids[0]
    if len(keys) < 2:
        raise ValueError("fewer than two candidate keys are single tokens for this tokenizer")
    return keys


def build_prompt(tok, hay: list[int], length: int, depth: float, key: str) -> list[int]:
    """`length` tokens: haystack with the needle for `key` at relative `depth`, then the question."""
    needle = tok.encode(NEEDLE.format(key=" " + key)).ids
    question = tok.encode(QUESTION).ids
    n_hay = length - len(needle) - len(question)
    at = int(depth * n_hay)
    return hay[:at] + needle + hay[at:n_hay] + question


def score(logits: torch.Tensor, keys: dict[str, int], key: str) -> tuple[int, int]:
    """(exact, ranked) for the logits after the question: exact when the argmax over the
    vocabulary is the key's token, ranked when the key beats every other candidate key."""
    cand = torch.tensor(list(keys.values()))
    exact = int(logits.argmax().item() == keys[key])
    ranked = int(cand[logits[cand].argmax()].item() == keys[key])
    return exact, ranked


@torch.no_grad()
def read_prompt(model, ids: list[int], piece: int) -> tuple[torch.Tensor, float]:
    """Logits after the last prompt token, and the mean next-token loss over the prompt
    (on the trained distribution it shows the checkpoint loaded; its trend with length is
    the model's long-context language-model quality)."""
    tokens = torch.tensor([ids])
    caches, nll = None, 0.0
    for start in range(0, tokens.shape[1], piece):
        logits, caches = model.forward_cached(tokens[:, start : start + piece], caches)
        nxt = tokens[0, start + 1 : start + piece + 1]
        nll += torch.nn.functional.cross_entropy(logits[0, : len(nxt)].float(), nxt, reduction="sum").item()
    return logits[0, -1], nll / (tokens.shape[1] - 1)


def run_cell(model, tok, keys, hay, length: int, depth: float, key: str, piece: int) -> tuple[int, int, float]:
    """(exact, ranked, prompt loss) for one key at one length and depth."""
    logits, loss = read_prompt(model, build_prompt(tok, hay, length, depth, key), piece)
    return (*score(logits, keys, key), loss)
