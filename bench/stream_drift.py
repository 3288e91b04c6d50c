"""Does a trained torchtitan checkpoint stay good when it reads far past its training length?

    python -m bench.stream_drift --config train_configs/debug_mac.toml \
        --checkpoint outputs/debug_mac/checkpoint/step-400 --name "MAC, default"

Reads 65,536 tokens of the embedded corpus's held-out stories, whatever the job trained on
(each one a document as torchtitan 0.2.2's trainer reads it: BOS, text, EOS, the targets
running on across documents), in pieces of the job's `training.seq_len`, through
the incremental path, and prints the next-token loss per span read three ways
(bench/needle_drift.py): as one stream, with every memory restarted at each piece (MAG,
MAL, LMM) and with everything restarted. A loss that grows along the stream and not with
the memory restarted is the drift that `titans.carry_memory` trains away
(docs/results.md, "Training from warmed memories"). Each run is stored under its name in
docs/stream_drift.json, and the table of every stored run is written into docs/results.md."""

import argparse
import gzip
import json
import os
import time

import torch

from bench.common import read_store, store, table, write_doc_section
from bench.needle_drift import DRIFT_TOKENS, MODES, SPANS, piece_losses, span_means
from devtools.paths import REPO
from titans_plugin.data.paths import CORPUS_FILE
from titans_plugin.inference.trained import Trained, load_trained

RESULTS = os.path.join(REPO, "docs", "stream_drift.json")
SECTION = "Streamed far past the training length"


def held_out_stream(trained: Trained, n_tokens: int) -> list[int]:
    """`n_tokens` of held-out stories, each encoded as the trainer encodes a document."""
    out: list[int] = []
    with gzip.open(CORPUS_FILE, "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "validation":
                out += trained.tokenizer.encode(row["text"], add_bos=True, add_eos=True)
                if len(out) >= n_tokens:
                    return out[:n_tokens]
    raise ValueError(f"the held-out stories hold {len(out):,} tokens, fewer than {n_tokens:,}")


def measure(trained: Trained) -> dict:
    """Per mode, the mean loss of each of SPANS (None where the mode does not apply)."""
    piece = trained.seq_len
    if SPANS[0][1] % piece:
        raise ValueError(f"training.seq_len={piece} must divide {SPANS[0][1]:,}, the first span read")
    tokens = held_out_stream(trained, DRIFT_TOKENS + 1)
    spans = {}
    for mode in MODES:
        losses = piece_losses(trained.model, tokens, piece, mode)
        spans[mode] = None if losses is None else span_means(losses, piece)
    titans = trained.model.model_args.titans
    layers = "".join(trained.model.layer_types)
    return dict(piece=piece, tokens=DRIFT_TOKENS, spans=spans, layers=layers, carry_memory=titans.carry_memory)


def render(stored: dict) -> str:
    header = ["run", "read", *(f"tokens {lo:,}-{hi:,}" for lo, hi in SPANS)]
    rows = []
    runs = sorted(stored.items(), key=lambda kv: (kv[1]["layers"], kv[1]["carry_memory"], kv[0]))
    for name, r in runs:
        for mode in MODES:  # a mode that does not apply (MAC's memory restarted) has no row
            if r["spans"][mode] is not None:
                rows.append([name, mode, *(f"{x:.3f}" for x in r["spans"][mode])])
    commands = "\n".join(f"- {name}: `{r['command']}` ({r['date']})" for name, r in runs)
    return f"{table(header, rows)}\n\nCommands (2 CPU cores):\n\n{commands}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the job's TOML config (torchtitan 0.2.2)")
    p.add_argument("--checkpoint", required=True, help="a DCP step folder, e.g. outputs/<job>/checkpoint/step-400")
    p.add_argument("--name", required=True, help="the run's row in the table")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="a torchtitan override of the config, e.g. --set=--titans.carry_memory=4 (repeatable)",
    )
    p.add_argument("--no-write", action="store_true", help="print only: store nothing, write no docs")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # small models: more threads only contend
    trained = load_trained(a.config, a.checkpoint, overrides=tuple(a.set))
    r = measure(trained)
    r.update(
        command=f"python -m bench.stream_drift --config {a.config} --checkpoint {a.checkpoint} --name {a.name!r}"
        + "".join(f" --set={o}" for o in a.set),
        date=time.strftime("%Y-%m-%d"),
    )
    print(render({a.name: r}))
    if not a.no_write:
        store(RESULTS, "runs", a.name, r)
        write_doc_section("results.md", SECTION, render(read_store(RESULTS)["runs"]))


if __name__ == "__main__":
    main()
