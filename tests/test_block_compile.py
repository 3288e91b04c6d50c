"""Per-block torch.compile as both adapters prepare it (training/compile.py): under
activation checkpointing, and for a hybrid of many block types (every block type runs
TitansBlockBase.forward, and torch counts compiled versions per function)."""

import pytest
import torch
import torch._dynamo
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from devtools.models import tiny_model
from titans_plugin.training.compile import prepare_block_compile
from titans_plugin.training.sac import sac_save_list


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
    """torch's defaults, as a fresh process has them (prepare_block_compile changes them)."""
    torch._dynamo.reset()  # other tests' compiled blocks count toward the same function
    config = torch._dynamo.config
    before = config.recompile_limit, config.skip_fwd_side_effects_in_bwd_under_checkpoint
    config.recompile_limit, config.skip_fwd_side_effects_in_bwd_under_checkpoint = 8, False
    yield
    config.recompile_limit, config.skip_fwd_side_effects_in_bwd_under_checkpoint = before
    torch._dynamo.reset()


@pytest.mark.slow  # compiles two block types
@pytest.mark.parametrize("prepared", [True, False])
def test_compiled_blocks_under_activation_checkpointing_match_eager(torch_default_limit, prepared):
    torch.manual_seed(0)
    eager = tiny_model("GC").float().train()
    model = tiny_model("GC").float().train()
    model.load_state_dict(eager.state_dict())
    if prepared:
        prepare_block_compile(model)
    for name, block in list(model.layers.items()):
        wrapped = checkpoint_wrapper(block, preserve_rng_state=False)  # torchtitan's full AC
        model.layers[name] = torch.compile(wrapped, fullgraph=True, backend="eager")
    tokens = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    if not prepared:  # what torchtitan 0.2.2 did: the memory's statistics are a side effect
        with pytest.raises(torch._dynamo.exc.Unsupported, match="side effect"):
            model(tokens).sum().backward()
        return
    model(tokens).sum().backward()
    eager(tokens).sum().backward()
    assert torch.allclose(model(tokens), eager(tokens), atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    stats = model.layers["0"]._orig_mod._checkpoint_wrapped_module.memory.last_stats  # recorded once, forward
    assert stats["theta_mean"] == eager.layers["0"].memory.last_stats["theta_mean"]


@pytest.mark.slow  # compiles five block types, twice
def test_five_block_types_compile_for_training_carried_training_and_evaluation(torch_default_limit):
    model = _compiled("CGLMA")
    prepare_block_compile(model)
    assert torch._dynamo.config.recompile_limit == 8 * 5
    _train_evaluate_train(model)


@pytest.mark.slow
def test_without_the_room_torch_stops_compiling_such_a_hybrid(torch_default_limit):
    with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
        _train_evaluate_train(_compiled("CGLMA"))


def _selective_context():
    """Per-op selective checkpointing with the plugin's save list (what both adapters apply)."""
    save = sac_save_list()

    def policy(ctx, func, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if func in save else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


@pytest.mark.slow  # compiles two block types
@pytest.mark.parametrize("checkpointing", ["full", "selective"])
def test_carried_memory_through_compiled_checkpointed_blocks_matches_eager(torch_default_limit, checkpointing):
    """carry_memory, per-block compile and activation checkpointing together: the
    carried state enters and leaves each block as an argument and a result (no side
    effect for the recomputation to replay), so every forward equals the eager model's.
    Once a cycle's fresh and carried forwards are compiled, nothing recompiles: a carried
    state holds nothing that changes from one forward to the next but its tensors (a token
    count that grew made torch 2.14.1's dynamo fail here, NeuralMemoryState.to_carry)."""
    torch.manual_seed(0)
    eager = tiny_model("GC", carry_memory=4).float().train()
    model = tiny_model("GC", carry_memory=4).float().train()
    model.load_state_dict(eager.state_dict())
    prepare_block_compile(model)
    for name, block in list(model.layers.items()):
        context = {"context_fn": _selective_context} if checkpointing == "selective" else {}
        model.layers[name] = torch.compile(
            checkpoint_wrapper(block, preserve_rng_state=False, **context), fullgraph=True, backend="eager"
        )
    for step in range(6):  # fresh, carried, carried again, and again; fresh, carried
        tokens = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(step))
        with torch._dynamo.config.patch(error_on_recompile=step > 1):
            out = model(tokens)
        expected = eager(tokens)
        assert torch.allclose(out, expected, atol=1e-5), step
        out.square().sum().backward()
        expected.square().sum().backward()
        unused = [n for n, q in eager.named_parameters() if ".init_memory." in n and q.grad is None]
        assert bool(unused) == (step % 4 > 0)  # the later forwards of a cycle start from the carried state
        for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
            if q.grad is None:  # a carried forward leaves the memory's initial weights unused
                assert p.grad is None, (step, name)
                continue
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), (step, name)
        model.zero_grad(set_to_none=True)
        eager.zero_grad(set_to_none=True)
