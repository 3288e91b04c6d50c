"""bench.common.store: runs stored at the same moment by several processes are all kept."""

import multiprocessing

from bench.common import read_store, store


def _writer(path: str, who: int, n: int) -> None:
    for i in range(n):
        store(path, "runs", f"{who}/{i}", {"value": i})


def test_concurrent_writers_keep_every_run(tmp_path):
    path = str(tmp_path / "runs.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, who, 40)) for who in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    stored = read_store(path)["runs"]
    assert len(stored) == 3 * 40
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind
