"""titans.carry_memory on torchtitan 0.3.0 under torchrun (gloo): FSDP2, tensor parallel and
compiled blocks under full activation checkpointing (on torch 2.14) match one process, and
the carried forwards differ from a run without it (model/carry.py).
Every window is the same (0.3.0 deals windows to data-parallel ranks in another order than
one process reads them); the 0.2.2 test carries distinct windows per row."""

from devtools.parity import assert_carried_memory_parity, write_periodic_corpus


def test_carried_memories_match_single_process_under_fsdp_tp_and_compiled_checkpointing(tmp_path):
    corpus = write_periodic_corpus(str(tmp_path / "carried.jsonl"))
    assert_carried_memory_parity(str(tmp_path), corpus, "GA", ["fsdp2", "tp2", "single_compile_ac"])
