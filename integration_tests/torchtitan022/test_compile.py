"""torch.compile(fullgraph=True) of every block type on CPU gives the eager result.

Tiny shapes (one memory chunk, one MAC segment): compilation time grows with the number of
chunks, which dynamo unrolls; the graph structure is the same at any size."""

import copy

import pytest
import torch

from devtools.models import tiny_model


@pytest.mark.parametrize("pattern", ["C", "G", "L", "M", "W", "A"])
def test_block_compiles_fullgraph_and_matches_eager(pattern):
    torch.manual_seed(0)
    model = tiny_model(pattern, n_layers=1, chunk_size=8, segment_len=8, window=4).float()
    block = model.layers["0"]
    x = torch.randn(2, 8, 32, requires_grad=True)
    params = [x, *block.parameters()]
    eager = block(x, model.freqs_cis)
    g_eager = torch.autograd.grad(eager.pow(2).sum(), params)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(x, model.freqs_cis)
    g = torch.autograd.grad(out.pow(2).sum(), params)
    assert (out - eager).abs().max() < 1e-5
    for a, b in zip(g, g_eager, strict=True):
        assert ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) < 1e-4


@pytest.mark.parametrize("pattern", ["C", "G", "L", "M"])
def test_a_carried_block_compiles_fullgraph_and_matches_eager(pattern):
    """titans.carry_memory: the block starts from a carried memory and returns the one to
    carry on (model/carry.py)."""
    from titans_plugin.blocks import Carry

    torch.manual_seed(0)
    model = tiny_model(pattern, n_layers=1, chunk_size=8, segment_len=8, window=4).float()
    block = model.layers["0"]
    _, state = block(torch.randn(2, 8, 32), model.freqs_cis, carry=Carry(None))
    x = torch.randn(2, 8, 32, requires_grad=True)
    params = [x, *block.parameters()]
    eager, eager_end = block(x, model.freqs_cis, carry=Carry(state))
    g_eager = torch.autograd.grad(eager.pow(2).sum(), params, allow_unused=True)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    out, end = compiled(x, model.freqs_cis, carry=Carry(state))
    g = torch.autograd.grad(out.pow(2).sum(), params, allow_unused=True)
    assert (out - eager).abs().max() < 1e-5
    memory_end = end[0] if pattern == "C" else end
    eager_memory_end = eager_end[0] if pattern == "C" else eager_end
    for a, b in zip(memory_end.memory.weights, eager_memory_end.memory.weights, strict=True):
        assert (a - b).abs().max() < 1e-5
    for a, b in zip(g, g_eager, strict=True):
        assert (a is None) == (b is None)
        if b is not None:
            assert ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) < 1e-4


@pytest.mark.parametrize(("pattern", "length"), [("GL", 12), ("G", 10), ("CM", 12)])
def test_carried_forwards_of_a_compiled_model_match_eager(pattern, length):
    """Per-block compile as torchtitan applies it, over a cycle of carried forwards whose
    unfinished chunks differ in length from one forward (10 tokens, chunks of 4) or block
    type (MAL's persistent prefix) to the next: this checks dynamo's tracing only
    (backend="eager"); the test above checks inductor's numerics."""
    torch.manual_seed(0)
    model = tiny_model(pattern, carry_memory=8).float().train()
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    for name, block in list(model.layers.items()):
        model.layers[name] = torch.compile(block, fullgraph=True, backend="eager")
    for seed in range(5):
        tokens = torch.randint(0, 50, (2, length), generator=torch.Generator().manual_seed(seed))
        out, ref = model(tokens), eager(tokens)
        out.sum().backward()
        ref.sum().backward()
        assert (out - ref).abs().max() < 1e-5, seed
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert (p.grad - q.grad).abs().max() <= 1e-4 * q.grad.abs().max().clamp_min(1e-6)
