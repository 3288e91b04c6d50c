"""Compile the Triton memory-scan kernels for H100 (sm_90) and A100 (sm_80) without a GPU,
and report what each compiled kernel costs on chip.

    python -m titans_plugin.kernels.compile_report            # defaults x2 archs, variations on sm_90
    python -m titans_plugin.kernels.compile_report --ci       # what CI compiles
    python -m titans_plugin.kernels.compile_report --full     # every supported configuration
    python -m titans_plugin.kernels.compile_report --write docs/kernels.md

Per kernel and configuration: registers per thread, spill stores/loads and stack (bytes
per thread, from ptxas -v), shared memory against the per-block limit, and the tensor-core
instructions in the SASS (HGMMA on sm_90, HMMA on sm_80, with their operand type) next to
the static SASS instruction count. Needs only the triton wheel (it bundles ptxas and
nvdisasm); no CUDA driver.
"""

import argparse
import collections
import dataclasses
import itertools
import json
import os
import pathlib
import re
import subprocess
import tempfile

import torch

from .triton_backend.compile import KERNELS, TYPE_NAME, compile_for, reported_kernels
from .triton_backend.config import checkpoint_interval, kernel_meta, state_size

# The Gluon cluster forward (gluon_backend/), compiled for sm_90 where it runs the configuration.
CLUSTER_KERNELS = ("cluster-forward-train",)
# Per-block shared-memory limits (opt-in maximum), bytes.
SHARED_LIMIT = {90: 232_448, 80: 166_912}


@dataclasses.dataclass(frozen=True)
class Config:
    depth: int
    head_dim: int
    hidden: int  # 0 at depth 1
    chunk: int
    dtype: torch.dtype
    clip: bool
    resets: bool = False  # the variant that restarts rows (packed documents)

    def label(self) -> str:
        width = f"D{self.head_dim}" + (f" h{self.hidden}" if self.depth == 2 else "")
        label = f"depth {self.depth} {width} C{self.chunk} {TYPE_NAME[self.dtype]} clip {'on' if self.clip else 'off'}"
        return label + (" restarts" if self.resets else "")


@dataclasses.dataclass
class Report:
    kernel: str  # forward-train, forward-infer, backward
    config: Config
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    tensor_core: dict  # instruction (e.g. HGMMA.64x16x16.F32.BF16) -> static count
    sass_instructions: int
    wgmma_serialized: bool  # ptxas: wgmma waits at a call boundary (no async overlap across it)
    cluster_ctas: int = 0  # a Gluon cluster kernel: CTAs per cluster (0: not a cluster kernel)
    cluster_barriers: int = 0  # static `barrier.cluster.arrive` in its PTX (the chunk loop's, plus 2)
    dsmem_loads: int = 0  # static `ld.shared::cluster` in its PTX (reads of the partners' slots)

    @property
    def fits(self) -> bool:
        return self.shared <= SHARED_LIMIT[self.arch]

    @property
    def tensor_core_types(self) -> set:
        """Operand types of the tensor-core instructions (BF16, F16, TF32, ...)."""
        return {name.rsplit(".", 1)[-1] for name in self.tensor_core}


DEFAULT = Config(2, 64, 256, 64, torch.bfloat16, True)


def variations() -> list[Config]:
    """One-axis variations of the default configuration (compiled for the first arch only
    in the default report; --full compiles everything for every arch)."""
    rows = [Config(2, 64, 256, c, torch.bfloat16, True) for c in (16, 32, 128)]
    rows += [
        Config(2, 64, 128, 64, torch.bfloat16, True),
        Config(2, 128, 256, 64, torch.bfloat16, True),
        Config(2, 128, 512, 64, torch.bfloat16, True),
        Config(1, 128, 0, 64, torch.bfloat16, True),
    ]
    rows += [Config(2, 64, 256, 64, dt, True) for dt in (torch.float16, torch.float32)]
    rows += [Config(2, 64, 256, 64, torch.bfloat16, False)]
    return rows + [Config(2, 64, 256, 64, torch.bfloat16, True, resets=True)]


def ci() -> list[Config]:
    """What CI compiles: depth 1 and 2 at the default sizes, bf16."""
    return [DEFAULT, Config(1, 64, 0, 64, torch.bfloat16, True)]


