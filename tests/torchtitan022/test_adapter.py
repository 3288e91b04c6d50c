"""The torchtitan adapter: import hygiene, registration, the parallel-layout checks, and the
plugin's parallelize function compiling a model (in process, one rank)."""

import copy
import os

import pytest
import torch
from torchtitan.distributed import ParallelDims

from devtools.paths import REPO
from devtools.processes import imports_then, python
from devtools.run_checks import MEMORY_STATS
from titans_plugin.config import TitansConfig
from titans_plugin.model import TitansTransformer
from titans_plugin.torchtitan022.args import TitansTrainArgs
from titans_plugin.torchtitan022.build import load_job_config, train_args
from titans_plugin.torchtitan022.parallelize import parallelize_titans
from titans_plugin.training.checks import check_parallel_layout

CONFIG = os.path.join(REPO, "train_configs", "debug_mac.toml")


def test_model_code_imports_without_torchtitan():
    proc = python(
        "import sys\n"
        "import titans_plugin.kernels, titans_plugin.memory, titans_plugin.blocks, titans_plugin.model\n"
        "import titans_plugin.config, titans_plugin.context_parallel, titans_plugin.conversion.hybrid\n"
        "import titans_plugin.conversion.convert, titans_plugin.training.tensor_parallel\n"
        "print(sorted(m for m in sys.modules if m.startswith('torchtitan')))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


_REGISTERED = (
    "from torchtitan.protocols.train_spec import _extra_train_specs as specs\n"
    "from torchtitan.hf_datasets.text_datasets import DATASETS\n"
    "from torchtitan.tools import utils\n"
    "print('titans' in specs, 'titans_stories' in DATASETS, utils.device_type)\n"
)


@pytest.mark.parametrize("torchtitan_first", [True, False])
def test_the_root_package_registers_nothing_in_any_import_order(torchtitan_first):
    imports = ["import torchtitan.config, torchtitan.train", "import titans_plugin, titans_plugin.model"]
    # nothing registered, and torchtitan's own device fallback untouched
    assert imports_then(imports, _REGISTERED, reverse=not torchtitan_first) == ["False", "False", "cuda"]


def test_the_entry_module_registers_the_model_datasets_and_cpu_support():
    proc = python("import titans_plugin.torchtitan022\n" + _REGISTERED)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "cuda" if torch.cuda.is_available() else "cpu"]


def _args(**titans) -> TitansTrainArgs:
    return TitansTrainArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=64,
        multiple_of=16,
        titans=TitansConfig(pattern="GA", **titans),
    )


def test_tensor_parallel_must_divide_memory_heads():
    """Attention heads (4) and KV heads (2) divide TP=2; memory heads (3) do not."""
    with pytest.raises(ValueError, match=r"tensor_parallel_degree=2 must divide titans\.memory_heads=3"):
        check_parallel_layout(_args(memory_heads=3, memory_head_dim=16), tp=2)
    check_parallel_layout(_args(memory_heads=4), tp=2)
    # without a memory layer the memory heads are not sharded, so not checked
    check_parallel_layout(
        TitansTrainArgs(dim=64, n_layers=2, n_heads=4, titans=TitansConfig(pattern="A", memory_heads=3)), tp=2
    )


def test_pipeline_parallel_is_rejected_before_training():
    job = load_job_config(CONFIG, "--parallelism.pipeline_parallel_degree", "2")
    with pytest.raises(ValueError, match=r"parallelism\.pipeline_parallel_degree must be 1"):
        train_args(job)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # head-tail (the default) cuts each sequence into 2 x 3 chunks
        ([], r"training\.seq_len=512 must be a multiple of 6"),
        (["--training.seq_len", "516"], r"validation\.seq_len=512 must be a multiple of 6"),
        (["--titans.attn_mask_type", "block_causal"], r"titans\.attn_mask_type='block_causal' cannot run"),
        (["--parallelism.context_parallel_load_balancer", "ptrr"], r"context_parallel_load_balancer='ptrr'"),
        (["--compile.enable"], r"context_parallel_degree=3 cannot run with compile\.enable"),
        (
            ["--training.seq_len", "516", "--validation.seq_len", "516", "--titans.cp_scan", "parallel"]
            + ["--titans.memory_depth", "1", "--titans.max_grad_norm", "0"],
            r"training\.seq_len=516 gives 172 tokens per context-parallel shard, which must be a multiple of "
            r"titans\.chunk_size=32 with titans\.cp_scan='parallel'",
        ),
    ],
)
def test_context_parallel_layouts_that_cannot_work_fail_before_training(overrides, message):
    job = load_job_config(CONFIG, "--parallelism.context_parallel_degree", "3", *overrides)
    with pytest.raises(ValueError, match=message):
        train_args(job)


