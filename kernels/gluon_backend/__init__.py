"""The Gluon cluster scan (backend `gluon_cluster`): the depth-2 memory's forward with the
state split over a thread-block cluster of sm_90 CTAs, resident in their shared memory
across chunks; its backward is the Triton one-program backward.

cluster_forward.py  the kernel (Gluon, sm_90; one cluster per (batch, head))
cluster_pieces.py   its layouts, activations, decays and cross-CTA sum
emulation.py        the same arithmetic in torch: what the CPU tests check, the GPU oracle
cluster.py          the custom op, which configurations it runs, its ahead-of-time compile
"""

import torch

from ..state import MemoryState
from ..triton_backend import ops
from .cluster import UNITS_PER_CTA, cluster_memory_scan, cluster_problem, device_problem, shared_memory_problem


def supports(
    q: torch.Tensor, state: MemoryState, *, chunk_size, activation, max_grad_norm=None, resets=False
) -> str | None:
    """Why the cluster scan cannot run this configuration here (None when it can): the
    Triton kernels' checks (its backward is theirs), the cluster kernel's scope, the
    device, and the kernel's shared memory against the device's limit."""
    config = dict(chunk_size=chunk_size, activation=activation, max_grad_norm=max_grad_norm, resets=resets)
    problem = ops.supports(q, state, **config)
    if problem:
        return problem
    dk, dv = state.weights[0].shape[-2], state.weights[-1].shape[-1]
    hidden = state.weights[0].shape[-1] if len(state.weights) == 2 else 0
    problem = cluster_problem(len(state.weights), dk, hidden, dv, chunk_size, q.dtype, bool(resets))
    problem = problem or device_problem(q.device)
    if problem or q.device.type != "cuda":
        return problem
    props = torch.cuda.get_device_properties(q.device)
    limit = getattr(props, "shared_memory_per_block_optin", None) or props.shared_memory_per_block
    return shared_memory_problem(hidden // UNITS_PER_CTA, chunk_size, activation, bool(max_grad_norm), limit)


def launch(q, k, v, theta, eta, alpha, state: MemoryState, **config):
    """The cluster scan, once `supports` has found nothing against it (`ops.launch`'s
    arguments): one cluster of hidden / 64 CTAs per (batch, head)."""
    n_ctas = state.weights[0].shape[-1] // UNITS_PER_CTA
    return ops.launch(q, k, v, theta, eta, alpha, state, **config, split=n_ctas, op=cluster_memory_scan)


__all__ = ["launch", "supports"]