def full() -> list[Config]:
    """Every supported configuration: depth 1 and 2, head dim 64 and 128, hidden 2x and 4x,
    chunk 16 to 128, three input types, clip on and off."""
    out = []
    for depth, d, chunk, dtype, clip in itertools.product(
        (1, 2), (64, 128), (16, 32, 64, 128), TYPE_NAME, (True, False)
    ):
        for hidden in (2 * d, 4 * d) if depth == 2 else (0,):
            out.append(Config(depth, d, hidden, chunk, dtype, clip))
    return out


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _ptxas_report(ptx: str, arch: int) -> dict:
    """Registers (max), spills (summed) and stack (max) over the kernel and the functions
    it calls, from ptxas -v on the kernel's PTX. The triton wheel's newest bundled ptxas
    reads the PTX version triton emits."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        ptxas = _tool("ptxas-blackwell") if os.path.exists(_tool("ptxas-blackwell")) else _tool("ptxas")
        gpu = "sm_90a" if arch == 90 else f"sm_{arch}"
        out = subprocess.run(
            [ptxas, "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(d, "k.o")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr

    def total(pattern, combine=sum):
        """Over every function ptxas reports (the kernel and its non-inlined calls)."""
        found = [int(x) for x in re.findall(pattern, out)]
        if not found:
            raise RuntimeError(f"ptxas -v output without {pattern!r}:\n{out}")
        return combine(found)

    return {
        "registers": total(r"Used (\d+) registers", max),
        "spill_stores": total(r"(\d+) bytes spill stores"),
        "spill_loads": total(r"(\d+) bytes spill loads"),
        "stack": total(r"(\d+) bytes stack frame", max),
        "wgmma_serialized": "wgmma.mma_async instructions are serialized" in out,
    }


def _sass_counts(cubin: bytes) -> tuple[dict, int]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        sass = subprocess.run([_tool("nvdisasm"), path], capture_output=True, text=True, check=True).stdout
    tensor_core = collections.Counter(re.findall(r"\b((?:HGMMA|HMMA)\.[\w.]+)", sass))
    n_instr = sum(1 for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+\S", line))
    return dict(tensor_core), n_instr


def cluster_kernels(cfg: Config, arch: int) -> tuple[str, ...]:
    """The Gluon cluster kernel where it runs this configuration on sm_<arch> with this
    triton (gluon_backend/cluster.py), else nothing."""
    from .gluon_backend.cluster import cluster_problem, gluon_problem

    problem = cluster_problem(
        cfg.depth, cfg.head_dim, cfg.hidden, cfg.head_dim, cfg.chunk, cfg.dtype, cfg.resets
    )  # fmt: skip
    return CLUSTER_KERNELS if arch == 90 and problem is None and gluon_problem() is None else ()


def compile_kernel(kernel: str, cfg: Config, arch: int) -> Report:
    """kernel: 'forward-train' (saves checkpoints), 'forward-infer', 'backward',
    'split-forward-train' or 'split-backward' (compile.REPORT_SPLIT programs per (batch,
    head)), or 'cluster-forward-train' (the Gluon cluster forward, sm_90 only)."""
    cluster = {}
    if kernel in CLUSTER_KERNELS:
        from .gluon_backend.cluster import UNITS_PER_CTA, compile_cluster

        n_ctas = cfg.hidden // UNITS_PER_CTA
        compiled = compile_cluster(n_ctas, cfg.chunk, "silu", cfg.clip)
        ptx = compiled.asm["ptx"]
        cluster = {
            "cluster_ctas": n_ctas,
            "cluster_barriers": ptx.count("barrier.cluster.arrive"),
            "dsmem_loads": ptx.count("ld.shared::cluster"),
        }
    else:
        every = checkpoint_interval(state_size(cfg.head_dim, cfg.hidden, cfg.head_dim), cfg.chunk)
        meta = kernel_meta(
            cfg.head_dim, cfg.hidden, cfg.head_dim, cfg.chunk, "silu", cfg.clip, cfg.dtype, every, arch, cfg.resets
        )
        compiled = compile_for(kernel, meta, cfg.dtype, arch)
    tensor_core, n_instr = _sass_counts(compiled.asm["cubin"])
    return Report(
        kernel,
        cfg,
        arch,
        shared=compiled.metadata.shared,
        tensor_core=tensor_core,
        sass_instructions=n_instr,
        **_ptxas_report(compiled.asm["ptx"], arch),
        **cluster,
    )


def _row(r: Report) -> list:
    tc = ", ".join(f"{n} x{c}" for n, c in sorted(r.tensor_core.items())) or "none"
    kernel = r.kernel
    if r.cluster_ctas:
        static = f"static: {r.cluster_barriers} cluster barriers, {r.dsmem_loads} DSMEM loads"
        kernel += f" ({r.cluster_ctas} CTAs; {static})"
    return [
        kernel,
        r.config.label(),
        f"sm_{r.arch}",
        r.registers,
        r.spill_stores,
        r.spill_loads,
        r.stack,
        f"{r.shared:,} / {SHARED_LIMIT[r.arch]:,}",
        "yes" if r.fits else "**NO**",
        tc,
        r.sass_instructions,
        "yes" if r.wgmma_serialized else "no",
    ]


HEADER = [
    "kernel",
    "configuration",
    "arch",
    "regs",
    "spill st (B)",
    "spill ld (B)",
    "stack (B)",
    "shared (B) / limit",
    "fits",
    "tensor-core instructions (static)",
    "SASS instr (static)",
    "wgmma serialized at calls",
]


def to_json(r: Report) -> dict:
    out = dataclasses.asdict(r)
    out["config"] = {**out["config"], "dtype": TYPE_NAME[r.config.dtype], "label": r.config.label()}
    out["fits"] = r.fits
    out["tensor_core_types"] = sorted(r.tensor_core_types)
    return out


def from_json(row: dict) -> Report:
    """A report as `to_json` wrote it (for rewriting the docs table without recompiling)."""
    config = {k: v for k, v in row["config"].items() if k != "label"}
    config["dtype"] = next(dtype for dtype, name in TYPE_NAME.items() if name == config["dtype"])
    fields = {f.name for f in dataclasses.fields(Report)} - {"config"}
    return Report(config=Config(**config), **{k: v for k, v in row.items() if k in fields})


def markdown(reports: list[Report]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(str(c) for c in _row(r)) + " |" for r in reports]
    return "\n".join(lines)


def _compile_job(job: tuple) -> Report:
    kernel, cfg, arch = job
    return compile_kernel(kernel, cfg, arch)


def run(configs: list[Config], archs=(90, 80), kernels=None, progress=print, jobs: int = 1) -> list[Report]:
    """Compile every (configuration, arch, kernel) (kernels: default every reported one; the
    Gluon cluster forward is added where it runs the configuration);
    jobs > 1 compiles in that many processes (ptxas is single-threaded), rows in the same
    order either way."""
    todo = [
        (kernel, cfg, arch)
        for cfg, arch in itertools.product(configs, archs)
        for kernel in (kernels or reported_kernels()) + cluster_kernels(cfg, arch)
    ]
    if jobs > 1:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            reports = list(pool.map(_compile_job, todo))
    else:
        reports = [_compile_job(job) for job in todo]
    for r in reports:
        progress(" | ".join(str(c) for c in _row(r)))
    return reports


SCOPE = {
    "default": "the default configuration and depth 1 for both architectures (the split-state scan too, and "
    "the Gluon cluster forward on sm_90), one-axis variations of the default for sm_90, and the default with "
    "restarts (packed documents)",
    "ci": "what CI compiles: depth 1 and 2 at the default sizes, bf16, both architectures",
    "full": "every supported configuration",
}
NOTES = (
    "(fp16 warpgroup MMAs print without an operand suffix, `HGMMA...F32`; fp32 inputs use no tensor cores by "
    "design: IEEE fp32 products are the exact path, and their kernels spill heavily; train in bf16. The restart "
    "variant holds two more pointers through the chunk loop: 12 B of forward spills per thread on sm_90.)"
)


def _scope(reports: list[Report]) -> str:
    """Which of the runs in SCOPE these reports are, told by their configurations."""
    labels = {r.config.label() for r in reports}
    if labels == {c.label() for c in ci()}:
        return "ci"
    if labels == {c.label() for c in [*ci(), *variations()]}:
        return "default"
    return "full"


def write_section(path: str, reports: list[Report], command: str, scope: str) -> None:
    """Replace the text between the report markers in `path` (a docs page) with the table
    of `reports`, saying what produced it and what it covers."""
    begin, end = "<!-- compile-report:begin -->", "<!-- compile-report:end -->"
    text = pathlib.Path(path).read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no {begin} ... {end} markers")
    import datetime

    over = sum(not r.fits for r in reports)
    limit = "all within the shared-memory limit" if not over else f"**{over} over the shared-memory limit**"
    stamp = f"`{command}` (triton {__import__('triton').__version__}, {datetime.date.today()}, no GPU needed)"
    intro = f"Produced by {stamp}: {SCOPE[scope]}. {len(reports)} kernels, {limit}. {NOTES}"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w") as fh:
        fh.write(f"{head}{begin}\n{intro}\n\n{markdown(reports)}\n{end}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="every supported configuration (hours on 2 cores)")
    p.add_argument("--ci", action="store_true", help="only what CI compiles (depth 1 and 2, default sizes, bf16)")
    p.add_argument("--json", metavar="PATH", help="also write the reports as JSON")
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SHARED_LIMIT))
    p.add_argument("--write", metavar="DOC", help="put the table between the compile-report markers of DOC")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes (one per core)")
    p.add_argument("--from-json", metavar="PATH", help="report what an earlier --json run wrote; compile nothing")
    args = p.parse_args()
    print(" | ".join(HEADER))
    if args.from_json:
        with open(args.from_json) as fh:
            reports = [from_json(row) for row in json.load(fh)]
        for r in reports:
            print(" | ".join(str(c) for c in _row(r)))
    elif args.full:
        reports = run(full(), tuple(args.arch), jobs=args.jobs)
    else:
        reports = run(ci(), tuple(args.arch), jobs=args.jobs)
        if not args.ci:
            # the variations for the launched kernels only (the split scan: the CI configurations)
            reports += run(variations(), tuple(args.arch[:1]), kernels=KERNELS, jobs=args.jobs)
    bad = [r for r in reports if not r.fits]
    print(
        f"\n{len(reports)} kernels {'read' if args.from_json else 'compiled'}, {len(bad)} over the shared-memory limit"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([to_json(r) for r in reports], fh, indent=1)
    if args.write:
        scope = _scope(reports)
        cmd = "python -m titans_plugin.kernels.compile_report" + {"full": " --full", "ci": " --ci"}.get(scope, "")
        write_section(args.write, reports, cmd, scope)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
