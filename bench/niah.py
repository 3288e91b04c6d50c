"""Single-needle-in-a-haystack (S-NIAH, passkey style) on any trained torchtitan checkpoint.

    .venv/bin/python bench/niah.py --config train_configs/debug_mac.toml \
        --checkpoint outputs/debug_mac/checkpoint/step-400 --lengths 1024 4096 16384 65536

The model is built from the TOML's [model] flavor and [titans] section and loaded from the
DCP folder (model weights only; optimizer and dataloader entries are ignored). The haystack
is the embedded corpus's validation stories (cycled when shorter than the length); the
needle, " The pass key is <word>. Remember it. <word> is the pass key.", sits at a relative
depth of the haystack; the prompt ends with " What is the pass key? The pass key is".

The pass keys are words that the tokenizer encodes as one token, so one forward pass scores
two things: exact (the argmax over the whole vocabulary is the key) and ranked (the key has
the highest logit among all candidate keys; chance = 1 / number of candidates). The prompt
is fed in pieces through the model's incremental path (forward_cached), so memory stays
bounded by the pieces plus the attention caches, whatever the length.
"""

import argparse
import copy
import gzip
import json
import os
import time

import tomllib
import torch
from common import machine, publish, table

from titans_plugin.config import TitansConfig
from titans_plugin.data.paths import CORPUS_FILE, TOKENIZER_DIR
from titans_plugin.model import TitansTransformer

KEY_WORDS = ["red", "blue", "green", "yellow", "apple", "river", "stone", "moon", "cake", "bird",
             "boat", "tree", "star", "fish", "cat", "dog", "hat", "door", "rain", "ball"]
NEEDLE = " The pass key is{key}. Remember it.{key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def build_model(config_path: str, checkpoint: str, max_len: int) -> TitansTransformer:
    from titans_plugin.adapter.flavors import TITANS_FLAVORS

    with open(config_path, "rb") as f:
        cfg = tomllib.load(f)
    model_cfg = cfg.get("model", {})
    flavor = model_cfg.get("flavor", "debugmodel")
    if flavor not in TITANS_FLAVORS:
        raise ValueError(f"model.flavor must be one of {sorted(TITANS_FLAVORS)}, got {flavor!r}")
    args = copy.deepcopy(TITANS_FLAVORS[flavor])
    if "titans" in cfg:
        args.titans = TitansConfig(**cfg["titans"])
    args.max_seq_len = max_len
    args.validate()
    model = TitansTransformer(args)
    if checkpoint:
        import torch.distributed.checkpoint as dcp

        state = model.state_dict()
        dcp.load(state, checkpoint_id=checkpoint)
        model.load_state_dict(state)
    return model.eval()


def tokenizer():
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
    keys = {}
    for w in KEY_WORDS:
        ids = tok.encode(" " + w).ids
        if len(ids) == 1:
            keys[w] = ids[0]
    if len(keys) < 2:
        raise ValueError("fewer than two candidate keys are single tokens for this tokenizer")
    return keys


@torch.no_grad()
def read_prompt(model, ids: list[int], piece: int) -> tuple[torch.Tensor, float]:
    """Logits after the last prompt token, and the mean next-token loss over the prompt
    (on the trained distribution it shows the checkpoint loaded; its trend with length is
    the model's long-context language-model quality)."""
    tokens = torch.tensor([ids])
    caches, nll = None, 0.0
    for start in range(0, tokens.shape[1], piece):
        logits, caches = model.forward_cached(tokens[:, start:start + piece], caches)
        nxt = tokens[0, start + 1:start + piece + 1]
        nll += torch.nn.functional.cross_entropy(logits[0, :len(nxt)].float(), nxt, reduction="sum").item()
    return logits[0, -1], nll / (tokens.shape[1] - 1)


def run_cell(model, tok, keys, hay, length: int, depth: float, key: str, piece: int):
    needle = tok.encode(NEEDLE.format(key=" " + key)).ids
    question = tok.encode(QUESTION).ids
    n_hay = length - len(needle) - len(question)
    at = int(depth * n_hay)
    ids = hay[:at] + needle + hay[at:n_hay] + question
    logits, loss = read_prompt(model, ids, piece)
    cand = torch.tensor(list(keys.values()))
    exact = int(logits.argmax().item() == keys[key])
    ranked = int(cand[logits[cand].argmax()].item() == keys[key])
    return exact, ranked, loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", default="", help="DCP step folder; empty = untrained weights")
    p.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096, 16384, 65536])
    p.add_argument("--depths", type=float, nargs="*", default=[0.1, 0.5, 0.9])
    p.add_argument("--samples", type=int, default=4, help="keys per (length, depth) cell")
    p.add_argument("--piece", type=int, default=2048)
    p.add_argument("--write", action="store_true", help="write the table into docs/results.md")
    a = p.parse_args()
    torch.manual_seed(0)
    model = build_model(a.config, a.checkpoint, max(a.lengths))
    tok = tokenizer()
    keys = single_token_keys(tok)
    hay = haystack_ids(tok, max(a.lengths))
    rows = []
    for length in a.lengths:
        row, t0, every = [length], time.perf_counter(), []
        for depth in a.depths:
            res = [run_cell(model, tok, keys, hay, length, depth, k, a.piece) for k in list(keys)[:a.samples]]
            every += res
            row.append(f"{100 * sum(r[0] for r in res) / len(res):.0f} / {100 * sum(r[1] for r in res) / len(res):.0f}")
        row.append(f"{sum(r[2] for r in every) / len(every):.3f}")
        row.append(f"{(time.perf_counter() - t0) / (len(a.depths) * a.samples):.1f}")
        rows.append(row)
        print(row, flush=True)
    text = table(["length", *[f"depth {d:.0%}: exact / ranked %" for d in a.depths], "prompt loss", "s per sample"], rows)
    doc = (f"Checkpoint `{a.checkpoint or '(untrained)'}`, config `{a.config}`; {a.samples} keys per cell, "
           f"{len(keys)} candidate keys (ranked chance {100 / len(keys):.0f}%). Machine: {machine()}.\n"
           f"Command: `.venv/bin/python bench/niah.py --config {a.config} --checkpoint {a.checkpoint} "
           f"--lengths {' '.join(map(str, a.lengths))} --depths {' '.join(map(str, a.depths))} "
           f"--samples {a.samples} --write`\n\n{text}\n")
    publish(doc, "results.md", "niah", a.write)


if __name__ == "__main__":
    main()
