"""torchtitan 0.3.0 through torchrun: every shipped debug config function trains (each block
type), packed documents train with block_causal from the dataloader's positions, and a user's
three-line config module that hybridizes torchtitan's own llama3 debug config trains with
the embedded dataset and tokenizer given on the command line."""

import math

import pytest

from devtools.torchrun import losses, run_torchrun, run_train

SHORT = ["--training.seq_len", "128", "--training.local_batch_size", "2", "--metrics.log_freq", "1"]
SHORT += ["--training.steps", "3", "--validation.no-enable", "--checkpoint.no-enable"]


def _trains(rc: int, log: str) -> None:
    assert rc == 0, log[-4000:]
    curve = losses(log)
    assert sorted(curve) == [1, 2, 3], log[-3000:]
    assert all(math.isfinite(v) for v in curve.values())
    assert curve[3] < curve[1], curve


@pytest.mark.parametrize("name", ["debug_mac", "debug_mag", "debug_mal", "debug_lmm", "debug_attention", "debug_swa"])
def test_every_debug_config_trains(name):
    _trains(*run_torchrun(f"train_configs/{name}.toml", [*SHORT, "--lr_scheduler.warmup_steps", "1"]))


def test_packed_documents_train_from_positions():
    args = [*SHORT, "--titans.attn_mask_type", "block_causal", "--lr_scheduler.warmup_steps", "1"]
    _trains(*run_torchrun("train_configs/debug_mal.toml", args))


CONFIG_MODULE = """from torchtitan.models.llama3.config_registry import llama3_debugmodel
from titans_plugin import hybridize
def titans_llama3_debug(): return hybridize(llama3_debugmodel(), pattern="GA")
"""


def test_a_hybridized_llama3_config_trains_on_the_embedded_data(tmp_path):
    (tmp_path / "my_configs.py").write_text(CONFIG_MODULE)
    args = ["--module", "my_configs", "--config", "titans_llama3_debug"]
    args += ["--dataloader.dataset", "titans_stories", "--hf_assets_path", "builtin"]
    args += ["--training.seq_len", "128", "--training.local_batch_size", "2", "--training.steps", "3"]
    args += ["--training.mixed_precision_param", "float32", "--lr_scheduler.warmup_steps", "1"]
    args += ["--dump_folder", str(tmp_path / "out")]
    _trains(*run_train(args, env={"PYTHONPATH": str(tmp_path)}))
