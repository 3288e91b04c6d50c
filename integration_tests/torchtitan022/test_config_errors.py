"""Invalid configuration fails before training starts, naming the TOML field."""

import pytest

from devtools.paths import REPO
from devtools.torchrun import losses, run_torchrun
from titans_plugin.torchtitan022.build import load_job_config, train_args
from titans_plugin.torchtitan022.data import check_dataset

CONFIG = f"{REPO}/train_configs/debug_mac.toml"


def _validate(*overrides: str):
    """What the trainer runs before building the model: parse, then update_from_config."""
    job = load_job_config(CONFIG, *overrides)
    check_dataset(job)
    return train_args(job)


def test_default_config_is_valid():
    args = _validate()
    assert args.layer_types() == ["C", "A", "C", "A"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["--titans.pattern", "CAX"], "titans.pattern"),
        (["--titans.memory_heads", "3"], "titans.memory_heads"),
        (["--titans.segment_len", "1024"], "titans.segment_len"),
        (["--titans.window", "0", "--titans.pattern", "G"], "titans.window"),
        (["--titans.chunk_size", "0"], "titans.chunk_size"),
        (["--titans.max_momentum", "1.5"], "titans.max_momentum"),
        (["--titans.backend", "cuda"], "titans.backend"),
        (["--model.flavor", "9B"], "model.flavor"),
        (["--training.dataset_path", "/no/such/corpus.jsonl"], "training.dataset_path"),
        (["--training.dataset", "wikipedia"], "training.dataset"),
        (["--parallelism.tensor_parallel_degree", "3"], "parallelism.tensor_parallel_degree"),
    ],
)
def test_invalid_field_is_named(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        _validate(*overrides)


def test_torchrun_stops_before_the_first_step(tmp_path):
    rc, log = run_torchrun(
        "train_configs/debug_mac.toml", ["--titans.pattern", "CQ", "--job.dump_folder", str(tmp_path)]
    )
    assert rc != 0
    assert "titans.pattern" in log
    assert "'Q'" in log
    assert not losses(log)
