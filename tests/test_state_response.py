"""A linear memory's scan from any start state = the scan from zero + the response to
the start state (kernels/state_response.py), for every backend that runs here."""

import pytest
import torch

from titans_plugin.kernels import MemoryState, add_start_state, neural_memory_scan, response_output, state_response


def _inputs(B=2, T=24, H=3, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k = (torch.nn.functional.normalize(r(B, T, H, D), dim=-1) for _ in range(2))
    v = r(B, T, H, D)
    theta, eta, alpha = 0.3 * torch.rand(B, T, H, generator=g, dtype=torch.float64), None, None
    eta = 0.5 + 0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    alpha = 0.1 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    start = MemoryState((r(B, H, D, D),), (r(B, H, D, D),))
    return (q, k, v, theta, eta, alpha), start


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("chunk_size", [1, 8])
def test_scan_from_a_start_state_is_zero_start_plus_its_response(backend, chunk_size):
    (q, k, v, theta, eta, alpha), start = _inputs()
    for t in (q, k, v, theta, *start.weights, *start.momentum):
        t.requires_grad_()
    opts = dict(chunk_size=chunk_size, activation="silu", backend=backend)
    y, end = neural_memory_scan(q, k, v, theta, eta, alpha, start, **opts, max_grad_norm=None)
    zero = MemoryState(
        tuple(torch.zeros_like(w) for w in start.weights), tuple(torch.zeros_like(s) for s in start.momentum)
    )
    y0, end0 = neural_memory_scan(q, k, v, theta, eta, alpha, zero, **opts, max_grad_norm=None)
    U, P = state_response(q, k, theta, eta, alpha, **opts)
    X, end2 = add_start_state(end0, P, start)
    y2 = response_output(y0, U, X)
    assert (y2 - y).abs().max() < 1e-10
    assert (end2.weights[0] - end.weights[0]).abs().max() < 1e-10
    assert (end2.momentum[0] - end.momentum[0]).abs().max() < 1e-10
    # and so are the gradients, to every input and to the start state
    w = torch.randn_like(y)
    leaves = (q, k, v, theta, start.weights[0], start.momentum[0])
    ref = torch.autograd.grad((y * w).sum() + end.weights[0].sum() + 2 * end.momentum[0].sum(), leaves)
    got = torch.autograd.grad((y2 * w).sum() + end2.weights[0].sum() + 2 * end2.momentum[0].sum(), leaves)
    for a, b in zip(ref, got):
        assert (a - b).abs().max() < 1e-9


def test_the_clip_makes_the_scan_non_affine():
    """Why the inner-gradient clip rules this out: the clipped scan is not the sum."""
    (q, k, v, theta, eta, alpha), start = _inputs(seed=1)
    opts = dict(chunk_size=8, activation="silu", backend="chunk", max_grad_norm=0.05)
    y, _ = neural_memory_scan(q, k, v, theta, eta, alpha, start, **opts)
    zero = MemoryState((torch.zeros_like(start.weights[0]),), (torch.zeros_like(start.momentum[0]),))
    y0, end0 = neural_memory_scan(q, k, v, theta, eta, alpha, zero, **opts)
    U, P = state_response(q, k, theta, eta, alpha, chunk_size=8, activation="silu", backend="chunk")
    X, _ = add_start_state(end0, P, start)
    assert (response_output(y0, U, X) - y).abs().max() > 1e-3