def test_context_parallel_layouts_that_work_pass():
    train_args(load_job_config(CONFIG, "--parallelism.context_parallel_degree", "2"))
    contiguous = ["--parallelism.context_parallel_load_balancer", "None"]  # 513 = 3 x 171, not 6 x k
    train_args(
        load_job_config(
            CONFIG,
            "--parallelism.context_parallel_degree",
            "3",
            "--training.seq_len",
            "513",
            *contiguous,
            "--validation.no-enable",
        )
    )


def test_parallelize_compiles_every_block_and_keeps_memory_statistics():
    """[compile] enable through the plugin's parallelize function (one rank: no FSDP/TP):
    every block is compiled, the loss and gradients match eager, and the per-layer memory
    statistics the metrics logger reads are still recorded."""
    job = load_job_config(CONFIG, "--compile.enable")
    dims = ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1)
    torch.manual_seed(0)
    args = TitansTrainArgs(
        dim=32,
        n_layers=2,
        n_heads=4,
        vocab_size=64,
        multiple_of=16,
        max_seq_len=16,
        titans=TitansConfig(pattern="GA", memory_heads=2, chunk_size=8, window=4, n_persistent=2),
    )
    eager = TitansTransformer(args)
    compiled = copy.deepcopy(eager)
    parallelize_titans(compiled, dims, job)
    assert all(type(b).__name__ == "OptimizedModule" for b in compiled.layers.values())
    tokens = torch.randint(0, 64, (2, 8))
    torch._dynamo.reset()
    losses = [m(tokens).float().pow(2).mean() for m in (eager, compiled)]
    for loss in losses:
        loss.backward()
    assert abs(losses[0].item() - losses[1].item()) < 1e-5 * abs(losses[0].item())
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        assert (a.grad - b.grad).abs().max() <= 1e-4 * a.grad.abs().max() + 1e-7, name
    stats = compiled.layers["0"].memory.last_stats
    assert set(stats) == set(MEMORY_STATS)
    for key, value in eager.layers["0"].memory.last_stats.items():
        # a token at the clip's threshold may round to the other side: one token of 2 x 8 x heads
        slack = 0.05 if key.startswith("clip_") else 0.0
        assert abs(float(stats[key]) - float(value)) <= 1e-5 * abs(float(value)) + slack, key


def test_packed_documents_with_compile_fail_before_training():
    job = load_job_config(CONFIG, "--titans.attn_mask_type", "block_causal", "--compile.enable")
    with pytest.raises(ValueError, match=r"attn_mask_type='block_causal' cannot run with compile\.enable"):
        train_args(job)
    train_args(load_job_config(CONFIG, "--titans.attn_mask_type", "block_causal"))


def test_the_old_name_of_a_field_still_reads_from_a_toml_and_the_command_line(tmp_path):
    toml = tmp_path / "old.toml"
    with open(CONFIG) as f:
        toml.write_text(f.read().replace("\n[titans]\n", '\n[titans]\nkernel = "naive"\n'))
    with pytest.warns(FutureWarning, match=r"titans\.kernel is deprecated: use titans\.backend"):
        assert train_args(load_job_config(str(toml))).titans.backend == "naive"
    with pytest.warns(FutureWarning, match=r"titans\.kernel is deprecated"):
        assert train_args(load_job_config(CONFIG, "--titans.kernel", "chunk")).titans.backend == "chunk"
