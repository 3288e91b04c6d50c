"""The comparison harness itself (devtools/scan_harness.py): a backend that gets one
gradient wrong fails it, whichever tensor that gradient belongs to."""

import pytest
import torch

from devtools.models import memory_inputs
from devtools.scan_harness import compare
from titans_plugin.kernels import MemoryState, chunk_neural_memory, naive_neural_memory


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; the backward scales the gradient (a deliberately wrong backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return 1.01 * grad


def _wrong_gradient_of(which: str):
    """The chunked scan, with the gradient of one initial-state tensor off by 1%."""

    def scan(*inputs_and_state, **config):
        *inputs, state = inputs_and_state
        kind, index = {"W": "weights", "S": "momentum"}[which[0]], int(which[1]) - 1
        tensors = list(getattr(state, kind))
        tensors[index] = _ScaledGradient.apply(tensors[index])
        parts = {"weights": state.weights, "momentum": state.momentum, kind: tuple(tensors)}
        return chunk_neural_memory(*inputs, MemoryState(parts["weights"], parts["momentum"]), **config)

    return scan


@pytest.mark.parametrize("which", ["W1", "S1", "W2", "S2"])
def test_a_wrong_initial_state_gradient_fails_the_harness(which):
    inputs, state = memory_inputs(depth=2, T=9, momentum=True)
    compare(chunk_neural_memory, naive_neural_memory, inputs, state, tol=1e-12, grad_tol=1e-10, chunk_size=4)
    with pytest.raises(AssertionError, match=f"gradient of initial {which}"):
        compare(_wrong_gradient_of(which), naive_neural_memory, inputs, state, tol=1e-12, grad_tol=1e-10, chunk_size=4)
