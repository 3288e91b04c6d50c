"""Packed documents under torchrun (gloo): with titans.attn_mask_type = "block_causal",
FSDP2 and TP match one process for MAC, MAG and MAL, the masks change the run (the windows
hold three documents each), and validation runs on the packed validation corpus."""

import math
import re

import pytest

from devtools.parity import make_seed_checkpoint, run_layout, write_periodic_corpus

STEPS = 4
RTOL = 2e-4  # as test_parallel_parity.py
PACKED = ["--titans.attn_mask_type", "block_causal"]
# three documents per 129-token window: boundaries inside chunks (32) and the segment (128)
DOC_LENGTHS = (40, 50, 39)
VALIDATION = [
    "--validation.enable",
    "--validation.freq",
    "2",
    "--validation.steps",
    "2",
    "--validation.seq_len",
    "128",
    "--validation.local_batch_size",
    "4",
]
VALIDATE_RE = re.compile(r"validate step:\s*(\d+)\s+\S*loss:\s*([-\w.]+)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_periodic_corpus(str(tmp_path_factory.mktemp("data") / "packed.jsonl"), DOC_LENGTHS)


@pytest.mark.parametrize("pattern", ["CA", "GA", "LA"])
def test_packed_layouts_match_single_process(pattern, corpus, tmp_path):
    seed = make_seed_checkpoint(str(tmp_path), corpus, pattern)
    reference, dump = run_layout(str(tmp_path), corpus, pattern, "single", STEPS, seed, extra=PACKED)
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert reference[STEPS] < reference[1]
    if pattern == "CA":  # the masks matter: without them the same windows give another run
        causal, _ = run_layout(str(tmp_path), corpus, pattern, "single", STEPS, seed, name=f"{pattern}_causal")
        assert causal[1] != reference[1], "block_causal must change what the model computes on packed windows"
    for layout in ["fsdp2", "tp2"]:
        curve, _ = run_layout(str(tmp_path), corpus, pattern, layout, STEPS, seed, extra=PACKED)
        for step, loss in reference.items():
            assert abs(curve[step] - loss) <= RTOL * abs(loss), (layout, step, curve, reference)


def test_validation_runs_with_packed_documents(corpus, tmp_path):
    """The validator builds the document ids through the model, like the trainer: on the
    packed stories of the validation split its loss differs from the causal model's."""
    found = {}
    for name, extra in (("packed", PACKED), ("causal", [])):
        _, log = run_layout(
            str(tmp_path), corpus, "GA", "single", STEPS, None, extra=extra + VALIDATION, name=name, log=True
        )
        found[name] = {int(s): float(v) for s, v in VALIDATE_RE.findall(log)}
        assert sorted(found[name]) == [1, 2, 4], log[-3000:]  # torchtitan validates at step 1 and every freq
        assert all(math.isfinite(v) and v > 0 for v in found[name].values())
    assert found["packed"][1] != found["causal"][1]
