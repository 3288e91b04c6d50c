"""Causal attention with optional sliding window and persistent memory tokens.

Keys are addressed by absolute position. A query at position t sees key s when
s <= t and t - s < window (window None = full causal). Persistent tokens (paper section
3.3: learnable, input-independent, prepended) are projected by the same wk/wv, carry no
rotary position, and are visible to every query: they are task knowledge, not a place
in the sequence.

Three paths give the same numbers:
- `causal_attention`: full attention over a whole sequence, SDPA's fused causal kernel.
- `banded_attention`: training, O(T * window): queries in blocks of `window`, each block
  against its own and the previous block's keys.
- `masked_attention`: decoding, persistent tokens and short inputs: one dense boolean mask.
Both use SDPA, which picks a fused kernel where one applies.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from titans_plugin.context_parallel import RING_DEVICES, ring_causal_attention

from .documents import document_starts, positions_in_document, same_document
from .rope import apply_rope, rope_freqs


class KVCache(NamedTuple):
    k: torch.Tensor  # [B, S, H_kv, D] after RoPE
    v: torch.Tensor
    pos: int  # absolute position of the next token


def _sdpa(q_BTHD, k_BSHD, v_BSHD, mask_TS):
    """SDPA for q [..., T, H, D], k, v [..., S, H_kv, D] and a boolean mask [..., T, S]
    (True = attend) that broadcasts over the leading dims. GQA by repetition. Leading
    dims are flattened into one batch dim: SDPA's 4-D form is what every backend
    (and inductor's decomposition) handles."""
    lead = q_BTHD.shape[:-3]
    T, H, D = q_BTHD.shape[-3:]
    S = k_BSHD.shape[-3]
    rep = H // k_BSHD.shape[-2]
    if rep > 1:
        k_BSHD = k_BSHD.repeat_interleave(rep, dim=-2)
        v_BSHD = v_BSHD.repeat_interleave(rep, dim=-2)
    q, k, v = (t.reshape(-1, *t.shape[-3:]).transpose(1, 2) for t in (q_BTHD, k_BSHD, v_BSHD))
    mask = mask_TS.expand(*lead, T, S).reshape(-1, 1, T, S)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(*lead, T, H, D)


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[T, S] boolean: causal, and within the window when there is one."""
    d = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)
    ok = d >= 0
    return ok & (d < window) if window is not None else ok


def _with_persistent(mask, k, v, pk, pv):
    """Prepend persistent keys/values [N_p, H_kv, D] to k, v [..., S, H_kv, D] (any leading
    dims) and let every query see them: the mask [..., T, S] gains N_p leading True columns."""
    if pk is None:
        return mask, k, v
    lead = k.shape[:-3]
    Np = pk.shape[0]
    k = torch.cat([pk.to(k.dtype).expand(*lead, *pk.shape), k], dim=-3)
    v = torch.cat([pv.to(v.dtype).expand(*lead, *pv.shape), v], dim=-3)
    mask = torch.cat([mask.new_ones(*mask.shape[:-1], Np), mask], dim=-1)
    return mask, k, v


def causal_attention(q, k, v):
    """Full causal attention over one sequence via SDPA's is_causal path (no mask tensor)."""
    rep = q.shape[-2] // k.shape[-2]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=-2), v.repeat_interleave(rep, dim=-2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2)


def document_causal_attention(q, k, v, doc_ids):
    """Full causal attention inside each document of a packed batch: the fused causal
    kernel on each document's span, so no [T, T] mask and no work across documents."""
    B, T = doc_ids.shape
    cuts = [[] for _ in range(B)]
    for b, t in document_starts(doc_ids).nonzero().tolist():  # one host sync
        cuts[b].append(t)
    rows = []
    for b in range(B):
        bounds = [*cuts[b], T]
        spans = [
            causal_attention(*(x[b : b + 1, lo:hi] for x in (q, k, v)))
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        rows.append(torch.cat(spans, dim=1))
    return torch.cat(rows, dim=0)


def masked_attention(q, k, v, q_pos, k_pos, window, pk=None, pv=None, same_doc=None):
    """q [B, T, Hq, D] at positions q_pos [T]; k, v [B, S, Hkv, D] at k_pos [S];
    same_doc [B, T, S]: also require query and key to share a document."""
    mask = visible(q_pos, k_pos, window)
    if same_doc is not None:
        mask = mask & same_doc
    mask, k, v = _with_persistent(mask, k, v, pk, pv)
    return _sdpa(q, k, v, mask)


def continued_causal_attention(q, k, v, pos: int, pk=None, pv=None, block: int = 1024):
    """Full causal attention of q [B, T, H, D] at positions pos .. pos + T - 1 over k, v
    [B, pos + T, H_kv, D] at positions 0 .. pos + T - 1 (context parallel: a shard's
    queries over every earlier key). SDPA's fused causal path aligns the diagonal to the
    first key, not the last, so this needs a mask; a dense one ([T, pos + T], and a float
    copy inside SDPA) would be saved for the backward in every layer. Instead the queries
    go in blocks, each over the keys up to its last position, each recomputed in the
    backward: only q, k and v are kept."""
    T = q.shape[1]
    outs = []
    for lo in range(0, T, block):
        hi = min(T, lo + block)
        args = (q[:, lo:hi], k[:, : pos + hi], v[:, : pos + hi])
        q_pos = torch.arange(pos + lo, pos + hi, device=q.device)
        k_pos = torch.arange(pos + hi, device=q.device)

        def attend(q_blk, k_blk, v_blk, q_pos=q_pos, k_pos=k_pos):
            return masked_attention(q_blk, k_blk, v_blk, q_pos, k_pos, None, pk, pv)

        if torch.is_grad_enabled():
            outs.append(checkpoint(attend, *args, use_reentrant=False))
        else:
            outs.append(attend(*args))
    return torch.cat(outs, dim=1)


def banded_attention(q, k, v, window: int, pk=None, pv=None, doc_ids=None, past=None):
    """Sliding-window attention over one sequence (q, k, v aligned, positions 0..T-1);
    doc_ids [B, T]: a query sees only keys of its own document. past: keys and values
    [B, n, H_kv, D] of the n < window positions before position 0 (context parallel: the
    end of the previous shard), else none."""
    B, T, Hq, D = q.shape
    W = window
    n = -(-T // W)
    pad = n * W - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    n_past = 0 if past is None else past[0].shape[1]
    # keys of block i: positions [(i-1)W, (i+1)W); block -1 is the past, zero-padded in
    # front to W and masked out below where there is none
    if past is None:
        k_prev = F.pad(k, (0, 0, 0, 0, W, 0))[:, : n * W]
        v_prev = F.pad(v, (0, 0, 0, 0, W, 0))[:, : n * W]
    else:
        k_prev, v_prev = (
            torch.cat([F.pad(p.to(t.dtype), (0, 0, 0, 0, W - n_past, 0)), t], dim=1)[:, : n * W]
            for p, t in zip(past, (k, v), strict=True)
        )

    def blocks(t):
        return t.reshape(B, n, W, *t.shape[2:])

    kb = torch.cat([blocks(k_prev), blocks(k)], dim=2)  # [B, n, 2W, Hkv, D]
    vb = torch.cat([blocks(v_prev), blocks(v)], dim=2)
    qb = blocks(q)
    i = torch.arange(W, device=q.device)
    j = torch.arange(2 * W, device=q.device) - W  # key offset relative to block start
    mask = visible(i, j, window)  # same for every block...
    mask = mask.expand(n, W, 2 * W).clone()
    mask[0, :, : W - n_past] = False  # ...except that block 0 has no previous block (or part of one)
    if doc_ids is not None:
        ids = F.pad(doc_ids, (0, pad), value=-1)
        ids_prev = F.pad(ids, (W, 0), value=-1)[:, : n * W]
        ids_k = torch.cat([ids_prev.view(B, n, W), ids.view(B, n, W)], dim=2)
        mask = mask & same_document(ids.view(B, n, W), ids_k)  # [B, n, W, 2W]
    mask, kb, vb = _with_persistent(mask, kb, vb, pk, pv)
    out = _sdpa(qb, kb, vb, mask)  # [B, n, W, Hq, D]
    return out.reshape(B, n * W, Hq, D)[:, :T]


class Attention(nn.Module):
    """GQA attention with RoPE, torchtitan's llama3 parameter names (wq, wk, wv, wo),
    an optional sliding window and optional persistent tokens."""

    def __init__(self, dim, n_heads, n_kv_heads=None, window=None, n_persistent=0):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = dim // n_heads
        self.window = window
        self.n_persistent = n_persistent
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.persistent = nn.Parameter(torch.empty(n_persistent, dim)) if n_persistent else None
        self.init_weights(0.02)

    def init_weights(self, init_std: float) -> None:
        for lin in (self.wq, self.wk, self.wv):
            nn.init.trunc_normal_(lin.weight, std=0.02)
        nn.init.trunc_normal_(self.wo.weight, std=init_std)
        if self.persistent is not None:
            nn.init.normal_(self.persistent, std=0.02)

    def persistent_kv(self):
        """Keys and values [N_p, H_kv, D] of the persistent tokens (no RoPE), or Nones."""
        if self.persistent is None:
            return None, None
        p = self.persistent
        Np = p.shape[0]
        return self.wk(p).view(Np, -1, self.head_dim), self.wv(p).view(Np, -1, self.head_dim)

    def project_kv(self, x, freqs_cis, pos):
        """k, v [B, T, H_kv, D] with RoPE at positions pos .. pos + T - 1 (or at the
        per-row positions pos [B, T])."""
        B, T, _ = x.shape
        k = self.wk(x).view(B, T, -1, self.head_dim)
        v = self.wv(x).view(B, T, -1, self.head_dim)
        return apply_rope(k, rope_freqs(freqs_cis, pos, T)), v

    def project(self, x, freqs_cis, pos):
        """q, k, v [B, T, H, D] with RoPE as in project_kv."""
        B, T, _ = x.shape
        k, v = self.project_kv(x, freqs_cis, pos)
        q = self.wq(x).view(B, T, -1, self.head_dim)
        return apply_rope(q, rope_freqs(freqs_cis, pos, T)), k, v

    def _attend_continuing(self, q, k, v, past, pos: int, pk, pv):
        """q, k, v of T tokens at positions pos .. pos + T - 1, continuing after `past`:
        the keys and values of the n positions just before pos (n = pos without a
        window, min(window - 1, pos) with one). No mask larger than a block is kept."""
        T = q.shape[1]
        if self.window is not None and self.window < T:
            return banded_attention(q, k, v, self.window, pk, pv, past=past)
        n = past[0].shape[1]
        k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        if self.window is None:
            return continued_causal_attention(q, k, v, pos, pk, pv)
        q_pos = torch.arange(pos, pos + T, device=q.device)
        k_pos = torch.arange(pos - n, pos + T, device=q.device)
        return masked_attention(q, k, v, q_pos, k_pos, self.window, pk, pv)

    def forward_shard(self, x, freqs_cis, shard):
        """Context parallel: x [B, T, dim] is one contiguous shard of the sequence
        (context_parallel/transport.py); the keys and values of earlier positions come from the
        shards before it: the last window - 1, or all of them without a window (passed
        along the shards by ring attention on CPU and CUDA; gathered when there are
        persistent tokens, and on other devices)."""
        B, T, _ = x.shape
        pos = shard.offset
        q, k, v = self.project(x, freqs_cis, pos)
        pk, pv = self.persistent_kv()
        if self.window is None and pk is None and shard.size > 1 and x.device.type in RING_DEVICES:
            return self.wo(ring_causal_attention(shard, q, k, v).reshape(B, T, -1))
        past = shard.previous((k, v), None if self.window is None else self.window - 1)
        out = self._attend_continuing(q, k, v, past, pos, pk, pv)
        return self.wo(out.reshape(B, T, -1))

    def forward(self, x, freqs_cis, cache: KVCache | None = None, doc_ids: torch.Tensor | None = None):
        """x [B, T, dim] -> (out [B, T, dim], cache for the next call). doc_ids [B, T]
        (packed documents, a whole sequence): no query sees another document's keys;
        persistent tokens stay visible to every query."""
        B, T, _ = x.shape
        pos: int | torch.Tensor = 0 if cache is None else cache.pos
        if doc_ids is not None:  # RoPE counts from each document's start, as alone
            if cache is not None:
                raise ValueError("document ids apply to a whole sequence, not to decoding with a cache")
            pos = positions_in_document(doc_ids)
        q, k, v = self.project(x, freqs_cis, pos)
        pk, pv = self.persistent_kv()
        if doc_ids is not None:
            if self.window is None and pk is None:
                out = document_causal_attention(q, k, v, doc_ids)
            elif self.window is not None and self.window < T:
                out = banded_attention(q, k, v, self.window, pk, pv, doc_ids)
            else:
                t = torch.arange(T, device=x.device)
                out = masked_attention(q, k, v, t, t, self.window, pk, pv, same_document(doc_ids, doc_ids))
            return self.wo(out.reshape(B, T, -1)), None
        if cache is None and self.window is None and pk is None:
            out = causal_attention(q, k, v)  # fused causal kernel, no T x T mask
        else:
            past = (k[:, :0], v[:, :0]) if cache is None else (cache.k, cache.v)
            assert isinstance(pos, int)  # document ids were handled above
            out = self._attend_continuing(q, k, v, past, pos, pk, pv)
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        keep = k.shape[1] if self.window is None else min(self.window - 1, k.shape[1])
        new_cache = KVCache(k[:, k.shape[1] - keep :], v[:, v.shape[1] - keep :], pos + T)
        return self.wo(out.reshape(B, T, -1)), new_cache
