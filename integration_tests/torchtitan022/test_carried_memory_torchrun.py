"""titans.carry_memory under torchrun (gloo): each rank carries its own rows' memories from
one training forward to the next, so FSDP2, tensor parallel, DDP (finding the unused
learned initial memory) and full activation checkpointing match one process, and the
carried forwards differ from a run without it (model/carry.py)."""

from devtools.parity import assert_carried_memory_parity, write_periodic_corpus


def test_carried_memories_match_single_process_under_fsdp_tp_ddp_and_checkpointing(tmp_path):
    corpus = write_periodic_corpus(str(tmp_path / "carried.jsonl"), (40, 50, 39))
    assert_carried_memory_parity(str(tmp_path), corpus, "CA", ["fsdp2", "tp2", "ddp2", "single_ac_full"])
