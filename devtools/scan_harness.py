"""One comparison of a memory-scan backend against a reference, for every backend test.

Both run the same inputs (the backend's cast to `dtype` and moved to `device`, the state in
fp32; the reference's as given, usually fp64) and are compared on every output: y, each
end-state tensor (W_i, S_i), and the gradient of a random linear functional of both with
respect to every input, every initial-state tensor and, with restarts, every restart weight.
Each comparison is named, and the lists are zipped strictly, so a tensor cannot be skipped.
With max_grad_norm set, each token's clip factor (the backends' `stats`) is compared too.
"""

from collections.abc import Callable

import torch

from devtools.models import grads, max_rel_err
from titans_plugin.kernels import MemoryState

INPUT_NAMES = ("q", "k", "v", "theta", "eta", "alpha")


def state_names(depth: int, prefix: str = "") -> list[str]:
    return [f"{prefix}W{i + 1}" for i in range(depth)] + [f"{prefix}S{i + 1}" for i in range(depth)]


def _leaves(tensors, dtypes, device=None):
    return [
        t.detach().to(device=device or t.device, dtype=dt).requires_grad_()
        for t, dt in zip(tensors, dtypes, strict=True)
    ]


def run_scan(
    scan: Callable, inputs, state: MemoryState, initial: MemoryState | None, dtype=None, device=None, **config
):
    """(y, end state, leaves in the order of `names`, the scan's stats or None) of one scan
    on leaf copies."""
    depth = len(state.weights)
    in_dtypes = [dtype or t.dtype for t in inputs[:3]] + [torch.float32 if dtype else t.dtype for t in inputs[3:]]
    st_tensors = [*state.weights, *state.momentum]
    st_dtypes = [torch.float32 if dtype else t.dtype for t in st_tensors]
    ins = _leaves(inputs, in_dtypes, device)
    st = _leaves(st_tensors, st_dtypes, device)
    init = None
    leaves = [*ins, *st]
    if initial is not None:
        init = _leaves(initial.weights, [torch.float32 if dtype else t.dtype for t in initial.weights], device)
        leaves += init
        config["initial"] = MemoryState(tuple(init), ())
    if config.get("resets") is not None and device is not None:
        config["resets"] = config["resets"].to(device)
    stats: dict | None = {} if config.get("max_grad_norm") else None
    if stats is not None:
        config["stats"] = stats
    y, end = scan(*ins, MemoryState(tuple(st[:depth]), tuple(st[depth:])), **config)
    return y, end, leaves, stats


def compare(
    scan: Callable,
    reference: Callable,
    inputs,
    state: MemoryState,
    *,
    tol: float,
    grad_tol: float,
    dtype=None,
    device=None,
    initial: MemoryState | None = None,
    reference_config: dict | None = None,
    **config,
) -> dict[str, float]:
    """Largest relative errors of `scan` against `reference`, by name; asserts each is
    within its tolerance (outputs and end state `tol`, gradients `grad_tol`) and finite."""
    depth = len(state.weights)
    y, end, leaves, stats = run_scan(scan, inputs, state, initial, dtype, device, **config)
    ref_config = {**config, **(reference_config or {})}
    y_ref, end_ref, ref_leaves, ref_stats = run_scan(reference, inputs, state, initial, **ref_config)
    if dtype is not None:
        assert y.dtype == dtype, y.dtype
    names = [*INPUT_NAMES, *state_names(depth, "initial ")] + (
        [f"restart W{i + 1}" for i in range(depth)] if initial else []
    )
    errors = {"y": max_rel_err(y.double().cpu(), y_ref.double().cpu())}
    if stats is not None or ref_stats is not None:
        assert stats is not None, "the reference reported clip factors, the scan did not"
        assert ref_stats is not None, "the scan reported clip factors, the reference did not"
        factor, factor_ref = stats["clip_factor"], ref_stats["clip_factor"]
        assert factor.shape == factor_ref.shape == y.shape[:3], (factor.shape, factor_ref.shape)
        assert factor.dtype == torch.float32, factor.dtype
        assert not factor.requires_grad
        errors["clip factor"] = max_rel_err(factor.double().cpu(), factor_ref.double().cpu())
    ends = zip(
        state_names(depth, "end "), [*end.weights, *end.momentum], [*end_ref.weights, *end_ref.momentum], strict=True
    )
    for name, a, b in ends:
        assert a.dtype == torch.float32 or dtype is None, (name, a.dtype)
        errors[name] = max_rel_err(a.double().cpu(), b.double().cpu())
    got = grads(y, end, leaves)
    want = grads(y_ref, end_ref, ref_leaves)
    for name, a, b in zip(names, got, want, strict=True):
        assert torch.isfinite(a).all(), name
        errors[f"gradient of {name}"] = max_rel_err(a.double().cpu(), b.double().cpu())
    for name, error in errors.items():
        limit = grad_tol if name.startswith("gradient") else tol
        assert error < limit, (name, error, limit)
    return errors
