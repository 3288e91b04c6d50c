"""Training throughput with packed documents (titans.attn_mask_type = "block_causal")
against the same batch without document masks, chunked PyTorch path, CPU.

    .venv/bin/python -m bench.packed_documents      # ~16 minutes on 2 CPU cores

Same tokens in both runs; only the masks differ. Documents have log-normal lengths with
the given mean (pretraining web text averages ~1,000 tokens; the embedded stories ~220)
and end with EOS; rows are cut from one stream, as torchtitan packs them. Each
model runs in a fresh process, with and without the masks on alternate steps (so drift
in the machine's speed falls on both): forward + backward of the whole model, tokens/s
from the median of 7 steps each after a warm-up.

    .venv/bin/python -m bench.packed_documents --mac-breakdown   # ~4 minutes

Where MAC's extra time goes: one MAC block's mixer (forward + backward) on the packed
batch, on the same number of slots without masks (the padding alone), and with segments of
64 instead of 128 (what a layout padding documents to a chunk, 64, instead of a segment
would have to step by).
"""

import argparse
import json
import math
import statistics
import time

from bench.common import machine, run_worker, table, write_doc_section

B, T, DIM, LAYERS, HEADS, VOCAB, EOS = 4, 2048, 256, 4, 4, 2048, 2
PATTERNS = {"M": "LMM", "GA": "MAG + attention", "LA": "MAL + attention", "CA": "MAC + attention"}
MEAN_LENGTHS = [1024, 256]


def packed_tokens(mean_len: int, seed: int = 0):
    """[B, T] tokens cut from a stream of documents with log-normal lengths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    # exp(N(0, 0.8)) has mean exp(0.32); scaled so the lengths average mean_len
    lengths = (torch.empty(4 * B * T // mean_len).log_normal_(0, 0.8, generator=g) * mean_len / 1.377).long() + 2
    n_docs = int((torch.cumsum(lengths, 0) < B * T).sum()) + 1
    stream = torch.randint(3, VOCAB, (int(lengths[:n_docs].sum()),), generator=g)
    stream[torch.cumsum(lengths[:n_docs], 0) - 1] = EOS
    return stream[: B * T].view(B, T)


def worker(pattern: str, mean_len: int, iters: int) -> dict:
    """Both columns in one process on one model, steps alternating between them, so
    that drift in the machine's speed falls on both alike."""
    import torch

    from titans_plugin.blocks.documents import document_ids
    from titans_plugin.config import TitansConfig
    from titans_plugin.model import TitansModelArgs, TitansTransformer

    torch.manual_seed(0)
    titans = TitansConfig(pattern=pattern, backend="chunk", attn_mask_type="block_causal")
    args = TitansModelArgs(dim=DIM, n_layers=LAYERS, n_heads=HEADS, vocab_size=VOCAB, max_seq_len=T, titans=titans)
    model = TitansTransformer(args)
    tokens = packed_tokens(mean_len)
    ids = document_ids(tokens, EOS)

    def step(masks):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        model(tokens, attention_masks=masks).float().pow(2).mean().backward()
        return time.perf_counter() - t0

    step(None), step(ids)  # warm-up
    times = {"causal": [], "block_causal": []}
    for _ in range(iters):
        times["causal"].append(step(None))
        times["block_causal"].append(step(ids))
    out = {name: B * T / statistics.median(ts) for name, ts in times.items()}
    # the slowdown from each step and the one next to it: drift in the machine's speed
    # (this one varies by several percent over minutes) cancels within a pair
    out["slowdown"] = 1 - statistics.median(c / d for c, d in zip(times["causal"], times["block_causal"], strict=True))
    out["docs_per_row"] = (ids[:, -1] + 1).float().mean().item()
    out["slots"] = scanned_slots(pattern, titans, ids)
    return out


def mac_breakdown_worker(mean_len: int, iters: int) -> dict:
    """Seconds per forward + backward of one MAC block's mixer, steps alternating."""
    import torch

    from titans_plugin.blocks.documents import DocumentLayout, document_ids
    from titans_plugin.config import TitansConfig
    from titans_plugin.model import TitansModelArgs, TitansTransformer

    def mixer(segment_len):
        torch.manual_seed(0)
        titans = TitansConfig(pattern="C", backend="chunk", segment_len=segment_len, attn_mask_type="block_causal")
        args = TitansModelArgs(dim=DIM, n_layers=1, n_heads=HEADS, vocab_size=VOCAB, max_seq_len=2 * T, titans=titans)
        model = TitansTransformer(args)
        return model.layers["0"], model.freqs_cis

    ids = document_ids(packed_tokens(mean_len), EOS)
    block, freqs = mixer(128)
    short_block, short_freqs = mixer(64)
    slots = DocumentLayout.build(ids, math.lcm(block.segment_len, block.memory.config.chunk_size)).n_slots
    x, x_slots = torch.randn(B, T, DIM), torch.randn(B, slots, DIM)

    def step(blk, fr, xx, docs):
        blk.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        blk.mix(xx, fr, None, docs)[0].pow(2).mean().backward()
        return time.perf_counter() - t0

    cases = {
        "causal, T tokens": lambda: step(block, freqs, x, None),
        "causal, T' slots": lambda: step(block, freqs, x_slots, None),
        "block_causal": lambda: step(block, freqs, x, ids),
        "causal, segment 64": lambda: step(short_block, short_freqs, x, None),
    }
    for run in cases.values():
        run()  # warm-up
    times = {name: [] for name in cases}
    for _ in range(iters):
        for name, run in cases.items():
            times[name].append(run())
    base = times["causal, T tokens"]
    return {
        "slots": slots,
        "seconds": {name: statistics.median(ts) for name, ts in times.items()},
        "ratio": {name: statistics.median(t / b for t, b in zip(ts, base, strict=True)) for name, ts in times.items()},
    }


