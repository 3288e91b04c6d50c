"""FSDP2 x TP, context parallel and context x tensor parallel against one process for every
memory block type, and for MAC also FSDP2 and TP alone, DDP, HSDP, activation checkpointing
and context parallel with contiguous shards under activation checkpointing (torchrun, gloo)."""

import pytest

from devtools.parity import make_seed_checkpoint, run_layout, write_periodic_corpus

STEPS = 4
# fp32 throughout; reductions in a different order differ in the last bits and grow a
# little over steps
RTOL = 2e-4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_periodic_corpus(str(tmp_path_factory.mktemp("data") / "periodic.jsonl"))


@pytest.mark.parametrize("pattern", ["CA", "GA", "LA", "M"])
def test_layouts_match_single_process(pattern, corpus, tmp_path):
    seed = make_seed_checkpoint(str(tmp_path), corpus, pattern)
    reference, _ = run_layout(str(tmp_path), corpus, pattern, "single", STEPS, seed)
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert reference[STEPS] < reference[1]
    # Every block type under the 2-D layouts (FSDP2 x TP, CP x TP) and CP; MAC also under each
    # axis alone, DDP (with and without gradient accumulation) and HSDP, and with activation
    # checkpointing (it recomputes; the numbers must not move), compiled too.
    layouts = ["fsdp2_tp2", "cp2", "cp2_tp2"]
    if pattern == "CA":
        layouts += [
            "fsdp2",
            "tp2",
            "ddp2",
            "ddp2_accum",
            "hsdp",
            "single_ac_full",
            "single_ac_selective",
            "cp2_contiguous_ac",
            "single_compile_ac",
        ]
    for layout in layouts:
        curve, _ = run_layout(str(tmp_path), corpus, pattern, layout, STEPS, seed)
        for step, loss in reference.items():
            assert abs(curve[step] - loss) <= RTOL * abs(loss), (layout, step, curve, reference)
