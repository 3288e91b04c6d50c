"""A checkpoint folder back into a model for scoring and sampling, on whichever
torchtitan stack is installed (the config a 0.2.2 TOML or a 0.3.0 MODULE:FUNCTION)."""

import os

import pytest
import torch
import torch.distributed.checkpoint as dcp

from devtools.paths import REPO
from titans_plugin.conversion import stack
from titans_plugin.inference.trained import load_trained

CONFIG = {(0, 2): os.path.join(REPO, "train_configs/debug_mac.toml"), (0, 3): "titans_plugin:titans_debug_mac"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The main job's model, randomly initialised, saved as a DCP folder."""
    config = CONFIG[stack.torchtitan_release()]
    build = stack.adapter("build")
    torch.manual_seed(0)
    model = build.build_model(build.train_args(build.load_job_config(config)))
    folder = str(tmp_path_factory.mktemp("step-1"))
    dcp.save(model.state_dict(), checkpoint_id=folder)
    return config, folder, model


def test_the_loaded_model_computes_what_was_saved(saved):
    config, folder, model = saved
    trained = load_trained(config, folder)
    tokens = torch.randint(0, 2048, (2, 40))
    with torch.no_grad():
        assert torch.equal(trained.model(tokens), model.eval()(tokens))
    assert not trained.model.training
    assert trained.seq_len == 512
    text = "Where does Ada keep the lamp? In the attic."
    assert trained.tokenizer.decode(trained.encode(text)) == text
    assert trained.prefix_id in (trained.tokenizer.bos_id, trained.tokenizer.eos_id)


def test_a_lower_precision_casts_the_parameters_only(saved):
    config, folder, _ = saved
    trained = load_trained(config, folder, dtype="bfloat16")
    assert {p.dtype for p in trained.model.parameters()} == {torch.bfloat16}
    assert trained.model.freqs_cis.is_complex()


def test_a_folder_that_is_not_a_checkpoint_is_refused_before_building(tmp_path):
    with pytest.raises(ValueError, match=r"is not a torchtitan DCP step folder \(no \.metadata\)"):
        load_trained(CONFIG[stack.torchtitan_release()], str(tmp_path))
