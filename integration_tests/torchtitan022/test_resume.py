"""Checkpoint at step k, stop, resume: the following losses equal the uninterrupted run's,
also when the checkpoint was saved under FSDP2 and is resumed under TP, and from one
process to context parallel and back."""

import os

import pytest

from devtools.parity import make_seed_checkpoint, run_layout, write_periodic_corpus

PATTERN = "CA"
K, STEPS = 3, 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("resume"))
    corpus = write_periodic_corpus(os.path.join(work, "periodic.jsonl"))
    seed = make_seed_checkpoint(work, corpus, PATTERN)
    full, dump = run_layout(
        work, corpus, PATTERN, "single", STEPS, seed, extra=["--checkpoint.interval", str(K)], name="uninterrupted"
    )
    assert sorted(full) == list(range(1, STEPS + 1))
    return work, corpus, seed, full, dump


def test_resume_same_layout_is_exact(setup):
    work, corpus, _, full, dump = setup
    step_k = os.path.join(dump, "checkpoint", f"step-{K}")
    resumed, _ = run_layout(work, corpus, PATTERN, "single", STEPS, step_k, name="resumed")
    assert sorted(resumed) == list(range(K + 1, STEPS + 1)), resumed  # it continued from k
    for step in resumed:
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=0)


def test_checkpoint_saved_under_fsdp_resumes_under_tp(setup):
    work, corpus, seed, full, _ = setup
    # Same training.steps as the run it is compared with: the LR schedule depends on it.
    _, fsdp_dump = run_layout(
        work, corpus, PATTERN, "fsdp2", STEPS, seed, extra=["--checkpoint.interval", str(K)], name="fsdp_first_k"
    )
    step_k = os.path.join(fsdp_dump, "checkpoint", f"step-{K}")
    assert os.path.exists(step_k)
    # torchtitan 0.2.2 cannot reshard the dataloader's position to another data-parallel
    # degree; model, optimizer and scheduler state reshard (docs/parallelism.md).
    resumed, _ = run_layout(
        work,
        corpus,
        PATTERN,
        "tp2",
        STEPS,
        step_k,
        name="tp_resumed",
        extra=["--checkpoint.exclude_from_loading", "dataloader"],
    )
    assert sorted(resumed) == list(range(K + 1, STEPS + 1)), resumed
    for step in resumed:
        assert resumed[step] == pytest.approx(full[step], rel=2e-4, abs=0)


def test_resume_across_context_parallel_and_back(setup):
    """single -> cp = 2: the one-process checkpoint resumed with each sequence split over
    two ranks; cp = 2 -> single: a checkpoint saved under cp resumed by one process. Both
    continue the uninterrupted run to its printed digits (the data-parallel degree is 1
    in both layouts, so the dataloader's position carries over too)."""
    work, corpus, seed, full, dump = setup
    step_k = os.path.join(dump, "checkpoint", f"step-{K}")
    on_cp, _ = run_layout(work, corpus, PATTERN, "cp2", STEPS, step_k, name="cp_resumed")
    _, cp_dump = run_layout(
        work, corpus, PATTERN, "cp2", STEPS, seed, extra=["--checkpoint.interval", str(K)], name="cp_first_k"
    )
    cp_step_k = os.path.join(cp_dump, "checkpoint", f"step-{K}")
    back, _ = run_layout(work, corpus, PATTERN, "single", STEPS, cp_step_k, name="single_after_cp")
    for resumed in (on_cp, back):
        assert sorted(resumed) == list(range(K + 1, STEPS + 1)), resumed
        for step in resumed:
            assert f"{resumed[step]:.5f}" == f"{full[step]:.5f}", (step, resumed, full)
