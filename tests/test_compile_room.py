"""Per-block torch.compile of a hybrid with many block types (training/compile.py): every
block type runs TitansBlockBase.forward, and torch counts compiled versions per function."""

import pytest
import torch
import torch._dynamo

from devtools.models import tiny_model
from titans_plugin.training.compile import make_room_for_block_types


def _compiled(pattern: str):
    model = tiny_model(pattern, carry_memory=4).float().train()
    for name, block in list(model.layers.items()):
        model.layers[name] = torch.compile(block, fullgraph=True, backend="eager")
    return model


def _train_evaluate_train(model) -> None:
    tokens = [torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(s)) for s in range(4)]
    for t in tokens[:3]:  # fresh, carried, carried again
        model(t).sum().backward()
    model.eval()
    with torch.no_grad():
        model(tokens[3])
    model.train()
    model(tokens[3]).sum().backward()


@pytest.fixture
def torch_default_limit():
    torch._dynamo.reset()  # other tests' compiled blocks count toward the same function
    before, torch._dynamo.config.recompile_limit = torch._dynamo.config.recompile_limit, 8
    yield
    torch._dynamo.config.recompile_limit = before
    torch._dynamo.reset()


@pytest.mark.slow  # compiles five block types, twice
def test_five_block_types_compile_for_training_carried_training_and_evaluation(torch_default_limit):
    model = _compiled("CGLMA")
    make_room_for_block_types(model)
    assert torch._dynamo.config.recompile_limit == 8 * 5
    _train_evaluate_train(model)


@pytest.mark.slow
def test_without_the_room_torch_stops_compiling_such_a_hybrid(torch_default_limit):
    with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
        _train_evaluate_train(_compiled("CGLMA"))
