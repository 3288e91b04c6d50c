"""Shared set-up for parallel parity runs: one seed checkpoint, one periodic corpus.

Every layout must start from the same weights and see the same global batch:
- weights: torchtitan's seed checkpoint (written by one process, loaded by every layout);
- data: 4 distinct windows repeated, each made of documents that tokenise (with BOS and
  EOS) to exactly one training window, seq_len + 1 tokens. Any split of the data across data-parallel ranks
  then gives every rank the same 4 windows in order; with a local batch that is a multiple
  of 4, every global batch holds each window equally often, whatever the layout, at every
  step, before and after a resume.
"""

import json
import os
import random
import shutil

from devtools.torchrun import losses, run_torchrun
from titans_plugin.conversion.stack import torchtitan_release

CONFIG = "train_configs/debug_mac.toml"
SEQ_LEN = 128
GLOBAL_BATCH = 8
LAYOUTS = {  # name: (processes, extra arguments)
    "single": (1, ["--training.local_batch_size", "8"]),
    "fsdp2": (2, ["--training.local_batch_size", "4", "--parallelism.data_parallel_shard_degree", "2"]),
    "tp2": (
        2,
        [
            "--training.local_batch_size",
            "8",
            "--parallelism.tensor_parallel_degree",
            "2",
            "--parallelism.data_parallel_shard_degree",
            "1",
        ],
    ),
    "fsdp2_tp2": (
        4,
        [
            "--training.local_batch_size",
            "4",
            "--parallelism.data_parallel_shard_degree",
            "2",
            "--parallelism.tensor_parallel_degree",
            "2",
        ],
    ),
    # plain data parallel (torchtitan's DDP branch): two full replicas, gradients all-reduced
    "ddp2": (
        2,
        [
            "--training.local_batch_size",
            "4",
            "--parallelism.data_parallel_replicate_degree",
            "2",
            "--parallelism.data_parallel_shard_degree",
            "1",
        ],
    ),
    # DDP with gradient accumulation: 2 micro-batches of 2 per rank (torchtitan 0.2.2 reduces
    # after each, so .grad holds the first's reduced sum when the second is reduced)
    "ddp2_accum": (
        2,
        [
            "--training.local_batch_size",
            "2",
            "--training.global_batch_size",
            "8",
            "--parallelism.data_parallel_replicate_degree",
            "2",
            "--parallelism.data_parallel_shard_degree",
            "1",
        ],
    ),
    # 4 data-parallel ranks x 4 = 16: each rank holds all 4 windows, so the mean loss and
    # gradient equal the 8-window batch's
    "hsdp": (
        4,
        [
            "--training.local_batch_size",
            "4",
            "--parallelism.data_parallel_replicate_degree",
            "2",
            "--parallelism.data_parallel_shard_degree",
            "2",
        ],
    ),
    # context parallel: each sequence cut into shards, torchtitan's head-tail layout
    "cp2": (
        2,
        [
            "--training.local_batch_size",
            "8",
            "--parallelism.context_parallel_degree",
            "2",
            "--parallelism.data_parallel_shard_degree",
            "1",
        ],
    ),
    "cp2_tp2": (
        4,
        [
            "--training.local_batch_size",
            "8",
            "--parallelism.context_parallel_degree",
            "2",
            "--parallelism.tensor_parallel_degree",
            "2",
            "--parallelism.data_parallel_shard_degree",
            "1",
        ],
    ),
    # contiguous shards (no load balancer) with full activation checkpointing
    "cp2_contiguous_ac": (
        2,
        [
            "--training.local_batch_size",
            "8",
            "--parallelism.context_parallel_degree",
            "2",
            "--parallelism.context_parallel_load_balancer",
            "None",
            "--parallelism.data_parallel_shard_degree",
            "1",
            "--activation_checkpoint.mode",
            "full",
        ],
    ),
    "single_ac_full": (1, ["--training.local_batch_size", "8", "--activation_checkpoint.mode", "full"]),
    # per-block torch.compile (fullgraph) of the model and the loss
    "single_compile": (1, ["--training.local_batch_size", "8", "--compile.enable"]),
    # compiled blocks under full activation checkpointing (the recomputation skips the
    # forward's Python side effects: training/compile.py)
    "single_compile_ac": (
        1,
        ["--training.local_batch_size", "8", "--compile.enable", "--activation_checkpoint.mode", "full"],
    ),
    "single_ac_selective": (
        1,
        [
            "--training.local_batch_size",
            "8",
            "--activation_checkpoint.mode",
            "selective",
            "--activation_checkpoint.selective_ac_option",
            "op",
        ],
    ),
}


