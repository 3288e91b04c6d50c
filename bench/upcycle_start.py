"""Where each block type starts when a trained Transformer is converted into it: the
validation loss of the converted model before any training, against the Transformer's.

    .venv/bin/python -m bench.upcycle_start          # ~8 min on 2 cores

The Transformer (train_configs/debug_attention.toml) trains `--pretrain` steps (the same
run as bench.upcycle_quality's); its checkpoint is converted with
`python -m titans_plugin.conversion.upcycle` into each hybrid below, and each is evaluated by
torchtitan on the same 10 held-out batches after one step at learning rate 0 (the weights
do not move: this is the loss of the converted model as written).
"""

import argparse
import math
import os
import tempfile

from bench.common import machine, publish, table
from bench.upcycle_quality import train, upcycle

# (row, config, [titans] fields for both the conversion and the run)
HYBRIDS = [
    ("MAL (stacked), memory output zero, window 512", "debug_mal.toml", ["memory_out_init=zero", "window=512"]),
    ("MAL (stacked), as shipped (window 128)", "debug_mal.toml", []),
    ("MAG `GA`, window 512", "debug_mag.toml", ["window=512"]),
    ("MAG `GA`, as shipped (window 128)", "debug_mag.toml", []),
    ("MAC `CA`, segment 512", "debug_mac.toml", ["segment_len=512", "window=512"]),
    ("MAC `CA`, as shipped (segment 128)", "debug_mac.toml", []),
    ("LMM `M` (no attention left)", "debug_lmm.toml", []),
]
VOCAB = 2048


def _flags(sets: list[str]) -> list[str]:
    return [x for s in sets for x in (f"--titans.{s.partition('=')[0]}", s.partition("=")[2])]


def measure(pretrain: int) -> dict:
    at_start = ["--optimizer.lr", "0", "--checkpoint.enable", "--checkpoint.initial_load_model_only"]
    results = {}
    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "attention")
        save = ["--checkpoint.enable", "--checkpoint.interval", str(pretrain), "--checkpoint.last_save_model_only"]
        train("debug_attention.toml", base, pretrain, pretrain, save)
        step = os.path.join(base, "checkpoint", f"step-{pretrain}")
        run = train(
            "debug_attention.toml", os.path.join(work, "a0"), 1, 1, [*at_start, "--checkpoint.initial_load_path", step]
        )
        results["Transformer (the checkpoint)"] = run["val"][1]
        for i, (label, config, sets) in enumerate(HYBRIDS):
            out = os.path.join(work, f"hybrid{i}")
            upcycle(step, config, out, sets)
            extra = [*at_start, "--checkpoint.initial_load_path", out, *_flags(sets)]
            results[label] = train(config, os.path.join(work, f"run{i}"), 1, 1, extra)["val"][1]
            print(label, results[label], flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pretrain", type=int, default=200)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    results = measure(a.pretrain)
    reference = results["Transformer (the checkpoint)"]
    rows = [[label, f"{loss:.4f}", f"{loss - reference:+.4f}"] for label, loss in results.items()]
    rows.append(
        ["chance (uniform over the vocabulary)", f"{math.log(VOCAB):.4f}", f"{math.log(VOCAB) - reference:+.2f}"]
    )
    text = "\n\n".join(
        [
            "### Where each block starts after conversion",
            f"Machine: {machine()}. Command: `.venv/bin/python -m bench.upcycle_start --pretrain {a.pretrain}`. "
            f"The debug Transformer trains {a.pretrain} steps (seq 512, batch 8) and is converted into each "
            "hybrid; validation loss on 10 held-out batches of the embedded corpus before any training "
            "(one step at learning rate 0).",
            table(["converted into", "validation loss at the start", "against the Transformer"], rows),
        ]
    )
    publish(text, "results.md", "upcycle_start", not a.no_write)


if __name__ == "__main__":
    main()
