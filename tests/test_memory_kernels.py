"""The chunk-parallel scan against the per-token reference (kernels/naive.py)."""

import pytest
import torch

from devtools.models import flat, max_rel_err, memory_inputs
from devtools.scan_harness import compare
from titans_plugin.kernels import (
    ACTIVATIONS,
    chunk_neural_memory,
    chunk_neural_memory_autograd,
    naive_neural_memory,
)


def _same(scan, reference, inputs, state, **config):
    """Outputs, end state and every gradient (inputs and initial state) agree in fp64."""
    compare(scan, reference, inputs, state, tol=1e-12, grad_tol=1e-10, **config)


@pytest.mark.parametrize("depth", [1, 2])
def test_chunk_size_one_equals_per_token_recurrence_with_gradients(depth):
    inputs, state = memory_inputs(depth=depth)
    _same(chunk_neural_memory, naive_neural_memory, inputs, state, chunk_size=1)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("chunk", [2, 5, 16])
def test_chunked_closed_form_equals_chunked_recurrence(depth, chunk):
    """For b > 1 the reference keeps the token loop but takes gradients at chunk-start
    weights; T = 13 leaves a ragged tail (and is shorter than one chunk for b = 16)."""
    inputs, state = memory_inputs(depth=depth)
    _same(chunk_neural_memory, naive_neural_memory, inputs, state, chunk_size=chunk)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_matches_reference(activation):
    # The hand-written act' in the chunked path is checked against autograd's.
    inputs, state = memory_inputs(depth=2, T=9)
    _same(chunk_neural_memory, naive_neural_memory, inputs, state, chunk_size=4, activation=activation)


def test_sequence_shorter_than_one_chunk_still_updates_memory():
    inputs, state = memory_inputs(T=3, momentum=False)
    _, s = chunk_neural_memory(*inputs, state, chunk_size=64)
    _, s_ref = naive_neural_memory(*inputs, state, chunk_size=64)
    assert not torch.allclose(s.weights[0], state.weights[0])
    assert max_rel_err(s.weights[0], s_ref.weights[0]) < 1e-12


def test_state_carries_across_calls_split_at_chunk_boundaries():
    inputs, state = memory_inputs(T=20)
    y, s = chunk_neural_memory(*inputs, state, chunk_size=4)
    y1, s1 = chunk_neural_memory(*(x[:, :8] for x in inputs), state, chunk_size=4)
    y2, s2 = chunk_neural_memory(*(x[:, 8:] for x in inputs), s1, chunk_size=4)
    assert max_rel_err(torch.cat([y1, y2], 1), y) < 1e-12
    for a, b in zip(flat(s2), flat(s), strict=True):
        assert max_rel_err(a, b) < 1e-12


def test_gates_at_their_bounds_are_exact_and_differentiable():
    """alpha = 1 (forget everything) and eta = 0 (no momentum) hit log(0) in the closed form."""
    inputs, state = memory_inputs(T=11)
    q, k, v, theta, eta, alpha = inputs
    eta = eta.clone()
    alpha = alpha.clone()
    eta[:, 3] = 0.0
    alpha[:, 6] = 1.0
    alpha.requires_grad_()
    eta.requires_grad_()
    y_ref, _ = naive_neural_memory(q, k, v, theta, eta, alpha, state, chunk_size=4)
    y, s = chunk_neural_memory(q, k, v, theta, eta, alpha, state, chunk_size=4)
    assert max_rel_err(y, y_ref) < 1e-12
    g_eta, g_alpha = torch.autograd.grad(y.sum() + s.weights[0].sum(), [eta, alpha])
    assert torch.isfinite(g_eta).all()
    assert torch.isfinite(g_alpha).all()


@pytest.mark.parametrize("chunk", [1, 4])
def test_scan_is_causal(chunk):
    inputs, state = memory_inputs(T=12)
    y, _ = chunk_neural_memory(*inputs, state, chunk_size=chunk)
    t = 6
    changed = [x.clone() for x in inputs]
    for x in changed:
        x[:, t + 1 :] = torch.rand_like(x[:, t + 1 :])
    y2, _ = chunk_neural_memory(*changed, state, chunk_size=chunk)
    assert torch.equal(y[:, : t + 1], y2[:, : t + 1])
    assert not torch.allclose(y[:, t + 1 :], y2[:, t + 1 :])


def test_fp32_state_for_low_precision_inputs():
    inputs, state = memory_inputs(dtype=torch.float32)
    inputs = tuple(x.to(torch.bfloat16) for x in inputs)
    y, s = chunk_neural_memory(*inputs, state, chunk_size=4)
    assert y.dtype == torch.float32
    assert s.weights[0].dtype == torch.float32


def test_bad_chunk_size_names_the_field():
    inputs, state = memory_inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_neural_memory(*inputs, state, chunk_size=0)


def test_empty_sequence_returns_state_unchanged():
    inputs, state = memory_inputs(T=0)
    y, s = chunk_neural_memory(*inputs, state, chunk_size=4)
    assert y.shape[1] == 0
    assert torch.equal(s.weights[0], state.weights[0])


@pytest.mark.parametrize("chunk", [1, 4])
def test_inner_gradient_clipping_matches_reference(chunk):
    """Clipping folds into theta in the closed form; the reference clips autograd's gradient."""
    inputs, state = memory_inputs(depth=2)
    y, _ = chunk_neural_memory(*inputs, state, chunk_size=chunk, max_grad_norm=0.3)
    y_free, _ = chunk_neural_memory(*inputs, state, chunk_size=chunk)
    assert not torch.allclose(y, y_free)  # the clip is active at this threshold
    _same(chunk_neural_memory, naive_neural_memory, inputs, state, chunk_size=chunk, max_grad_norm=0.3)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("clip", [None, 0.3])
@pytest.mark.parametrize("activation", ["silu", "gelu", "tanh"])
def test_hand_written_backward_equals_autograd(depth, clip, activation):
    """The fast path's backward (chunk.py) against autograd through the same closed form."""
    inputs, state = memory_inputs(depth=depth, T=13)
    config = dict(chunk_size=5, activation=activation, max_grad_norm=clip)
    _same(chunk_neural_memory, chunk_neural_memory_autograd, inputs, state, **config)


def test_hand_written_backward_with_partial_upstream_gradients():
    """Only the output, or only the final state, feeding the loss."""
    inputs, state = memory_inputs(depth=2, T=9, requires_grad=True)
    leaves = [*inputs, *flat(state)]
    for pick in (lambda y, s: y.pow(2).sum(), lambda y, s: s.weights[1].sum() + s.momentum[0].sum()):
        ga = torch.autograd.grad(pick(*chunk_neural_memory(*inputs, state, chunk_size=4)), leaves, allow_unused=True)
        gb = torch.autograd.grad(
            pick(*chunk_neural_memory_autograd(*inputs, state, chunk_size=4)), leaves, allow_unused=True
        )
        for a, b, leaf in zip(ga, gb, leaves, strict=True):
            a = torch.zeros_like(leaf) if a is None else a  # unused input: None or zeros
            b = torch.zeros_like(leaf) if b is None else b
            assert (a - b).abs().max() <= 1e-10 * max(1.0, b.abs().max().item())
