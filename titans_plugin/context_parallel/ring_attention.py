"""Full causal attention over contiguous sequence shards, passing key/value blocks along
the shards instead of gathering them (context parallel, context_parallel/transport.py).

Shard r needs the keys and values of shards 0..r. They travel as a chain: shard r sends
its own block to r + 1, then forwards each block it receives from r - 1, so shard r + 1
receives blocks r, r - 1, ..., 0 one at a time and never holds more than one besides its
own. Each block's attention is merged into the running output through its log-sum-exp,
as flash attention merges key blocks.

The backward runs the same chain for the keys and values again and a chain the other way
for their gradients: shard r receives from r + 1 the gradient of block j summed over the
shards after it, adds its own queries' part and passes it on to r - 1, until it reaches
shard j. No shard holds the whole sequence's keys, values or their gradients.

Per shard and layer: shard r receives r blocks of keys and values in the forward (as many
as an all-gather would deliver to the last shard) and sends r + 1 on (none from the last),
the same again in the backward, and r gradient blocks (fp32) each way.

Each block's attention is a fused flash-attention kernel that also returns the
log-sum-exp the merge needs: SDPA's CPU kernel, or on CUDA its flash kernel (fp16/bf16,
head dim a multiple of 8 up to 256). `_block_*_reference` is the same math written out,
in query blocks small enough to bound the scores' memory. A fused kernel is used on a
device only after it has matched the reference there (`fused_kernel_matches`, run once per
device, dtype and head dim): otherwise, with a warning, the reference runs instead.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist

from titans_plugin.utils.torch_internals import (
    flash_attention_cpu,
    flash_attention_cpu_backward,
    flash_attention_cuda,
    flash_attention_cuda_backward,
)

from .transport import wait_sends

QUERY_BLOCK = 1024  # reference path: at most this many queries per score block
SCORE_ELEMENTS = 1 << 26  # reference path: at most this many scores per block (256 MiB fp32)
RING_DEVICES = ("cpu", "cuda")  # where full attention passes blocks along; elsewhere it gathers


def _expand_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    return t.repeat_interleave(n_heads // t.shape[2], dim=2)


def _sum_groups(g: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Gradient of _expand_kv: each KV head gets the sum over its query heads."""
    return g.unflatten(2, (n_kv, g.shape[2] // n_kv)).sum(3)


# -- fused kernels, per device, on [B, H, T, D] with as many key as query heads ---------
def _cuda_applies(q) -> bool:
    return q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256


def _cpu_applies(q) -> bool:
    return True


class FusedKernel(NamedTuple):
    forward: Callable  # (q, k, v, causal) -> (out, lse)
    backward: Callable  # (dout, q, k, v, out, lse, causal) -> (dq, dk, dv)
    applies: Callable  # (q) -> whether it takes these queries (dtype, head dim)


FUSED_KERNELS = {
    "cpu": FusedKernel(flash_attention_cpu, flash_attention_cpu_backward, _cpu_applies),
    "cuda": FusedKernel(flash_attention_cuda, flash_attention_cuda_backward, _cuda_applies),
}
_CHECKED: dict = {}  # (device, dtype, head dim) -> whether the fused kernel matched the reference


def _fused(q) -> FusedKernel | None:
    """The fused kernel for q's device, dtype and head dim, or None where there is none or
    it did not match the reference on this device."""
    kernel = FUSED_KERNELS.get(q.device.type)
    if kernel is None or not kernel.applies(q):
        return None
    key = (str(q.device), q.dtype, q.shape[-1])
    if key not in _CHECKED:
        _CHECKED[key] = fused_kernel_matches(kernel, q.device, q.dtype, q.shape[-1])
    return kernel if _CHECKED[key] else None


def fused_kernel_matches(kernel: FusedKernel, device, dtype, head_dim: int) -> bool:
    """Run the fused kernel and the reference on a small problem on this device (two key
    blocks merged, grouped key/value heads, both backwards) and compare: a kernel whose
    calling convention or numerics differ from what this file assumes is never used."""
    import warnings

    tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 3e-2)
    try:
        fused_results, reference_results = _two_block_attention(device, dtype, head_dim, kernel)
        for a, b in zip(fused_results, reference_results, strict=True):
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
        return True
    except Exception as err:
        warnings.warn(
            f"ring attention: the fused attention kernel on {device} ({dtype}, head dim {head_dim}) "
            f"does not match its reference, so the reference (written-out attention) runs instead: {err}",
            stacklevel=2,
        )
        return False


def _two_block_attention(device, dtype, head_dim: int, fused: FusedKernel):
    """Outputs, log-sum-exp and gradients of 16 queries over two key blocks (the second
    causal), by the fused kernel and by the reference."""
    g = torch.Generator(device=device).manual_seed(0)
    q, dout = (torch.randn(2, 16, 4, head_dim, generator=g, device=device, dtype=dtype) for _ in range(2))
    k1, v1, k2, v2 = (torch.randn(2, 16, 2, head_dim, generator=g, device=device, dtype=dtype) for _ in range(4))
    results = []
    for kernel in (fused, None):
        out, lse = _merge(*_block_forward(q, k2, v2, True, kernel), *_block_forward(q, k1, v1, False, kernel))
        out = out.to(dtype)
        grads = [_block_backward(q, k, v, dout, out, lse, c, kernel) for k, v, c in ((k2, v2, True), (k1, v1, False))]
        results.append((out, lse, *[t for g3 in grads for t in g3]))
    return results


# -- one key block: the fused kernel where it applies, else the reference ---------------
_AUTO = object()


def _block_forward(q, k, v, causal: bool, kernel=_AUTO):
    """out [B, Tq, H, D] (q's dtype), lse [B, H, Tq] of q over one key block."""
    kernel = _fused(q) if kernel is _AUTO else kernel
    if kernel is None:
        return _block_forward_reference(q, k, v, causal)
    heads = lambda t: _expand_kv(t, q.shape[2]).transpose(1, 2)  # noqa: E731
    out, lse = kernel.forward(heads(q), heads(k), heads(v), causal)
    return out.transpose(1, 2), lse


def _block_backward(q, k, v, dout, out, lse, causal: bool, kernel=_AUTO):
    """dq, dk, dv of one key block, for the softmax over the whole row (out, lse: the
    merged output and log-sum-exp over every block)."""
    kernel = _fused(q) if kernel is _AUTO else kernel
    if kernel is None:
        return _block_backward_reference(q, k, v, dout, out, lse, causal)
    heads = lambda t: _expand_kv(t, q.shape[2]).transpose(1, 2)  # noqa: E731
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    dq, dk, dv = kernel.backward(t(dout), heads(q), heads(k), heads(v), t(out), lse, causal)
    return t(dq), _sum_groups(t(dk), k.shape[2]), _sum_groups(t(dv), v.shape[2])


def _query_block(q, k) -> int:
    """Queries per score block of the reference: at most QUERY_BLOCK, and few enough that
    a block's scores [B, H, queries, keys] stay within SCORE_ELEMENTS."""
    per_query = q.shape[0] * q.shape[2] * k.shape[1]
    return max(1, min(QUERY_BLOCK, SCORE_ELEMENTS // max(per_query, 1)))


def _scores(q, k, causal: bool, start: int):
    """[B, H, Tq, Tk] scores of queries q (positions start.. within the block) on keys k."""
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    if causal:
        q_pos = torch.arange(start, start + q.shape[1], device=q.device)
        s = s.masked_fill(torch.arange(k.shape[1], device=q.device) > q_pos[:, None], float("-inf"))
    return s


def _block_forward_reference(q, k, v, causal: bool):
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(dtype), _expand_kv(k, q.shape[2]).to(dtype), _expand_kv(v, q.shape[2]).to(dtype)
    outs, lses = [], []
    block = _query_block(q, k)
    for i in range(0, q.shape[1], block):
        s = _scores(q[:, i : i + block], k, causal, i)
        lse = torch.logsumexp(s, dim=-1)
        outs.append(torch.einsum("bhqk,bkhd->bqhd", torch.exp(s - lse.unsqueeze(-1)), v))
        lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=-1)


def _block_backward_reference(q, k, v, dout, out, lse, causal: bool):
    dtype = torch.promote_types(q.dtype, torch.float32)
    n_heads, n_kv = q.shape[2], k.shape[2]
    q, dout = q.to(dtype), dout.to(dtype)
    ke, ve = _expand_kv(k, n_heads).to(dtype), _expand_kv(v, n_heads).to(dtype)
    delta = (dout * out.to(dtype)).sum(-1).transpose(1, 2)  # [B, H, Tq]
    dq = torch.empty_like(q)
    dk, dv = torch.zeros_like(ke), torch.zeros_like(ve)
    block = _query_block(q, ke)
    for i in range(0, q.shape[1], block):
        sl = slice(i, i + block)
        p = torch.exp(_scores(q[:, sl], ke, causal, i) - lse[..., sl].unsqueeze(-1))
        dv += torch.einsum("bhqk,bqhd->bkhd", p, dout[:, sl])
        dp = torch.einsum("bqhd,bkhd->bhqk", dout[:, sl], ve)
        ds = p * (dp - delta[..., sl].unsqueeze(-1)) * q.shape[-1] ** -0.5
        dq[:, sl] = torch.einsum("bhqk,bkhd->bqhd", ds, ke)
        dk += torch.einsum("bhqk,bqhd->bkhd", ds, q[:, sl])
    return dq, _sum_groups(dk, n_kv), _sum_groups(dv, n_kv)


def _merge(out, lse, out_b, lse_b):
    new = torch.logaddexp(lse, lse_b)
    w, w_b = (torch.exp(x - new).transpose(1, 2).unsqueeze(-1) for x in (lse, lse_b))
    return out * w + out_b.to(out.dtype) * w_b, new


# -- the chain ------------------------------------------------------------------------
def _ring_forward(shard, q, k, v):
    out, lse = _block_forward(q, k, v, causal=True)
    out = out.to(torch.promote_types(q.dtype, torch.float32))
    sends = []
    if not shard.is_last:
        sends += [shard.send(k, shard.rank + 1), shard.send(v, shard.rank + 1)]
    for _ in range(shard.rank):  # blocks r - 1, ..., 0
        kb, vb = (shard.recv(t.shape, t.dtype, t.device, shard.rank - 1) for t in (k, v))
        if not shard.is_last:
            sends += [shard.send(kb, shard.rank + 1), shard.send(vb, shard.rank + 1)]
        out, lse = _merge(out, lse, *_block_forward(q, kb, vb, causal=False))
    # this layer's sends complete before it returns, so their buffers (whole key/value
    # blocks) do not pile up over the layers; the receivers take them in this same layer
    wait_sends(sends)
    return out.to(q.dtype), lse


class _RingAttention(torch.autograd.Function):
    """Carries the backward of an attention output computed by _ring_forward."""

    @staticmethod
    def forward(ctx, shard, q, k, v, out, lse):
        ctx.shard = shard
        ctx.save_for_backward(q, k, v, out, lse)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, dout):
        shard = ctx.shard
        q, k, v, out, lse = ctx.saved_tensors
        dq = torch.zeros(q.shape, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
        sends = []
        for j in range(shard.rank, -1, -1):  # own block first, then r - 1, ..., 0
            if j == shard.rank:
                kb, vb = k, v
            else:
                kb, vb = (shard.recv(t.shape, t.dtype, t.device, shard.rank - 1) for t in (k, v))
            if not shard.is_last:
                sends += [shard.send(kb, shard.rank + 1), shard.send(vb, shard.rank + 1)]
            dq_j, dk_j, dv_j = _block_backward(q, kb, vb, dout, out, lse, j == shard.rank)
            dq += dq_j
            dk_j, dv_j = dk_j.to(dq.dtype), dv_j.to(dq.dtype)
            if not shard.is_last:  # block j's gradient from the queries of the shards after this one
                dk_j = dk_j + shard.recv(dk_j.shape, dk_j.dtype, dk_j.device, shard.rank + 1)
                dv_j = dv_j + shard.recv(dv_j.shape, dv_j.dtype, dv_j.device, shard.rank + 1)
            if j == shard.rank:
                dk, dv = dk_j, dv_j
            else:
                sends += [shard.send(dk_j, shard.rank - 1), shard.send(dv_j, shard.rank - 1)]
        wait_sends(sends)  # as in _ring_forward
        return None, dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def ring_causal_attention(shard, q, k, v):
    """Causal attention of this shard's queries q [B, T, H, D] over the keys and values of
    every position up to theirs; k, v [B, T, H_kv, D] are this shard's. Under activation
    checkpointing a recompute replays the first forward's output (the other shards are not
    recomputing at that moment) and the backward is the same."""
    if shard.size == 1 or not dist.is_initialized():
        raise ValueError("ring attention needs a SequenceShard of several shards")
    out, lse = shard.once(_ring_forward, shard, q.detach(), k.detach(), v.detach())
    if not torch.is_grad_enabled():
        return out
    return _RingAttention.apply(shard, q, k, v, out, lse)
