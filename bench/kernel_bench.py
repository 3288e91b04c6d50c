"""Triton memory scan on a GPU: forward and forward+backward time, tokens/s and useful TFLOP/s
against the exact chunked PyTorch path, SDPA causal attention and (when installed)
titans-pytorch 0.5.5, for T = 2K to 64K. Needs CUDA; on a machine without one it says so
and exits 2 (the CPU numbers live in memory_bench.py).

    python -m bench.kernel_bench                 # prints tables, writes docs/benchmarks.md
    python -m bench.kernel_bench --T 4096 --no-write

Shapes: 16 heads of 64, depth-2 memory with expansion 4 (hidden 256), chunk 64, bf16 inputs,
fp32 state; B * T = 128K tokens at every length (B = 64 at 2K, 2 at 64K), so every row does
the same useful work. Useful FLOPs are MemoryConfig.scan_flops_per_token
(the chunked algorithm's matmuls; the backward counted as 2x the forward).
"""

import argparse
import sys
import time

from bench.common import seconds_per_call, table, write_doc_section

HEADS, HEAD_DIM, DEPTH, EXPANSION, CHUNK, TOKENS = 16, 64, 2, 4, 64, 131072
# Dense bf16 tensor-core peak (no sparsity), by device name.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def _time_ms(fn, iters: int) -> float:
    return 1e3 * seconds_per_call(fn, iters)


def _scan_inputs(B, T):
    import torch
    import torch.nn.functional as F

    from titans_plugin.kernels import MemoryState

    dev, bf = "cuda", torch.bfloat16
    q = F.normalize(torch.randn(B, T, HEADS, HEAD_DIM, device=dev), dim=-1).to(bf)
    k = F.normalize(torch.randn(B, T, HEADS, HEAD_DIM, device=dev), dim=-1).to(bf)
    v = torch.randn(B, T, HEADS, HEAD_DIM, device=dev).to(bf)
    gates = [torch.rand(B, T, HEADS, device=dev) * s for s in (0.1, 1.0, 0.1)]
    hidden = HEAD_DIM * EXPANSION
    w = (
        torch.randn(B, HEADS, HEAD_DIM, hidden, device=dev) / HEAD_DIM**0.5,
        torch.randn(B, HEADS, hidden, HEAD_DIM, device=dev) / hidden**0.5,
    )
    leaves = [q, k, v, *gates, *w]
    for t in leaves:
        t.requires_grad_()
    state = MemoryState(w, tuple(torch.zeros_like(t) for t in w))
    return (q, k, v, *gates), state, leaves


def measure(impl: str, T: int, iters: int) -> dict:
    import torch

    from titans_plugin.kernels import neural_memory_scan

    B = max(1, TOKENS // T)
    if impl == "sdpa":
        q, k, v = (
            torch.randn(B, HEADS, T, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(3)
        )

        def fwd():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif impl == "titans-pytorch":
        from titans_pytorch import NeuralMemory

        mem = NeuralMemory(
            dim=HEADS * HEAD_DIM,
            chunk_size=CHUNK,
            heads=HEADS,
            dim_head=HEAD_DIM,
            default_model_kwargs=dict(depth=DEPTH, expansion_factor=EXPANSION),
        ).cuda()
        x = torch.randn(B, T, HEADS * HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)

        def fwd():
            return mem(x)[0]
    else:
        inputs, state, _ = _scan_inputs(B, T)

        def fwd():
            return neural_memory_scan(
                *inputs, state, chunk_size=CHUNK, activation="silu", max_grad_norm=1.0, backend=impl
            )[0]

    with torch.no_grad():
        fwd_ms = _time_ms(fwd, iters)
    train_ms = _time_ms(lambda: fwd().float().sum().backward(), iters)
    return {"impl": impl, "T": T, "B": B, "fwd_ms": fwd_ms, "train_ms": train_ms}


def _useful_tflops(r) -> tuple[float, float]:
    from titans_plugin.memory import MemoryConfig

    if r["impl"] == "sdpa":  # causal: half of 4 * T * D per query per head
        per_token = 2 * r["T"] * HEAD_DIM * HEADS
    else:
        config = MemoryConfig(dim=HEADS * HEAD_DIM, n_heads=HEADS, depth=DEPTH, expansion=EXPANSION, chunk_size=CHUNK)
        per_token = config.scan_flops_per_token()
    flops = per_token * r["B"] * r["T"]
    return flops / r["fwd_ms"] / 1e9, 3 * flops / r["train_ms"] / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="*", default=[2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("kernel_bench.py needs a CUDA GPU; none here. CPU numbers: python -m bench.memory_bench.")
        sys.exit(2)
    name = torch.cuda.get_device_name()
    impls = ["triton", "chunk", "sdpa"]
    try:
        import titans_pytorch  # noqa: F401

        impls.append("titans-pytorch")
    except ImportError:
        print("titans-pytorch not installed: its column is skipped")
    rows, results = [], {}
    for T in a.T:
        for impl in impls:
            r = measure(impl, T, a.iters)
            results[impl, T] = r
            fwd_tf, train_tf = _useful_tflops(r)
            rows.append(
                [
                    T,
                    r["B"],
                    impl,
                    f"{r['fwd_ms']:.2f}",
                    f"{r['train_ms']:.2f}",
                    f"{r['B'] * T / r['train_ms'] * 1e3:,.0f}",
                    f"{fwd_tf:.1f}",
                    f"{train_tf:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    text = table(
        ["T", "B", "implementation", "fwd ms", "fwd+bwd ms", "train tokens/s", "fwd TFLOP/s", "train TFLOP/s"], rows
    )
    peak = _peak(name)
    lines = []
    for T in a.T:
        tri, ref = results["triton", T], results["chunk", T]
        _, tf = _useful_tflops(tri)
        share = f", {tf / peak:.1%} of bf16 peak" if peak else ""
        lines.append(f"- T={T}: triton {ref['train_ms'] / tri['train_ms']:.1f}x the PyTorch path (fwd+bwd){share}")
    verdict = "\n".join(lines)
    doc = (
        f"Device: **{name}**, torch {torch.__version__}, measured {time.strftime('%Y-%m-%d')}. "
        "Command: `python -m bench.kernel_bench`.\n"
        f"Targets: >= 10x the PyTorch path; >= 25% of bf16 peak in useful FLOPs at T >= 4K.\n\n"
        f"{text}\n\n{verdict}\n"
    )
    print(doc)
    if not a.no_write:
        write_doc_section("benchmarks.md", "gpu-kernels", doc)


if __name__ == "__main__":
    main()
