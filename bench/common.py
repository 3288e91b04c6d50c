"""Helpers shared by the benchmark scripts: subprocess workers, peak memory, doc sections."""

import json
import os
import pathlib
import platform
import re
import resource
import subprocess
import sys
import time

from devtools.paths import REPO


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(step, warmup: int = 1, iters: int = 3) -> tuple[float, int]:
    """Mean seconds per call of step(), and the peak RSS growth over the process's
    resident size before the first call (inputs and model already allocated)."""
    base = rss_bytes()
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters, peak_rss_bytes() - base


def seconds_per_call(fn, iters: int, cuda: bool = True) -> float:
    """Mean seconds per call of fn() after one untimed call (compiles, warms caches): timed
    with CUDA events on the GPU, with the wall clock otherwise."""
    import torch

    fn()
    if not cuda:
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def run_worker(module: str, args: list[str], python: str | None = None, timeout: int = 1800) -> dict:
    """Run `python -m module --worker ...` from the repository root in a fresh process
    (clean peak memory); returns the JSON it printed last."""
    cmd = [python or sys.executable, "-m", module, "--worker", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine(dated: bool = True) -> str:
    """Cores, CPU model, torch and OS (and today's date, unless the rows carry their own)."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    import torch

    text = f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {platform.system()}"
    return text + (f", measured {time.strftime('%Y-%m-%d')}" if dated else "")


def write_doc_section(doc: str, name: str, text: str) -> None:
    """Replace (or append) the block between <!-- bench:name --> markers in docs/doc."""
    path = os.path.join(REPO, "docs", doc)
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    content = pathlib.Path(path).read_text() if os.path.exists(path) else ""
    if start in content:
        content = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, content, flags=re.S)
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(content)


def read_store(path: str) -> dict:
    """A benchmark's stored runs (docs/<name>.json), or {} before the first."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def store(path: str, section: str, key: str, value: dict) -> None:
    """Store one run under stored[section][key]. The read, change and write hold a lock on
    path + ".lock", so runs stored at the same moment by other processes are all kept, and
    the file is replaced whole, so a run stopped mid-write never loses those before it."""
    import fcntl
    import tempfile

    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = read_store(path)
        stored.setdefault(section, {})[key] = value
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def publish(doc: str, page: str, section: str, write: bool, figure=None) -> None:
    """Print a result block; unless told not to, draw its figure (figure(path_of_png) for the
    PNG the block links to) and put the block into docs/<page> between its markers."""
    print(doc)
    if not write:
        return
    if figure is not None:
        png = re.search(r"\]\(([\w.-]+\.png)\)", doc)
        assert png, "a block with a figure links its PNG"
        figure(os.path.join(REPO, "docs", png.group(1)))
    write_doc_section(page, section, doc)
