"""Scaling with sequence length, and streaming far past any training length (CPU).

    .venv-bench/bin/python -m bench.scaling        # tables + docs/scaling.png, writes docs/results.md

1. One block of each kind at width 256 (LMM, MAG with window 512, full attention), batch 1,
   inference: time per token and peak memory from T = 1K to 64K, each in a fresh process.
2. Streaming: a 4-layer LMM/MAG model (MGMG) fed 1M tokens in pieces of 4,096 through its
   decoding caches; resident memory after every piece.
"""

import argparse
import json
import os
import time

from bench.common import REPO, machine, peak_rss_bytes, rss_bytes, run_worker, table, write_doc_section

KINDS = {"M": "LMM", "G": "MAG (window 512)", "A": "full attention"}
LENGTHS = [1024, 4096, 16384, 65536]
STREAM_TOKENS, PIECE = 1 << 20, 4096


def _model(pattern: str, n_layers: int, dim: int, max_seq_len: int):
    from titans_plugin.config import TitansConfig
    from titans_plugin.model import TitansModelArgs, TitansTransformer

    titans = TitansConfig(
        pattern=pattern, memory_heads=4, memory_depth=2, memory_expansion=4.0, chunk_size=64, window=512, n_persistent=4
    )
    args = TitansModelArgs(
        dim=dim, n_layers=n_layers, n_heads=4, vocab_size=2048, multiple_of=64, max_seq_len=max_seq_len, titans=titans
    )
    return TitansTransformer(args).eval()


def scale_worker(kind: str, T: int) -> dict:
    import torch

    torch.manual_seed(0)
    model = _model(kind, 1, 256, T)
    block = model.layers["0"]
    with torch.no_grad():
        block(torch.randn(1, 512, 256), model.freqs_cis)  # warm-up
        x = torch.randn(1, T, 256)
        base = rss_bytes()
        t0 = time.perf_counter()
        block(x, model.freqs_cis)
        seconds = time.perf_counter() - t0
    return {"kind": kind, "T": T, "us_per_token": seconds / T * 1e6, "peak_mib": (peak_rss_bytes() - base) / 2**20}


def stream_worker() -> dict:
    import torch

    torch.manual_seed(0)
    model = _model("MG", 4, 128, PIECE)
    # Positions past the RoPE table are fine for M (no RoPE) but not for G: give MAG a
    # table as long as the stream, as a long-context deployment would.
    from titans_plugin.blocks.rope import precompute_freqs_cis

    model.freqs_cis = precompute_freqs_cis(128 // 4, STREAM_TOKENS, 10000.0)
    caches, rss, t0 = None, [], time.perf_counter()
    tokens = torch.randint(0, 2048, (1, PIECE))
    with torch.no_grad():
        for _ in range(STREAM_TOKENS // PIECE):
            _, caches = model.forward_cached(tokens, caches)
            rss.append(rss_bytes() / 2**20)
    seconds = time.perf_counter() - t0
    return {"tokens": STREAM_TOKENS, "tok_s": STREAM_TOKENS / seconds, "rss_mib": rss}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--job", default="scale")
    p.add_argument("--kind", default="M")
    p.add_argument("--T", type=int, default=1024)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(scale_worker(a.kind, a.T) if a.job == "scale" else stream_worker()))
        return

    results = {k: [run_worker(__spec__.name, ["--kind", k, "--T", str(T)]) for T in LENGTHS] for k in KINDS}
    rows = []
    for i, T in enumerate(LENGTHS):
        row = [f"{T:,}"]
        for k in KINDS:
            r = results[k][i]
            row.append(f"{r['us_per_token']:.1f} us, {r['peak_mib']:,.0f} MiB")
        rows.append(row)
    t1 = table(["T"] + [f"{KINDS[k]}: time/token, peak" for k in KINDS], rows)
    stream = run_worker(__spec__.name, ["--job", "stream"])
    rss = stream["rss_mib"]
    quarter = len(rss) // 4
    late = rss[quarter:]
    t2 = (
        f"Streamed {stream['tokens']:,} tokens through a 4-layer `MGMG` model (width 128) in pieces of "
        f"{PIECE:,} at {stream['tok_s']:,.0f} tokens/s. Resident memory: {rss[0]:,.0f} MiB after the first "
        f"piece, {rss[quarter]:,.0f} MiB at 256K tokens, {rss[-1]:,.0f} MiB at 1M; between 256K and 1M it "
        f"stays within {min(late):,.0f}-{max(late):,.0f} MiB (allocator noise around a flat level, no trend)."
    )
    _plot(results, rss)
    text = "\n\n".join(
        [
            "## Scaling with sequence length (CPU)",
            f"Machine: {machine()}. Command: `.venv-bench/bin/python -m bench.scaling`. One block, width 256, "
            "4 heads, memory 4 heads x 64 with a depth-2 MLP (hidden 256), chunk 64; batch 1, inference, "
            "each point in a fresh process; peak = growth of resident memory during the call.",
            t1,
            "![scaling](scaling.png)",
            "### Streaming 1M tokens",
            t2,
        ]
    )
    print(text)
    write_doc_section("results.md", "scaling", text)


def _plot(results: dict, rss: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for k, label in KINDS.items():
        ax[0].plot(LENGTHS, [r["us_per_token"] for r in results[k]], marker="o", label=label)
        ax[1].plot(LENGTHS, [r["peak_mib"] for r in results[k]], marker="o", label=label)
    for a_, title in ((ax[0], "time per token (us)"), (ax[1], "peak memory growth (MiB)")):
        a_.set_xscale("log", base=2)
        a_.set_xlabel("sequence length")
        a_.set_title(title)
        a_.legend()
    ax[2].plot([(i + 1) * PIECE for i in range(len(rss))], rss)
    ax[2].set_xlabel("tokens streamed")
    ax[2].set_title("resident memory while streaming (MiB)")
    fig.tight_layout()
    fig.savefig(os.path.join(REPO, "docs", "scaling.png"), dpi=90)


if __name__ == "__main__":
    main()
