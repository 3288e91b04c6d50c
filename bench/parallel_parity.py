"""Loss curves of every layout against one process, per block type: the table in
docs/parallelism.md.

    .venv/bin/python -m bench.parallel_parity        # ~15 minutes on 2 CPU cores

Same set-up as integration_tests/test_parallel_parity.py (seed checkpoint, periodic
corpus, 4 steps, torchrun on gloo)."""

import os
import tempfile

from bench.common import machine, table, write_doc_section
from devtools.parity import make_seed_checkpoint, run_layout, write_periodic_corpus

STEPS = 4
PATTERNS = {"CA": "MAC + attention", "GA": "MAG + attention", "LA": "MAL + attention", "M": "LMM"}
LAYOUTS = [
    "fsdp2",
    "tp2",
    "fsdp2_tp2",
    "ddp2",
    "hsdp",
    "single_ac_full",
    "single_ac_selective",
    "cp2",
    "cp2_tp2",
    "cp2_contiguous_ac",
]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        corpus = write_periodic_corpus(os.path.join(work, "periodic.jsonl"))
        for pattern, label in PATTERNS.items():
            seed = make_seed_checkpoint(work, corpus, pattern)
            ref, _ = run_layout(work, corpus, pattern, "single", STEPS, seed)
            row = [f"`{pattern}` ({label})", " ".join(f"{ref[s]:.4f}" for s in sorted(ref))]
            for layout in LAYOUTS:
                curve, _ = run_layout(work, corpus, pattern, layout, STEPS, seed)
                rel = max(abs(curve[s] - ref[s]) / abs(ref[s]) for s in ref)
                row.append(f"{rel:.1e}")
            rows.append(row)
            print(row, flush=True)
    text = "\n\n".join(
        [
            "### Measured parity (max relative loss difference over the first 4 steps vs one process)",
            f"Machine: {machine()}, gloo. Command: `.venv/bin/python -m bench.parallel_parity`. "
            "Debug flavor, seq_len 128, global batch 8, from one seed checkpoint. torchtitan logs losses to "
            "5 decimals, so 0 means equal to every printed digit (|difference| < 1e-5); the integration "
            "tests allow 2e-4 relative. TP is with sequence parallel; CP=2 uses torchtitan's default head-tail "
            "load balancer; CP contiguous + AC: `context_parallel_load_balancer` None and full activation "
            "checkpointing.",
            table(
                [
                    "model",
                    "single-process losses",
                    "FSDP2=2",
                    "TP=2",
                    "FSDP2 x TP2",
                    "DDP=2",
                    "HSDP 2x2",
                    "AC full",
                    "AC selective",
                    "CP=2",
                    "CP2 x TP2",
                    "CP contiguous + AC",
                ],
                rows,
            ),
        ]
    )
    print(text)
    write_doc_section("parallelism.md", "parity", text)


if __name__ == "__main__":
    main()
