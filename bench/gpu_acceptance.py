"""Whether a GPU machine trains Titans correctly, and how fast: one command, at most about
8 minutes on one H100 or H200.

    python -m bench.gpu_acceptance              # on a GPU: writes docs/benchmarks.md and docs/gpu_acceptance.json
    python -m bench.gpu_acceptance --dry-run    # the same steps at toy sizes in the Triton interpreter (CPU)

Steps, each reported and each able to fail the run (exit status 1):
1. the environment: GPU, capability, driver, CUDA, torch, triton;
2. the Triton scan's self-check (kernels/self_check.py) for the default configurations,
   and the Triton kernel tests compiled for this GPU (bf16 included);
3. every memory block type's forward and backward with the Triton scan against the chunked
   path, in bf16 and fp32 (the largest relative error of the logits and of every gradient);
4. the scan's speed at T = 4K and 16K: tokens/s, useful TFLOP/s and share of bf16 peak,
   next to the roofline model's prediction (measured / predicted), with the chunked path
   and SDPA attention beside it;
   and the split-state scan (`backend = "triton_split"`, its own self-check first) beside
   the one-program scan at B x H = 32, forward and forward + backward; the same for the
   Gluon cluster forward (`backend = "gluon_cluster"`, sm_90, bf16), bit for bit the same
   with one CTA of each cluster stalled at every exchange, and which design
   `backend = "auto"` picks there (kernels/design_race.py);
   and what a meeting of split programs costs (bench/exchange_bench.py: through global
   memory, and on sm_90 through a cluster's distributed shared memory);
5. 20 torchtitan steps per memory block type in bf16 with `backend = "auto"`, with and
   without torch.compile: loss, tokens/s, peak memory;
6. ring attention's fused-kernel check on the device.
`python -m bench.roofline --report R --measured docs/gpu_acceptance.json` then says, per
term of the model, where it was wrong.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import re
import subprocess
import sys
import time

import torch

from bench.common import table, write_doc_section
from devtools.paths import REPO

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
GPU = dict(heads=16, head_dim=64, hidden=256, chunk=64, lengths=(4096, 16384), tokens=65536, steps=20, parity_chunks=10)
# the training step's torchtitan runs (CONFIG or CONFIG:compile)
TRAINING = tuple(f"{n}{c}" for n in ("debug_mac", "debug_mag", "debug_mal", "debug_lmm") for c in ("", ":compile"))
# the dry run: the same steps, sized for the interpreter (its cost grows with the chunks walked)
TOY = dict(heads=2, head_dim=16, hidden=32, chunk=8, lengths=(16, 32), tokens=32, steps=3, parity_chunks=4)


def _peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


class Run:
    """What every step reports: its rows, and whether it failed."""

    def __init__(self, dry: bool, training=TRAINING, kernel_test_workers: int = 0):
        self.dry, self.sizes = dry, TOY if dry else GPU
        self.training, self.kernel_test_workers = list(training), kernel_test_workers
        self.path: str | None = None
        self.dtypes = [torch.bfloat16, torch.float32]  # of the self-check and the block parity
        # the dry run checks one dtype, for time (the bf16 kernels: tests/test_triton_kernels.py)
        self.precision_dtypes = [torch.float16] if dry else [torch.bfloat16, torch.float16]
        self.clips: list[float] = []  # the precision step's clip thresholds (default: the self-check's)
        self.device = "cpu" if dry else "cuda"
        self.results: dict = {"dry_run": dry, "date": datetime.date.today().isoformat(), "failures": []}
        self.results["sizes"] = self.sizes

    def save(self) -> None:
        """Written after every step and every training run: a run cut short keeps what it measured."""
        if self.path:
            with open(self.path, "w") as f:
                json.dump(self.results, f, indent=1, default=str)

    def fail(self, what: str) -> None:
        print(f"FAILED: {what}", flush=True)
        self.results["failures"].append(what)


# -- 1. environment ----------------------------------------------------------------------
def environment(run: Run) -> None:
    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()}
    if run.dry:
        env["device"] = "cpu (Triton interpreter)"
    else:
        props = torch.cuda.get_device_properties(0)
        env |= {"device": props.name, "capability": f"sm_{props.major}{props.minor}", "cuda": torch.version.cuda}
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
        try:
            smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown (no nvidia-smi)"
    run.results["environment"] = env
    print(json.dumps(env), flush=True)


# -- 2. self-check and kernel tests -----------------------------------------------------------
def _state(depth: int, s: dict, device):
    from titans_plugin.kernels import MemoryState

    dims = [s["head_dim"]] + [s["hidden"]] * (depth - 1) + [s["head_dim"]]
    w = tuple(torch.zeros(1, 1, dims[i], dims[i + 1], device=device) for i in range(depth))
    return MemoryState(w, w)


def self_checks(run: Run) -> None:
    from titans_plugin.kernels import self_check

    if run.dry:
        self_check.CHECKED_DEVICES = ("cpu",)
    dtypes = [torch.float32] if run.dry else run.dtypes  # the dry run: one dtype, for time
    rows = []
    for dtype in dtypes:
        for depth, clip, resets in ((2, True, False), (2, True, True), (1, True, False), (2, False, False)):
            state = _state(depth, run.sizes, run.device)
            r = self_check.check(run.device, dtype, state, run.sizes["chunk"], "silu", clip, resets)
            rows.append({"ok": r.ok, "message": r.message, "max_error": r.max_error, "seconds": r.seconds})
            print(r.message, flush=True)
            if not r.ok:
                run.fail(r.message)
    run.results["self_checks"] = rows


def precision(run: Run) -> None:
    """Where the self-check's problem (depth 2, clip on) differs from the fp32 chunked path,
    per tensor, for bf16 and fp16 inputs with restarts off and on, and the token with the
    largest key-gradient error: it tells rounding (fp16 about 8x closer than bf16 everywhere)
    from a defect (one tensor or one token far off)."""
    from titans_plugin.kernels import self_check as sc

    s = run.sizes
    rows = []
    cases = [(dtype, resets, clip) for dtype in run.precision_dtypes for resets in (False, True) for clip in run.clips]
    for dtype, resets, clip in cases:
        key = (run.device, dtype, 2, "silu", True, resets, s["head_dim"], s["hidden"], s["head_dim"], s["chunk"], False)
        stats: dict = {}
        pairs = sc.paired_outputs(key, clip, stats)
        errors = {name: sc._relative_error(a, b) for name, a, b in pairs}
        _, dk, dk_ref = next(p for p in pairs if p[0] == "gradient of k")
        difference = (dk.float() - dk_ref).abs()
        # [batch, token, head, channel]
        worst = [int(i) for i in (difference == difference.max()).nonzero()[0].tolist()]
        factor = stats["clip_factor"][worst[0], worst[1], worst[2]].item()  # the fp32 path's, at that token
        row = {"dtype": str(dtype), "restarts": resets, "clip": clip, "errors": errors, "dk_worst_at": worst}
        rows.append(row | {"clip_factor_there": factor})
        listed = ", ".join(f"{n} {e:.1e}" for n, e in errors.items())
        where = f"dk worst at {worst} (clip factor there {factor:.5f})"
        print(f"{dtype} restarts {'on' if resets else 'off'} clip {clip}: {listed}; {where}", flush=True)
    run.results["precision"] = rows


def kernel_tests(run: Run) -> None:
    if run.dry:
        run.results["kernel_tests"] = "not run: the test command runs them in the interpreter"
        return
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_triton_kernels.py"]
    if run.kernel_test_workers:  # pytest-xdist: each worker compiles its own kernels
        cmd += ["-n", str(run.kernel_test_workers)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    run.results["kernel_tests"] = summary
    print(f"tests/test_triton_kernels.py on the GPU: {summary}", flush=True)
    if proc.returncode != 0:
        run.fail(f"Triton kernel tests on the GPU: {summary}\n{proc.stdout[-3000:]}")


# -- 3. block types, Triton against the chunked path -----------------------------------------
def _model(pattern: str, backend: str, s: dict, dtype):
    """Two layers around the acceptance's memory: heads of head_dim, hidden units, chunk."""
    from titans_plugin.config import TitansConfig
    from titans_plugin.model import TitansModelArgs, TitansTransformer

    torch.manual_seed(0)
    titans = TitansConfig(
        pattern=pattern,
        memory_heads=s["heads"],
        memory_expansion=s["hidden"] / s["head_dim"],
        chunk_size=s["chunk"],
        segment_len=4 * s["chunk"],
        window=4 * s["chunk"],
        backend=backend,
    )
    dim = s["heads"] * s["head_dim"]
    args = TitansModelArgs(dim=dim, n_layers=2, n_heads=s["heads"], vocab_size=512, multiple_of=64, titans=titans)
    model = TitansTransformer(args)
    for param in model.parameters():  # parameters only: the RoPE table stays complex
        param.data = param.data.to(dtype)
    return model


