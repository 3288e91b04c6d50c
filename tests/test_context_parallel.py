"""Context parallel: P processes (gloo), each holding one shard of every sequence, give
the single-process logits and parameter gradients for every block type, fp64 to 1e-9.

The shard lengths are chosen to cut through what a block carries across the boundary:
MAC segments and memory chunks that straddle two shards, MAL's persistent prefix that
puts the memory's chunk grid off the shard grid, windows longer than a shard (keys from
two shards back) and shorter ones (a halo from the neighbour), and torchtitan's
head-tail layout (each rank holds two separate chunks of the sequence)."""

import pytest
import torch
import torch.distributed as dist

from devtools.models import max_rel_err, tiny_model
from devtools.ranks import run_ranks

PATTERNS = ["A", "W", "G", "L", "M", "C", "CGALWM"]
# Relative to each tensor's largest entry. fp64; a shard that starts inside a memory chunk
# re-runs that chunk from its start state in another order, and the gate gradients'
# sums cancel (measured up to 1.4e-8 for MAL, whose prefix puts every shard start
# mid-chunk; under 1e-10 otherwise).
TOL = 1e-7


def _check(actual, expected, what):
    err = max_rel_err(actual, expected)
    assert err <= TOL, f"{what}: relative error {err:.2e}"


def _positions(rank: int, size: int, T: int, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        n = T // size
        return torch.arange(rank * n, (rank + 1) * n)
    n = T // (2 * size)  # head-tail: chunks rank and 2P - 1 - rank
    head = torch.arange(rank * n, (rank + 1) * n)
    tail = torch.arange((2 * size - 1 - rank) * n, (2 * size - rank) * n)
    return torch.cat([head, tail])


def _checkpoint_blocks(model) -> None:
    """Activation checkpointing as torchtitan's full mode applies it: every block
    re-runs its forward in the backward."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name, block in list(model.layers.items()):
        model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)


def _worker(rank, size, T, layout, cases):
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (2, T))
    weight = torch.randn(2, T, 50, dtype=torch.float64)  # the loss: a random linear functional
    for pattern, titans in cases:
        titans = dict(titans)
        checkpointed = titans.pop("checkpoint", False)
        if "query_block" in titans:  # ring attention's query blocks, small enough to cut a shard
            from titans_plugin.context_parallel import ring_attention

            ring_attention.QUERY_BLOCK = titans.pop("query_block")
            ring_attention.FUSED_KERNELS = {}  # the written-out math, in query blocks
        if titans.pop("gather", False):  # full attention as on devices without the ring kernel
            from titans_plugin.blocks import attention

            attention.RING_DEVICES = ()
        reference = tiny_model(pattern, **titans)
        logits = reference(tokens)
        (logits * weight).sum().backward()

        model = tiny_model(pattern, **titans)
        model.shard_sequence(dist.group.WORLD)
        if checkpointed:
            _checkpoint_blocks(model)
        pos = _positions(rank, size, T, layout)
        local = model(tokens[:, pos], positions=pos.expand(2, -1))
        _check(local, logits[:, pos].detach(), f"{pattern} {titans} logits")
        (local * weight[:, pos]).sum().backward()
        for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
            g = p.grad  # every rank must have one: FSDP reduces those that exist
            assert g is not None, f"{pattern}: no gradient for {name} on rank {rank}"
            dist.all_reduce(g)
            _check(g, q.grad, f"{pattern} {titans} grad {name}")
        with torch.no_grad():  # no autograd: the same exchanges, no gradients
            _check(model(tokens[:, pos], positions=pos.expand(2, -1)), local.detach(), f"{pattern} no_grad")


def _run(size, T, layout, cases):
    run_ranks(_worker, size, T, layout, cases)


def test_two_shards_match_one_process():
    """T = 24 over 2: shards of 12 (3 chunks, 2 segments, halo of window - 1 = 4)."""
    _run(2, 24, "contiguous", [(p, {}) for p in PATTERNS] + [("L", {"mal_form": "fused"})])


def test_three_shards_cut_segments_and_reach_past_a_neighbour():
    """T = 24 over 3: shards of 8 cut MAC segments of 6; a window of 10 needs keys from
    two shards back (all-gathered); a chunk of 4 with MAL's 2-token prefix is cut in two."""
    cases = [(p, {}) for p in ("C", "L", "G")] + [(p, {"window": 10}) for p in ("W", "G", "L")]
    _run(3, 24, "contiguous", cases)


def test_activation_checkpointing_replays_exchanges():
    """A recomputed block must not exchange again (the other shards are not recomputing
    theirs at that moment): it replays what the first forward received."""
    _run(2, 24, "contiguous", [("CGALWM", {"checkpoint": True}), ("A", {"checkpoint": True, "window": 20})])


def test_head_tail_layout():
    """torchtitan's default load balancer: each rank holds two chunks of the sequence."""
    _run(2, 24, "headtail", [(p, {}) for p in ("CGALWM", "A")])


def test_ring_attention_over_four_shards():
    """Full attention passes key/value blocks along the shards (context_parallel/ring_attention.py):
    shard 3 receives three blocks and sends gradients back through two others. Also its
    reference math in query blocks of 5 (cutting every shard of 8), and the all-gather
    that devices without the fused kernel use."""
    _run(4, 32, "contiguous", [("AM", {"checkpoint": True}), ("A", {"query_block": 5}), ("A", {"gather": True})])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_block_attention_equals_its_reference(dtype):
    """SDPA's CPU flash kernel with its log-sum-exp, per key block and merged, against the
    written-out math: outputs and the gradients with the whole row's softmax."""
    from titans_plugin.context_parallel import ring_attention as ra

    fused, reference = ra._two_block_attention("cpu", dtype, 8, ra.FUSED_KERNELS["cpu"])
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert ra.fused_kernel_matches(ra.FUSED_KERNELS["cpu"], "cpu", dtype, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_block_kernel_calling_convention(dtype):
    """The CUDA flash kernel's calls, run on meta tensors (its shape functions, no GPU
    here): argument order, the log-sum-exp layout the merge reads, grouped key/value
    heads summed back. Its numbers are checked on the device itself before first use."""
    from titans_plugin.context_parallel import ring_attention as ra

    kernel = ra.FUSED_KERNELS["cuda"]
    q = torch.empty(2, 48, 4, 64, device="meta", dtype=dtype)
    k = torch.empty(2, 48, 2, 64, device="meta", dtype=dtype)
    out, lse = ra._block_forward(q, k, k, True, kernel)
    assert (out.shape, out.dtype, lse.shape, lse.dtype) == (q.shape, dtype, (2, 4, 48), torch.float32)
    dq, dk, dv = ra._block_backward(q, k, k, out, out, lse, False, kernel)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, k.shape)
    applies = kernel.applies
    assert applies(q)
    assert not applies(q.float())
    assert not applies(q[..., :60])
    assert not applies(q.new_empty(1, 1, 1, 512))


def test_a_fused_kernel_that_disagrees_is_never_used(monkeypatch):
    """A fused kernel that differs from the reference on its device (here: one that
    forgets the 1/sqrt(D) scale) is replaced by the reference, with a warning."""
    from titans_plugin.context_parallel import ring_attention as ra

    cpu = ra.FUSED_KERNELS["cpu"]

    def unscaled_forward(q, k, v, causal):
        return cpu.forward(q * q.shape[-1] ** 0.5, k, v, causal)

    monkeypatch.setitem(ra.FUSED_KERNELS, "cpu", ra.FusedKernel(unscaled_forward, cpu.backward, cpu.applies))
    monkeypatch.setattr(ra, "_CHECKED", {})
    q = torch.randn(1, 6, 2, 8, dtype=torch.float64)
    k = torch.randn(1, 6, 1, 8, dtype=torch.float64)
    with pytest.warns(UserWarning, match="does not match its reference"):
        out, lse = ra._block_forward(q, k, k, True)
    ref_out, ref_lse = ra._block_forward_reference(q, k, k, True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)


def test_reference_score_blocks_stay_within_their_budget(monkeypatch):
    """The written-out attention cuts its queries so a block's scores fit SCORE_ELEMENTS."""
    from titans_plugin.context_parallel import ring_attention as ra

    q = torch.randn(2, 40, 4, 8, dtype=torch.float64)
    k = torch.randn(2, 30, 2, 8, dtype=torch.float64)
    whole = ra._block_forward_reference(q, k, k, True)
    monkeypatch.setattr(ra, "SCORE_ELEMENTS", 2 * 4 * 30 * 7)
    assert ra._query_block(q, k) == 7
    for a, b in zip(ra._block_forward_reference(q, k, k, True), whole, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["naive"])
def test_per_token_reference_scan(backend):
    _run(2, 24, "contiguous", [("M", {"backend": backend}), ("G", {"backend": backend})])


def test_continued_causal_attention_in_blocks_equals_one_mask():
    """A shard's queries over all earlier keys, in query blocks recomputed in the
    backward, against one dense mask: outputs and gradients (persistent tokens included)."""
    from titans_plugin.blocks.attention import continued_causal_attention, masked_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 12, 2, 8, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    pk, pv = (torch.randn(3, 2, 8, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    w = torch.randn(2, 7, 4, 8, dtype=torch.float64, generator=g)
    leaves = (q, k, v, pk, pv)
    blocked = continued_causal_attention(q, k, v, 5, pk, pv, block=3)
    dense = masked_attention(q, k, v, torch.arange(5, 12), torch.arange(12), None, pk, pv)
    torch.testing.assert_close(blocked, dense, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad((blocked * w).sum(), leaves), torch.autograd.grad((dense * w).sum(), leaves), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


LINEAR = {"memory_depth": 1, "max_grad_norm": 0.0, "cp_scan": "parallel"}


def test_linear_memory_scans_from_zero_in_parallel():
    """cp_scan = "parallel": every shard but the first scans from zero and adds the state
    it receives (kernels/state_response.py). 2 and 3 shards, checkpointed, chunk gates,
    and MAC/MAL layers (which stay serial) in the same model."""
    _run(2, 24, "contiguous", [("CGALWM", LINEAR), ("GM", {**LINEAR, "gate_mode": "chunk"})])
    _run(3, 24, "contiguous", [("MG", {**LINEAR, "checkpoint": True})])


def test_parallel_scan_is_refused_where_it_is_not_exact():
    from titans_plugin.config import TitansConfig

    with pytest.raises(ValueError, match=r"titans.memory_depth must be 1 with titans.cp_scan='parallel'"):
        TitansConfig(pattern="M", cp_scan="parallel", max_grad_norm=0).validate(32, 2, 24)
    with pytest.raises(ValueError, match=r"titans.max_grad_norm must be 0 with titans.cp_scan='parallel'"):
        TitansConfig(pattern="M", cp_scan="parallel", memory_depth=1).validate(32, 2, 24)
    with pytest.raises(ValueError, match=r"titans.cp_scan must be one of \['serial', 'parallel'\]"):
        TitansConfig(pattern="M", cp_scan="ring").validate(32, 2, 24)
