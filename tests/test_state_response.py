"""A linear memory's scan from any start state = the scan from zero + the response to
the start state (kernels/state_response.py), for every backend that runs here."""

import pytest
import torch

from devtools.scan_harness import compare
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


def _zero_start_plus_response(q, k, v, theta, eta, alpha, start, *, chunk_size, activation, backend):
    """The scan from `start`, computed as the scan from zero plus the response to `start`."""
    opts = dict(chunk_size=chunk_size, activation=activation, backend=backend)
    zero = MemoryState(
        tuple(torch.zeros_like(w) for w in start.weights), tuple(torch.zeros_like(s) for s in start.momentum)
    )
    y0, end0 = neural_memory_scan(q, k, v, theta, eta, alpha, zero, **opts, max_grad_norm=None)
    U, P = state_response(q, k, theta, eta, alpha, **opts)
    X, end = add_start_state(end0, P, start)
    return response_output(y0, U, X), end


def _scan(*inputs, **config):
    return neural_memory_scan(*inputs, **config, max_grad_norm=None)


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("chunk_size", [1, 8])
def test_scan_from_a_start_state_is_zero_start_plus_its_response(backend, chunk_size):
    """Outputs, end state and the gradient to every input and start-state tensor."""
    inputs, start = _inputs()
    config = dict(chunk_size=chunk_size, activation="silu", backend=backend)
    compare(_zero_start_plus_response, _scan, inputs, start, tol=1e-10, grad_tol=1e-9, **config)


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