def mac_breakdown(iters: int, write: bool) -> None:
    rows = []
    for mean_len in MEAN_LENGTHS:
        res = run_worker("bench.packed_documents", ["--worker-mac", "--mean-len", str(mean_len), "--iters", str(iters)])
        for name, seconds in res["seconds"].items():
            rows.append(
                [
                    mean_len,
                    name,
                    f"{res['slots'] / T:.3f}" if "slots" in name else "",
                    f"{seconds:.3f}",
                    f"{res['ratio'][name]:.3f}",
                ]
            )
        print(rows[-4:], flush=True)
    text = "\n\n".join(
        [
            "### Packed documents: where MAC's extra time goes",
            f"Machine: {machine()}. Command: `.venv/bin/python -m bench.packed_documents --mac-breakdown`. "
            f"One MAC block's mixer (segment 128, chunk 64), forward + backward, B={B}, T={T}, width {DIM}, "
            "chunked path, the documents of the table above; the cases alternate, median of "
            f"{iters} steps, and the ratio is the median over steps of each case's time over the plain "
            "causal step beside it. T' slots: the causal mixer on as many slots as the packed layout "
            "has (every document padded to whole segments), i.e. the padding's cost without any masks.",
            table(["mean doc length", "case", "slots / T", "s per step", "vs causal"], rows),
        ]
    )
    print(text)
    if write:
        write_doc_section("benchmarks.md", "packed-documents-mac", text)


def scanned_slots(pattern: str, titans, ids) -> float:
    """What the memory layers scan per row, in tokens: MAC runs on a layout where every
    document starts a segment; the others scan every document on its own chunk grid in
    lanes (MAL: each document's stream opens with the persistent tokens)."""
    from titans_plugin.blocks.documents import DocumentLayout, document_starts
    from titans_plugin.memory import DocumentLanes

    if "C" in pattern:
        return DocumentLayout.build(ids, math.lcm(titans.chunk_size, titans.segment_len)).n_slots
    starts = DocumentLayout.build(ids, 1, titans.n_persistent).starts if "L" in pattern else document_starts(ids)
    return DocumentLanes.build(starts, titans.chunk_size).index.numel() / ids.shape[0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--worker-mac", action="store_true")
    p.add_argument("--mac-breakdown", action="store_true")
    p.add_argument("--pattern", default="GA")
    p.add_argument("--mean-len", type=int, default=1024)
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if a.worker_mac:  # run_worker passes --worker too
        print(json.dumps(mac_breakdown_worker(a.mean_len, a.iters)))
        return
    if a.worker:
        print(json.dumps(worker(a.pattern, a.mean_len, a.iters)))
        return
    if a.mac_breakdown:
        mac_breakdown(a.iters, not a.no_write)
        return
    rows = []
    for mean_len in MEAN_LENGTHS:
        for pattern, label in PATTERNS.items():
            flags = ["--pattern", pattern, "--mean-len", str(mean_len), "--iters", str(a.iters)]
            res = run_worker("bench.packed_documents", flags)
            plain, docs = res["causal"], res["block_causal"]
            row = [
                mean_len,
                f"{res['docs_per_row']:.1f}",
                f"`{pattern}` ({label})",
                f"{plain:,.0f}",
                f"{docs:,.0f}",
                f"{100 * res['slowdown']:+.1f}%",
                f"{res['slots'] / T:.2f}",
            ]
            rows.append(row)
            print(row, flush=True)
    text = "\n\n".join(
        [
            "### Packed documents: training throughput with and without document masks",
            f"Machine: {machine()}. Command: `.venv/bin/python -m bench.packed_documents`. "
            f"Forward + backward, B={B}, T={T}, width {DIM}, {LAYERS} layers, `[titans]` defaults "
            "(chunk 64, MAC segment 128, window 128), chunked path. Documents: log-normal lengths "
            "with the given mean, cut from one stream; the same model and tokens in both columns, "
            f"steps alternating between them (median of {a.iters} each). Slowdown: "
            'how much lower tokens/s is with `attn_mask_type = "block_causal"`, the median over '
            "pairs of adjacent steps (drift in the machine's speed cancels within a pair). Scanned / T: "
            "what the memory scans per row over T: every document takes whole chunks (MAC: "
            "segments), its last one padded.",
            table(
                [
                    "mean doc length",
                    "docs per row",
                    "model",
                    "tokens/s causal",
                    "tokens/s block_causal",
                    "slowdown",
                    "scanned / T",
                ],
                rows,
            ),
        ]
    )
    print(text)
    if not a.no_write:
        write_doc_section("benchmarks.md", "packed-documents", text)


if __name__ == "__main__":
    main()
