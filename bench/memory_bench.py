"""Neural memory forward+backward on CPU: ours vs titans-pytorch 0.5.5, and scaling in T.

    .venv-bench/bin/python -m bench.memory_bench          # prints tables, writes docs/benchmarks.md

titans-pytorch is installed only in the benchmark's environment (bench/setup_bench_env.sh),
never as a dependency of the plugin. Same configuration for both: B=2, width 256, 4 heads
of 64, chunk 64, memory depth 2 with expansion 4. Each measurement runs in a fresh process
so peak memory is its own.
"""

import argparse
import json

from bench.common import machine, run_worker, table, time_steps, write_doc_section

B, DIM, HEADS, HEAD_DIM, CHUNK, DEPTH, EXPANSION = 2, 256, 4, 64, 64, 2, 4


def worker(impl: str, T: int, iters: int) -> dict:
    import torch

    torch.manual_seed(0)
    x = torch.randn(B, T, DIM, requires_grad=True)
    if impl.startswith("ours"):
        from titans_plugin.memory import MemoryConfig, NeuralMemory

        if impl == "ours+compile":  # inductor fuses the elementwise work of each chunk
            import titans_plugin.kernels.chunk as ck

            ck.chunk_forward = torch.compile(ck.chunk_forward, dynamic=False)
            ck.chunk_backward = torch.compile(ck.chunk_backward, dynamic=False)

        mem = NeuralMemory(
            MemoryConfig(
                dim=DIM,
                n_heads=HEADS,
                head_dim=HEAD_DIM,
                depth=DEPTH,
                expansion=EXPANSION,
                chunk_size=CHUNK,
                backend="chunk",
            )
        )

        def forward():
            return mem(x)[0]
    else:
        from titans_pytorch import NeuralMemory

        mem = NeuralMemory(
            dim=DIM,
            chunk_size=CHUNK,
            heads=HEADS,
            dim_head=HEAD_DIM,
            default_model_kwargs=dict(depth=DEPTH, expansion_factor=EXPANSION),
        )

        def forward():
            return mem(x)[0]

    def step():
        mem.zero_grad(set_to_none=True)
        forward().sum().backward()

    seconds, peak = time_steps(step, warmup=1, iters=iters)
    return {"impl": impl, "T": T, "s": seconds, "tok_s": B * T / seconds, "peak_mib": peak / 2**20}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--impl", default="ours")
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.impl, a.T, a.iters)))
        return

    cmp = [
        run_worker(__spec__.name, ["--impl", impl, "--T", "1024"])
        for impl in ("ours", "ours+compile", "titans-pytorch")
    ]
    ours, theirs = cmp[0], cmp[-1]
    rows = [[r["impl"], f"{r['tok_s']:,.0f}", f"{r['s'] * 1000:,.0f}", f"{r['peak_mib']:,.0f}"] for r in cmp]
    speed, mem = ours["tok_s"] / theirs["tok_s"], ours["peak_mib"] / theirs["peak_mib"]
    t1 = table(["implementation", "tokens/s", "ms per fwd+bwd", "peak MiB"], rows)
    speed_c = cmp[1]["tok_s"] / theirs["tok_s"]
    verdict = (
        f"Ours (eager): **{speed:.2f}x** the tokens/s (target >= 3x: missed), **{mem:.2f}x** the "
        f"peak memory (target <= 0.5x). With the chunk functions compiled: {speed_c:.2f}x "
        "(compilation, ~45 s once, is not in the timing)."
    )

    scale = [run_worker(__spec__.name, ["--impl", "ours", "--T", str(T), "--iters", "2"]) for T in (1024, 4096, 16384)]
    base = scale[0]
    rows = [
        [
            r["T"],
            f"{r['s'] / (B * r['T']) * 1e6:.1f}",
            f"{(r['s'] / r['T']) / (base['s'] / base['T']):.2f}",
            f"{r['peak_mib']:,.0f}",
            f"{r['peak_mib'] / r['T'] * 1024:,.1f}",
        ]
        for r in scale
    ]
    t2 = table(["T", "us per token", "vs T=1K", "peak MiB", "MiB per 1K tokens"], rows)
    flat = max(r["s"] / r["T"] for r in scale) / min(r["s"] / r["T"] for r in scale)
    verdict2 = f"Time per token varies by {flat:.2f}x across T (target within 1.3x)."

    text = "\n\n".join(
        [
            "### Neural memory, forward + backward, CPU",
            f"Machine: {machine()}. Command: `.venv-bench/bin/python -m bench.memory_bench`. "
            f"B={B}, width {DIM}, {HEADS} heads of {HEAD_DIM}, chunk {CHUNK}, depth {DEPTH}, expansion {EXPANSION}; "
            "peak = growth of resident memory during the timed steps, in a fresh process.",
            "T = 1024, side by side with titans-pytorch 0.5.5 (`NeuralMemory`, same sizes):",
            t1,
            verdict,
            "Scaling (ours):",
            t2,
            verdict2,
        ]
    )
    print(text)
    if not a.no_write:
        write_doc_section("benchmarks.md", "memory", text)


if __name__ == "__main__":
    main()
