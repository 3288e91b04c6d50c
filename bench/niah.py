"""Single-needle-in-a-haystack (S-NIAH, passkey style) on any trained torchtitan checkpoint.

    python -m bench.niah --config train_configs/debug_mac.toml \
        --checkpoint outputs/debug_mac/checkpoint/step-400 --lengths 1024 4096 16384 65536

The model is built from the TOML exactly as training builds it and loaded from the DCP
folder (model weights only; optimizer and dataloader entries are ignored). Prompts and
scoring: titans_plugin/evals/niah.py.
"""

import argparse
import time

import torch

from bench.common import machine, publish, table
from titans_plugin.evals.niah import haystack_ids, run_cell, single_token_keys, tokenizer
from titans_plugin.torchtitan022.build import build_model, load_dcp_checkpoint, load_job_config, train_args


def model_for(config: str, checkpoint: str, max_len: int):
    """The TOML's model, its RoPE table long enough for `max_len`, with the checkpoint's weights."""
    args = train_args(load_job_config(config))
    args.max_seq_len = max(args.max_seq_len, max_len)
    model = build_model(args)
    if checkpoint:
        load_dcp_checkpoint(model, checkpoint)
    return model.eval()


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
    model = model_for(a.config, a.checkpoint, max(a.lengths))
    tok = tokenizer()
    keys = single_token_keys(tok)
    hay = haystack_ids(tok, max(a.lengths))
    rows = []
    for length in a.lengths:
        row, t0, every = [length], time.perf_counter(), []
        for depth in a.depths:
            res = [run_cell(model, tok, keys, hay, length, depth, k, a.piece) for k in list(keys)[: a.samples]]
            every += res
            row.append(f"{100 * sum(r[0] for r in res) / len(res):.0f} / {100 * sum(r[1] for r in res) / len(res):.0f}")
        row.append(f"{sum(r[2] for r in every) / len(every):.3f}")
        row.append(f"{(time.perf_counter() - t0) / (len(a.depths) * a.samples):.1f}")
        rows.append(row)
        print(row, flush=True)
    text = table(
        ["length", *[f"depth {d:.0%}: exact / ranked %" for d in a.depths], "prompt loss", "s per sample"], rows
    )
    doc = (
        f"Checkpoint `{a.checkpoint or '(untrained)'}`, config `{a.config}`; {a.samples} keys per cell, "
        f"{len(keys)} candidate keys (ranked chance {100 / len(keys):.0f}%). Machine: {machine()}.\n"
        f"Command: `python -m bench.niah --config {a.config} --checkpoint {a.checkpoint} "
        f"--lengths {' '.join(map(str, a.lengths))} --depths {' '.join(map(str, a.depths))} "
        f"--samples {a.samples} --write`\n\n{text}\n"
    )
    publish(doc, "results.md", "niah", a.write)


if __name__ == "__main__":
    main()