def block_parity(run: Run) -> None:
    s = run.sizes
    T = s["parity_chunks"] * s["chunk"] + s["chunk"] // 2 + 1  # several chunks and segments, a ragged end
    tokens = torch.randint(0, 512, (2, T), generator=torch.Generator().manual_seed(0)).to(run.device)
    dtypes = [torch.float32] if run.dry else run.dtypes
    tolerance = {torch.float32: 1e-3, torch.bfloat16: 5e-2}
    rows = []
    for dtype in dtypes:
        for pattern in ("CA", "GA", "LA", "M"):
            outs = {}
            for backend in ("triton", "chunk"):
                model = _model(pattern, backend, s, dtype).to(run.device)
                logits = model(tokens)
                logits.float().square().mean().backward()
                outs[backend] = [logits] + [p.grad for p in model.parameters()]
            errors = [
                ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
                for a, b in zip(outs["triton"], outs["chunk"], strict=True)
                if b is not None
            ]
            worst = max(errors)
            rows.append(
                {"pattern": pattern, "dtype": str(dtype), "logits": errors[0], "worst_gradient": max(errors[1:])}
            )
            print(f"{pattern} {dtype}: logits {errors[0]:.2e}, worst gradient {max(errors[1:]):.2e}", flush=True)
            if not worst <= tolerance[dtype]:
                run.fail(f"{pattern} {dtype}: Triton against chunk, relative error {worst:.2e} > {tolerance[dtype]}")
    run.results["block_parity"] = rows