def write_periodic_corpus(path: str, doc_lengths: tuple[int, ...] = (SEQ_LEN + 1,)) -> str:
    """4 training windows repeated; each window holds documents of `doc_lengths` tokens
    (with BOS and EOS; they add up to one window, seq_len + 1)."""
    assert sum(doc_lengths) == SEQ_LEN + 1
    assert min(doc_lengths) >= 3
    from titans_plugin.conversion.stack import adapter
    from titans_plugin.data.paths import TOKENIZER_DIR

    # the installed torchtitan's tokenizer: how it adds BOS and EOS decides the lengths
    tok = adapter("data").tokenizer(TOKENIZER_DIR)
    words = []
    for i in range(2048):
        s = tok.decode([i])
        if s.startswith(" ") and s[1:].isalpha() and len(tok.encode(s, add_bos=False, add_eos=False)) == 1:
            words.append(s)
    rng = random.Random(0)
    docs = ["".join(rng.choice(words) for _ in range(n - 2)) for _ in range(4) for n in doc_lengths]
    for d, n in zip(docs, doc_lengths * 4, strict=True):
        assert len(tok.encode(d, add_bos=True, add_eos=True)) == n
    with open(path, "w") as f:
        for _ in range(64):
            for d in docs:
                f.write(json.dumps({"text": d, "split": "train"}) + "\n")
    return path


def common_args(corpus: str, pattern: str, steps: int) -> list[str]:
    return [
        "--titans.pattern",
        pattern,
        "--training.seq_len",
        str(SEQ_LEN),
        "--training.steps",
        str(steps),
        "--training.dataset_path",
        corpus,
        "--validation.no-enable",
        "--metrics.log_freq",
        "1",
        "--lr_scheduler.warmup_steps",
        "2",
        "--debug.seed",
        "0",
    ]


def make_seed_checkpoint(workdir: str, corpus: str, pattern: str) -> str:
    dump = os.path.join(workdir, f"seed_{pattern}")
    rc, log = run_torchrun(
        CONFIG,
        [
            *common_args(corpus, pattern, 1),
            "--job.dump_folder",
            dump,
            "--checkpoint.enable",
            "--checkpoint.create_seed_checkpoint",
            "--parallelism.data_parallel_shard_degree",
            "1",
        ],
    )
    assert rc == 0, log[-3000:]
    path = os.path.join(dump, "checkpoint", "step-0")
    assert os.path.exists(path), log[-3000:]
    return path


def run_layout(workdir, corpus, pattern, layout, steps, seed_ckpt=None, extra=(), name=None, log=False):
    """Run `layout` for `steps`; start from `seed_ckpt` (a step-N folder) if given.
    Returns the training losses and the dump folder (log=True: the printed log instead)."""
    nproc, args = LAYOUTS[layout]
    dump = os.path.join(workdir, name or f"{pattern}_{layout}")
    if seed_ckpt is not None:
        dst = os.path.join(dump, "checkpoint", os.path.basename(seed_ckpt))
        shutil.copytree(seed_ckpt, dst, dirs_exist_ok=True)
    rc, output = run_torchrun(
        CONFIG,
        [*common_args(corpus, pattern, steps), *args, "--job.dump_folder", dump, "--checkpoint.enable", *extra],
        nproc=nproc,
    )
    assert rc == 0, output[-4000:]
    return losses(output), output if log else dump


def assert_carried_memory_parity(workdir: str, corpus: str, pattern: str, layouts: list[str], steps: int = 4) -> None:
    """titans.carry_memory = 3 from one seed checkpoint: the first forward matches a run
    without it, the second (the first carried one) does not, and every layout in
    `layouts` matches one process (each rank carries its own rows' memories). Three, so
    the third forward continues a state that was itself carried (compiled blocks once
    recompiled on such a state: NeuralMemoryState.to_carry)."""
    rtol, carry = 2e-4, ["--titans.carry_memory", "3"]  # rtol as test_parallel_parity.py
    if torchtitan_release() >= (0, 3):
        carry.append("--training.disable_cuda_graphs")  # 0.3.0 refuses a carried memory with CUDA graphs on
    seed = make_seed_checkpoint(workdir, corpus, pattern)
    reference, _ = run_layout(workdir, corpus, pattern, "single", steps, seed, extra=carry)
    assert sorted(reference) == list(range(1, steps + 1))
    plain, _ = run_layout(workdir, corpus, pattern, "single", steps, seed, name=f"{pattern}_plain")
    assert abs(plain[1] - reference[1]) <= rtol * abs(reference[1]), "the first forward starts afresh either way"
    assert abs(plain[2] - reference[2]) > 10 * rtol * abs(reference[2]), "the second must start from carried memories"
    for layout in layouts:
        curve, _ = run_layout(workdir, corpus, pattern, layout, steps, seed, extra=carry)
        for step, loss in reference.items():
            assert abs(curve[step] - loss) <= rtol * abs(loss), (layout, step, curve, reference)
