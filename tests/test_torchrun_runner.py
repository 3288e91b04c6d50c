"""devtools/torchrun.py, the runner of every torchrun test: a rank's native crash is run once
more and reported; any other failure is returned as it is."""

import pytest

from devtools import torchrun

CRASH = (1, "traceback : Signal 6 (SIGABRT) received by PID 7")


def runner(monkeypatch, results):
    calls = []

    def once(train_args, nproc, timeout, env):
        calls.append(train_args)
        return results[len(calls) - 1]

    monkeypatch.setattr(torchrun, "_run_train_once", once)
    return calls


def test_a_native_crash_is_run_once_more_and_reported(monkeypatch):
    calls = runner(monkeypatch, [CRASH, (0, "step: 1 loss: 2.0")])
    with pytest.warns(UserWarning, match="a rank crashed, running again(.|\n)*SIGABRT"):
        assert torchrun.run_train(["--x"]) == (0, "step: 1 loss: 2.0")
    assert calls == [["--x"], ["--x"]]


def test_a_crash_twice_fails(monkeypatch):
    runner(monkeypatch, [CRASH, CRASH])
    with pytest.warns(UserWarning, match="a rank crashed"):
        assert torchrun.run_train([])[0] == 1


def test_a_python_error_is_not_run_again(monkeypatch):
    calls = runner(monkeypatch, [(1, "ValueError: titans.pattern: unknown layer type"), (0, "")])
    assert torchrun.run_train([])[0] == 1
    assert len(calls) == 1


def test_other_ranks_errors_are_read_from_torchruns_log_folder(tmp_path):
    for rank, text in (("0", "rank zero"), ("1", "rank one failed"), ("2", "")):
        folder = tmp_path / "run_id" / "attempt_0" / rank
        folder.mkdir(parents=True)
        (folder / "stderr.log").write_text(text)
    out = torchrun.other_ranks_errors(str(tmp_path))
    assert "rank one failed" in out
    assert "rank 1 stderr" in out
    assert "rank zero" not in out  # the console has rank 0 already
    assert "rank 2" not in out  # nothing to say