# -- 4. speed -------------------------------------------------------------------------------
def _attention_step(q, k, v):
    import torch.nn.functional as F

    F.scaled_dot_product_attention(q, k, v, is_causal=True).float().sum().backward()


def _scan_step(impl, inputs, state, chunk):
    from titans_plugin.kernels import neural_memory_scan

    y, _ = neural_memory_scan(*inputs, state, chunk_size=chunk, activation="silu", max_grad_norm=1.0, backend=impl)
    y.float().sum().backward()


def _time_s(fn, sync, iters: int) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def speed(run: Run) -> None:
    import torch.nn.functional as F

    from bench.roofline import predict
    from titans_plugin.kernels import MemoryState
    from titans_plugin.memory import MemoryConfig

    s = run.sizes
    sync = torch.cuda.synchronize if run.device == "cuda" else (lambda: None)
    dtype = torch.float32 if run.dry else torch.bfloat16
    config = MemoryConfig(
        dim=s["heads"] * s["head_dim"], n_heads=s["heads"], expansion=s["hidden"] / s["head_dim"], chunk_size=s["chunk"]
    )
    spills = _spills(run)
    peak = None if run.dry else _peak(torch.cuda.get_device_name(0))
    rows = []
    for T in s["lengths"]:
        B = max(1, s["tokens"] // T)
        H, D, hidden = s["heads"], s["head_dim"], s["hidden"]
        g = torch.Generator().manual_seed(0)

        def rnd(*shape, g=g):
            return torch.randn(*shape, generator=g).to(run.device)

        q, k = F.normalize(rnd(B, T, H, D), dim=-1).to(dtype), F.normalize(rnd(B, T, H, D), dim=-1).to(dtype)
        v = rnd(B, T, H, D).to(dtype)
        gates = [torch.rand(B, T, H, generator=g).to(run.device) * c for c in (0.1, 1.0, 0.1)]
        w = (rnd(B, H, D, hidden) / D**0.5, rnd(B, H, hidden, D) / hidden**0.5)
        state = MemoryState(w, tuple(torch.zeros_like(t) for t in w))
        leaves = [q, k, v, *gates, *w]
        for t in leaves:
            t.requires_grad_()
        useful = 3 * config.scan_flops_per_token() * B * T  # forward + backward (2x forward)
        for impl in ("triton", "chunk", "sdpa"):
            if impl == "sdpa":
                step = functools.partial(
                    _attention_step, *(rnd(B, H, T, D).to(dtype).requires_grad_() for _ in range(3))
                )
                flops = 3 * 2 * T * D * H * B * T  # causal: half of 4 T D per query and head, x3 for training
            else:
                step = functools.partial(_scan_step, impl, (q, k, v, *gates), state, s["chunk"])
                flops = useful
            seconds = _time_s(step, sync, 1 if run.dry else 3)
            row = {"impl": impl, "T": T, "B": B, "seconds": seconds, "tokens_per_s": B * T / seconds}
            row["tflops"] = flops / seconds / 1e12
            row["pct_peak"] = None if peak is None else 100 * row["tflops"] / peak
            if impl == "triton":
                model = predict(s["chunk"], D, hidden, 16, 4, True, spills, B * H)  # bench/roofline.py's
                row["predicted_seconds"] = model["time_us"] * 1e-6 * -(-T // s["chunk"]) * -(-B * H // 132)
                row["measured_over_predicted"] = seconds / row["predicted_seconds"]
            rows.append(row)
            ratio = f", measured/predicted {row['measured_over_predicted']:.2f}" if impl == "triton" else ""
            print(f"{impl} T={T} B={B}: {row['tokens_per_s']:,.0f} tokens/s, {row['tflops']:.2f} TFLOP/s{ratio}")
    run.results["speed"] = {"spills": spills, "rows": rows}


def split_speed(run: Run) -> None:
    """The split-state scan against the one-program scan at B x H = 32 and the first length
    (design_speed). Programs that wait for each other need one thread each in the
    interpreter."""
    from titans_plugin.kernels.triton_backend import split_supports

    s = run.sizes
    dtype = torch.float32 if run.dry else torch.bfloat16
    sizes = ((1 if run.dry else 2), s["heads"], s["lengths"][0], s["head_dim"], s["hidden"], s["chunk"])
    if run.dry:
        from devtools.threaded_grid import threaded_grid as grid
    else:
        import contextlib

        grid = contextlib.nullcontext
    design_speed(run, "triton_split", "split_speed", split_supports, sizes, dtype, grid)


def cluster_speed(run: Run) -> None:
    """The Gluon cluster forward against the one-program scan (design_speed) in its
    configuration: bf16, head dim 64, hidden 256 (4 CTAs) at B x H = 32 and the first
    length; the dry run compares the op's emulation of it at hidden 128 (2 CTAs)."""
    import contextlib

    from titans_plugin.kernels.gluon_backend import supports

    sizes = (1, 1, 80, 64, 128, 64) if run.dry else (2, run.sizes["heads"], run.sizes["lengths"][0], 64, 256, 64)
    design_speed(run, "gluon_cluster", "cluster_speed", supports, sizes, torch.bfloat16, contextlib.nullcontext)
    if "rows" in run.results["cluster_speed"]:
        run.results["cluster_speed"]["stall"] = cluster_stall(run)


def cluster_stall(run: Run, stall_ns: int = 20_000) -> dict:
    """The cluster kernel's exchanges under stress: the last CTA of every cluster waits
    stall_ns after each exchange's barrier before reading its partners' slots
    (gluon_backend.cluster.stalled). Output and end state must equal an unstalled run's bit
    for bit. The emulation has no timing to stall: the dry run says so."""
    if run.dry:
        return {"not_run": "the CPU runs the kernel's emulation, which has no timing to stall"}
    from titans_plugin.kernels import MemoryState, neural_memory_scan
    from titans_plugin.kernels.gluon_backend.cluster import stalled

    B, H, T, D, hidden = 2, 4, 8 * 64, 64, 256  # 8 chunks of 64: 3 stalls a chunk
    g = torch.Generator().manual_seed(1)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(run.device)

    qkv = tuple(torch.nn.functional.normalize(rnd(B, T, H, D), dim=-1).bfloat16() for _ in range(3))
    gates = tuple(torch.rand(B, T, H, generator=g).to(run.device) * c for c in (0.1, 1, 0.1))
    w = (rnd(B, H, D, hidden, scale=D**-0.5), rnd(B, H, hidden, D, scale=hidden**-0.5))
    state = MemoryState(w, tuple(torch.zeros_like(t) for t in w))
    config = dict(chunk_size=64, activation="silu", max_grad_norm=1.0, backend="gluon_cluster")
    with torch.no_grad():
        y, end = neural_memory_scan(*qkv, *gates, state, **config)
        with stalled(stall_ns):
            y_stalled, end_stalled = neural_memory_scan(*qkv, *gates, state, **config)
        torch.cuda.synchronize()
    pairs = zip((y, *end.weights, *end.momentum), (y_stalled, *end_stalled.weights, *end_stalled.momentum), strict=True)
    identical = all(torch.equal(a, b) for a, b in pairs)
    verdict = "identical" if identical else "DIFFERENT"
    print(f"gluon_cluster with its last CTA stalled {stall_ns:,} ns at every exchange: {verdict}", flush=True)
    if not identical:
        run.fail(f"the cluster kernel's result changes when one CTA reads its partners' slots {stall_ns} ns late")
    return {"stall_ns": stall_ns, "identical": identical}


def design_speed(run: Run, backend: str, key: str, supports, sizes: tuple, dtype, grid) -> None:
    """A scan design (`backend`) against the one-program scan: its self-check, the largest
    difference of the output and of the input gradients, and the time of the forward and
    of forward + backward (sizes: B, H, T, head dim, hidden, chunk). Not run, with the
    reason, where the design cannot run."""
    import torch.nn.functional as F

    from titans_plugin.kernels import MemoryState, neural_memory_scan, self_check

    B, H, T, D, hidden, chunk = sizes
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(run.device)

    q, k = (F.normalize(rnd(B, T, H, D), dim=-1).to(dtype) for _ in range(2))
    qkv = (q, k, rnd(B, T, H, D).to(dtype))
    gates = tuple(torch.rand(B, T, H, generator=g).to(run.device) * c for c in (0.1, 1, 0.1))
    w = (rnd(B, H, D, hidden) / D**0.5, rnd(B, H, hidden, D) / hidden**0.5)
    state = MemoryState(w, tuple(torch.zeros_like(t) for t in w))
    config = dict(chunk_size=chunk, activation="silu", max_grad_norm=1.0)
    reason = supports(q, state, **config)
    if reason is not None:
        run.results[key] = {"not_run": reason}
        print(f"{backend} not run: {reason}", flush=True)
        return
    sync = torch.cuda.synchronize if run.device == "cuda" else (lambda: None)
    with grid():
        # q.device, as dispatch keys it ("cuda:0"), so this is the check that gates the backend
        check = self_check.check(q.device, dtype, state, chunk, "silu", True, False, backend)
    print(check.message, flush=True)
    if not check.ok:
        run.fail(check.message)
    leaves = tuple(t.detach().requires_grad_() for t in qkv)
    weight = rnd(B, T, H, D)  # a fixed random functional of the output to differentiate
    outs, grads, rows = {}, {}, []
    with grid():
        for impl in ("triton", backend):
            scan = functools.partial(neural_memory_scan, state=state, **config, backend=impl)

            def forward(scan=scan):  # synchronised each call: the split checks its meetings on the host
                with torch.no_grad():
                    out = scan(*qkv, *gates)[0]
                sync()
                return out

            def train(scan=scan):
                y = scan(*leaves, *gates)[0]
                out = torch.autograd.grad((y.float() * weight).sum(), leaves)
                sync()
                return out

            outs[impl], grads[impl] = forward().float(), [t.float() for t in train()]
            for direction, step in (("forward", forward), ("forward+backward", train)):
                seconds = _time_s(step, sync, 1 if run.dry else 10)
                row = {"impl": impl, "direction": direction, "T": T, "B": B, "H": H, "seconds": seconds}
                rows.append({**row, "tokens_per_s": B * T / seconds})

    def relative(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

    difference = relative(outs[backend], outs["triton"])
    gradient_difference = max(relative(a, b) for a, b in zip(grads[backend], grads["triton"], strict=True))
    for row in rows:
        one = next(r for r in rows if r["impl"] == "triton" and r["direction"] == row["direction"])
        row["speedup"] = one["seconds"] / row["seconds"]
        print(
            f"{row['impl']} {row['direction']} T={T} B x H={B * H}: {row['tokens_per_s']:,.0f} tokens/s, "
            f"x{row['speedup']:.2f}"
        )
    print(
        f"{backend} against one-program: largest relative difference {difference:.1e} (output), "
        f"{gradient_difference:.1e} (gradients of q, k, v)",
        flush=True,
    )
    for what, value in (("output", difference), ("gradients", gradient_difference)):
        if not value <= 3e-2:
            run.fail(f"the {backend} scan's {what} differ from the one-program scan's by {value:.1e}")
    run.results[key] = {
        "self_check": check.message,
        "difference": difference,
        "gradient_difference": gradient_difference,
        "rows": rows,
    }
    if run.device == "cuda":  # what `auto` makes of it: its race between the checked designs
        from titans_plugin.kernels import design_race, resolve_backend

        chosen = resolve_backend("auto", q, state, **config)
        races = [r.message for r in design_race.races_for(q, state, **config, resets=False)]
        print(f"backend 'auto' runs {chosen!r} here" + "".join(f"\n  {m}" for m in races), flush=True)
        run.results[key]["auto"] = {"backend": chosen, "races": races}


def exchange(run: Run) -> None:
    """What a meeting of split programs costs (bench/exchange_bench.py): the global-memory
    meeting of the plain split and, on sm_90, the cluster design's exchange through
    distributed shared memory, each with and without its payload, every result checked.
    The roofline model's meeting terms are assumptions until this step has run."""
    import triton.language as tl

    from bench import exchange_bench

    if not hasattr(tl, "atomic_poll"):
        run.results["exchange"] = {"not_run": "this triton has no tl.atomic_poll (the meetings need triton >= 3.9)"}
        print(f"exchange not run: {run.results['exchange']['not_run']}", flush=True)
        return
    if run.dry:
        from devtools.threaded_grid import threaded_grid

        with threaded_grid():
            result = exchange_bench.measure(torch.device("cpu"), dry=True)
    else:
        result = exchange_bench.measure(torch.device(run.device))
    print(exchange_bench.report(result), flush=True)
    wrong = [f"{r['exchange']} {r['payload']} x{r['split']}" for r in result["rows"] if not r["correct"]]
    if wrong:
        run.fail(f"the exchange microbenchmark computed wrong sums: {', '.join(wrong)}")
    run.results["exchange"] = result


def _spills(run: Run) -> dict:
    """Spill stores per thread of the default kernels for this GPU (the compile report's)."""
    if run.dry:
        return {"fwd": 0, "bwd": 0}
    from titans_plugin.kernels.compile_report import Config, compile_kernel

    major, minor = torch.cuda.get_device_capability(0)
    arch = 90 if major >= 9 else 80
    cfg = Config(2, 64, 256, 64, torch.bfloat16, True)
    return {
        "fwd": compile_kernel("forward-train", cfg, arch).spill_stores,
        "bwd": compile_kernel("backward", cfg, arch).spill_stores,
    }


# -- 5. torchtitan steps ------------------------------------------------------------------------
def training(run: Run) -> None:
    from devtools.torchrun import losses, run_torchrun

    s = run.sizes
    rows = []
    names = ["debug_mag"] if run.dry else run.training
    variants = [(n.split(":")[0], n.endswith(":compile")) for n in names]
    for name, compiled in variants:
        args = ["--training.steps", str(s["steps"]), "--metrics.log_freq", "1", "--validation.no-enable"]
        args += ["--checkpoint.no-enable", "--titans.backend", "auto", "--lr_scheduler.warmup_steps", "2"]
        if run.dry:
            args += ["--training.seq_len", "128", "--training.local_batch_size", "2"]
            args += ["--training.mixed_precision_param", "float32"]
        else:
            args += ["--training.seq_len", "2048", "--training.local_batch_size", "8"]
            args += ["--training.mixed_precision_param", "bfloat16"]
        if compiled:
            args.append("--compile.enable")
        rc, log = run_torchrun(f"train_configs/{name}.toml", args, timeout=900)
        curve = losses(log)
        tps = [float(x.replace(",", "")) for x in re.findall(r"tps:\s*([\d,]+)", log)]
        memory = re.findall(r"memory:\s*([\d.]+)GiB", log)
        row = {"config": name, "compile": compiled, "ok": rc == 0 and len(curve) == s["steps"]}
        if row["ok"]:
            row |= {"first_loss": curve[1], "last_loss": curve[s["steps"]], "tokens_per_s": max(tps[1:] or tps)}
            row["peak_memory_gib"] = max(float(m) for m in memory) if memory else None
            loss = f"loss {curve[1]:.3f} -> {curve[s['steps']]:.3f}"
            print(f"{name} compile={compiled}: {loss}, {row['tokens_per_s']:,.0f} tokens/s", flush=True)
        else:
            run.fail(f"torchtitan {name} compile={compiled}: exit {rc}\n{log[-3000:]}")
        rows.append(row)
        run.results["training"] = rows
        run.save()


# -- 6. ring attention --------------------------------------------------------------------------
def ring_attention(run: Run) -> None:
    from titans_plugin.context_parallel import ring_attention as ra

    cases = [(torch.float32, 16)] if run.dry else [(torch.bfloat16, 64), (torch.bfloat16, 128), (torch.float16, 64)]
    rows = []
    for dtype, head_dim in cases:
        kernel = ra.FUSED_KERNELS[run.device]
        ok = ra.fused_kernel_matches(kernel, torch.device(run.device), dtype, head_dim)
        rows.append({"dtype": str(dtype), "head_dim": head_dim, "ok": ok})
        print(f"ring attention fused kernel {dtype} head dim {head_dim}: {'matches' if ok else 'MISMATCH'}")
        if not ok:
            run.fail(f"ring attention's fused kernel on {run.device} ({dtype}, head dim {head_dim})")
    run.results["ring_attention"] = rows


def report(r: dict) -> str:
    """The docs section for one run's results (steps that did not run are left out)."""
    env = r.get("environment") or {}
    verdict = (
        "**Passed.**"
        if not r["failures"]
        else f"**Failed** ({len(r['failures'])}): " + "; ".join(f.splitlines()[0] for f in r["failures"])
    )
    ran = ", ".join(f"{k} {v:.0f} s" for k, v in (r.get("step_seconds") or {}).items())
    lines = [
        f"### GPU acceptance, {r['date']}: {env.get('device')}, triton {env.get('triton')}",
        f"Command: `{r.get('command', 'python -m bench.gpu_acceptance')}`. {env}. Steps run: {ran}. {verdict}",
    ]
    if r.get("self_checks"):
        rows = [[x["message"], f"{x['max_error']:.1e}", f"{x['seconds']:.2f}"] for x in r["self_checks"]]
        lines.append(table(["self-check", "max error", "s"], rows))
    if r.get("precision"):
        names = list(r["precision"][0]["errors"])
        rows = [
            [x["dtype"].removeprefix("torch."), "on" if x["restarts"] else "off", x["clip"]]
            + [f"{x['errors'][n]:.1e}" for n in names]
            + [str(x["dk_worst_at"]), f"{x['clip_factor_there']:.5f}"]
            for x in r["precision"]
        ]
        lines.append(table(["inputs", "restarts", "clip", *names, "dk worst at", "clip factor there"], rows))
    if r.get("kernel_tests"):
        lines.append(f"Triton kernel tests on the GPU: {r['kernel_tests']}")
    if r.get("block_parity"):
        rows = [
            [x["pattern"], x["dtype"], f"{x['logits']:.1e}", f"{x['worst_gradient']:.1e}"] for x in r["block_parity"]
        ]
        lines.append(table(["block", "dtype", "logits error", "worst gradient error"], rows))
    speed_rows = (r.get("speed") or {}).get("rows", [])
    if speed_rows:
        rows = [
            [
                x["impl"],
                x["T"],
                x["B"],
                f"{x['tokens_per_s']:,.0f}",
                f"{x['tflops']:.2f}",
                "" if x["pct_peak"] is None else f"{x['pct_peak']:.1f}%",
                f"{x['measured_over_predicted']:.2f}" if "measured_over_predicted" in x else "",
            ]
            for x in speed_rows
        ]
        lines.append(table(["scan", "T", "B", "tokens/s", "TFLOP/s", "% bf16 peak", "measured / roofline"], rows))
    for key, name in (("split_speed", "Split-state scan"), ("cluster_speed", "Gluon cluster forward")):
        lines += _design_report(r.get(key) or {}, name)
    exchanged = r.get("exchange") or {}
    if "rows" in exchanged:
        from bench.exchange_bench import report as exchange_report

        lines.append("Meetings of split programs (`python -m bench.exchange_bench`):\n\n" + exchange_report(exchanged))
    elif exchanged:
        lines.append(f"Meetings of split programs: not run ({exchanged['not_run']}).")
    if r.get("training"):
        rows = [
            [x["config"], x["compile"], f"{x['first_loss']:.3f} -> {x['last_loss']:.3f}", f"{x['tokens_per_s']:,.0f}",
             x["peak_memory_gib"]] if x["ok"] else [x["config"], x["compile"], "failed", "", ""]
            for x in r["training"]
        ]  # fmt: skip
        lines.append(table(["config", "compile", "loss first -> last", "tokens/s", "peak GiB"], rows))
    if r.get("ring_attention"):
        rows = [[x["dtype"], x["head_dim"], x["ok"]] for x in r["ring_attention"]]
        lines.append(table(["ring attention", "head dim", "matches"], rows))
    return "\n\n".join(lines)


def _design_report(design: dict, name: str) -> list[str]:
    if "not_run" in design:
        return [f"{name}: not run ({design['not_run']})."]
    if not design:
        return []
    text = (f"{name}: {design['self_check']}; against the one-program scan, largest relative "
            f"difference {design['difference']:.1e} (output) and {design['gradient_difference']:.1e} "
            "(gradients of q, k, v).")  # fmt: skip
    rows = [
        [x["impl"], x["direction"], x["T"], x["B"] * x["H"], f"{x['tokens_per_s']:,.0f}", f"{x['speedup']:.2f}"]
        for x in design["rows"]
    ]
    if "stall" in design and "not_run" not in design["stall"]:
        verdict = "identical to" if design["stall"]["identical"] else "**different** from"
        text += f" With the last CTA stalled {design['stall']['stall_ns']:,} ns at every exchange: {verdict} unstalled."
    if "auto" in design:
        text += (
            f" Backend `auto` runs `{design['auto']['backend']}` here"
            + "".join(f"; {m}" for m in design["auto"]["races"])
            + "."
        )
    return [text, table(["scan", "direction", "T", "B x H", "tokens/s", "speedup"], rows)]


STEPS = {
    f.__name__: f
    for f in (
        environment,
        self_checks,
        precision,
        block_parity,
        speed,
        split_speed,
        cluster_speed,
        exchange,
        training,
        ring_attention,
        kernel_tests,
    )
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="toy sizes in the Triton interpreter, on CPU")
    p.add_argument("--json", help="where to write the results (default: docs/gpu_acceptance.json on a GPU)")
    p.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of: {', '.join(STEPS)}")
    p.add_argument(
        "--train", default=",".join(TRAINING), help="torchtitan runs of the training step: CONFIG or CONFIG:compile"
    )
    p.add_argument("--kernel-test-workers", type=int, default=0, help="pytest-xdist workers for the kernel tests")
    p.add_argument("--render", nargs="+", metavar="JSON", help="write docs/benchmarks.md from saved results; no GPU")
    p.add_argument("--dtypes", default="bfloat16,float32", help="of the self-check and the block parity")
    p.add_argument("--clips", default="", help="the precision step's clip thresholds (default: the self-check's)")
    a = p.parse_args(argv)
    if a.render:
        runs = []
        for name in a.render:
            with open(name) as f:
                runs.append(json.load(f))
        write_doc_section("benchmarks.md", "gpu-acceptance", "\n\n".join(report(r) for r in runs))
        return 0
    allowed = ("bfloat16", "float16", "float32")
    if any(x not in allowed for x in a.dtypes.split(",")):
        p.error(f"--dtypes: {a.dtypes!r}; allowed: comma-separated of {', '.join(allowed)}")
    steps = [x for x in a.steps.split(",") if x]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        p.error(f"--steps: unknown {unknown}; allowed: {', '.join(STEPS)}")
    train = [x for x in a.train.split(",") if x]
    if sorted(set(train) - set(TRAINING)):
        p.error(f"--train: unknown {sorted(set(train) - set(TRAINING))}; allowed: {', '.join(TRAINING)}")
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    from titans_plugin.kernels import self_check

    run = Run(a.dry_run, train, a.kernel_test_workers)
    run.results["command"] = " ".join(["python -m bench.gpu_acceptance", *(argv if argv is not None else sys.argv[1:])])
    run.dtypes = [getattr(torch, x) for x in a.dtypes.split(",")]
    run.clips = [float(x) for x in a.clips.split(",") if x] or [self_check.CLIP]
    run.path = a.json or (None if a.dry_run else os.path.join(REPO, "docs", "gpu_acceptance.json"))
    run.results["step_seconds"] = {}
    for name in ["environment"] + [x for x in steps if x != "environment"]:  # in the order given
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            STEPS[name](run)
        except Exception as exc:  # a step that crashes is a failure, and the others still run
            run.fail(f"{name} raised {exc!r}")
            run.results.setdefault(name, None)
        run.results["step_seconds"][name] = round(time.perf_counter() - start, 1)
        run.save()
    if not a.dry_run and not a.no_write:
        write_doc_section("benchmarks.md", "gpu-acceptance", report(run.results))
    print(
        "GPU acceptance: " + ("passed" if not run.results["failures"] else f"FAILED ({len(run.results['failures'])})")
    )
    return 1 if run.results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
