"""The Gluon cluster forward's arithmetic in torch (cluster_forward.py, statement for
statement): each CTA's share of every product from its own hidden units, the operands
rounded to bf16 where the kernel rounds them, the inner error's products in bf16x3, and the
cluster sums in the kernel's order. Gluon cannot run on a CPU, so this is what the CPU tests
hold to the reference; it runs on any device, so on a GPU it can be compared with the
kernel. What it does not reproduce, each at the level of a last bit: the tensor cores'
accumulation order inside one product, the GPU's approximate exp, sqrt and division, fused
multiply-adds, and the association of scans and of reductions within a CTA.

Same inputs and outputs as `titans::memory_scan` (triton_backend/ops.py), flat state
included; fp32 arithmetic throughout."""

import torch
from torch import Tensor

from ..activations import get_activation

EPS = 1e-30  # chunk.py's _EPS: inside the clip's sqrt
ROWS = 64  # the kernel's tile rows: a chunk padded to 64 tokens


def _bf16(x: Tensor) -> Tensor:
    return x.to(torch.bfloat16).float()


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """A wgmma: bf16 operands, fp32 accumulation."""
    return _bf16(a) @ _bf16(b)


def _cluster_sum(parts: list[Tensor]) -> Tensor:
    """Every CTA's partial summed as the kernel sums them (cluster_pieces.cluster_sum): a
    pairwise tree over the ranks, (p0 + p1) + (p2 + p3)."""
    while len(parts) > 1:
        parts = [parts[i] + parts[i + 1] for i in range(0, len(parts), 2)]
    return parts[0]


def _padded(x: Tensor, t0: int, n: int) -> Tensor:
    """Tokens t0 .. t0 + n of x [heads, T, ...], padded with zeros to the kernel's ROWS."""
    out = x.new_zeros(x.shape[0], ROWS, *x.shape[2:])
    out[:, :n] = x[:, t0 : t0 + n]
    return out


def _segment_sum(x: Tensor) -> Tensor:
    """out[..., t, s] = sum_{s < j <= t} x_j (the kernel's per-entry cumulative sum)."""
    n = x.shape[-1]
    j = torch.arange(n, device=x.device)
    terms = torch.where(j[:, None] > j[None, :], x[..., :, None], 0.0)
    return terms.cumsum(-2)


def cluster_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor,
    log_retain: Tensor,
    state: Tensor,
    hidden: int,
    chunk_size: int,
    activation: str,
    max_grad_norm: float,
    save_states: bool,
    checkpoint_every: int,
    n_ctas: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y [B, T, H, D] in q's dtype, end state, checkpoints, clip factors), as the kernel
    computes them with a cluster of n_ctas CTAs of hidden / n_ctas units each."""
    act, act_grad, _ = get_activation(activation)
    B, T, H, D = q.shape
    HC = hidden // n_ctas
    L1 = D * hidden
    if chunk_size > ROWS or hidden % n_ctas:
        raise ValueError(f"the cluster scan takes chunks <= {ROWS} and hidden units that divide among the CTAs")
    flat = state.reshape(B * H, -1).float().clone()
    W1 = flat[:, :L1].view(-1, D, hidden)
    W2 = flat[:, L1 : 2 * L1].view(-1, hidden, D)
    S1 = flat[:, 2 * L1 : 3 * L1].view(-1, D, hidden)
    S2 = flat[:, 3 * L1 :].view(-1, hidden, D)

    def heads(x: Tensor) -> Tensor:  # [B, T, H, ...] -> [B*H, T, ...]
        return x.transpose(1, 2).reshape(B * H, T, *x.shape[3:]).float()

    qh, kh, vh, th, le, lr = (heads(t) for t in (q, k, v, theta, log_eta, log_retain))
    n_chunks = -(-T // chunk_size)
    n_ckpt = -(-n_chunks // checkpoint_every)
    saved = flat.new_empty(B * H, n_ckpt, flat.shape[-1]) if save_states else flat.new_empty(0)
    y = torch.zeros(B * H, T, D, device=q.device)
    clip = torch.ones(B * H, T, device=q.device)
    shard = [slice(r * HC, (r + 1) * HC) for r in range(n_ctas)]
    idx = torch.arange(ROWS, device=q.device)
    for ci in range(n_chunks):
        if save_states and ci % checkpoint_every == 0:
            saved[:, ci // checkpoint_every] = flat
        t0 = ci * chunk_size
        n_valid = min(chunk_size, T - t0)
        last = n_valid - 1
        valid = idx < n_valid

        qc, kc, vc, thc, lec, lrc = (_padded(t, t0, n_valid) for t in (qh, kh, vh, th, le, lr))
        sqa0 = (kc * kc).sum(-1)
        # 1. The inner error: each CTA's share of M(k) in bf16x3, summed over the cluster.
        e_parts, norms = [], []
        for s in shard:
            w1, w2 = W1[:, :, s], W2[:, s, :]
            w1h, w2h = _bf16(w1), _bf16(w2)
            a_fine = act(_mm(kc, w1 - w1h) + _mm(kc, w1h))
            a_lo = a_fine - _bf16(a_fine)
            part = _mm(a_fine, w2 - w2h)
            part = part + _mm(a_lo, w2h)
            e_parts.append(part + _mm(a_fine, w2h))
            norms.append((a_fine * a_fine).sum(-1))
        sqa1 = _cluster_sum(norms)
        d1 = 2.0 * (_cluster_sum(e_parts) - vc)
        sqd1 = (d1 * d1).sum(-1)
        a, d0 = [], []
        for s in shard:
            z = _mm(kc, W1[:, :, s])
            a.append(act(z))
            d0.append(_mm(d1, W2[:, s, :].transpose(1, 2)) * act_grad(z))
        if max_grad_norm > 0:
            sqd0 = _cluster_sum([(d * d).sum(-1) for d in d0])
            factor = torch.clamp(max_grad_norm / torch.sqrt(sqa0 * sqd0 + sqa1 * sqd1 + EPS), max=1.0)
            clip[:, t0 : t0 + n_valid] = factor[:, :n_valid]
            theta_eff = thc * factor
        else:
            theta_eff = thc
        # 2. The decays.
        causal = (idx[:, None] >= idx[None, :]) & valid[:, None] & valid[None, :]
        A = torch.exp(torch.where(causal, _segment_sum(lrc), float("-inf")))
        E = torch.exp(torch.where(causal, _segment_sum(lec), float("-inf")))
        c = torch.exp(lrc.cumsum(-1))
        em = torch.exp(lec.cumsum(-1))
        f = (A * em[:, None, :]).sum(-1)
        n = E[:, last, :] * theta_eff
        G = _mm(A, E) * theta_eff[:, None, :]
        g = G[:, last, :]
        cT, fT, mT = (x[:, last, None, None] for x in (c, f, em))
        # 3-4. Each CTA's update and retrieval partials from its chunk-start shards.
        sG = _mm(qc, kc.transpose(1, 2)) * G
        y_parts, s_parts = [], []
        for r, s in enumerate(shard):
            w1, w2, s1_, s2_ = W1[:, :, s].clone(), W2[:, s, :].clone(), S1[:, :, s].clone(), S2[:, s, :].clone()
            kT, aT = kc.transpose(1, 2), a[r].transpose(1, 2)
            W1[:, :, s] = cT * w1 + fT * s1_ - _mm(kT, g[:, :, None] * d0[r])
            S1[:, :, s] = mT * s1_ - _mm(kT, n[:, :, None] * d0[r])
            W2[:, s, :] = cT * w2 + fT * s2_ - _mm(aT, g[:, :, None] * d1)
            S2[:, s, :] = mT * s2_ - _mm(aT, n[:, :, None] * d1)
            y0 = c[:, :, None] * _mm(qc, w1) + f[:, :, None] * _mm(qc, s1_) - _mm(sG, d0[r])
            h1 = act(y0)
            y_parts.append(c[:, :, None] * _mm(h1, w2) + f[:, :, None] * _mm(h1, s2_))
            s_parts.append(_mm(h1, aT))
        out = _cluster_sum(y_parts) - _mm(_cluster_sum(s_parts) * G, d1)
        y[:, t0 : t0 + n_valid] = out[:, :n_valid]
    y_out = y.view(B, H, T, D).transpose(1, 2).to(q.dtype)
    clip_out = clip.view(B, H, T).transpose(1, 2).contiguous() if max_grad_norm > 0 else clip.new_empty(0)
    saved_out = saved.view(B, H, n_ckpt, -1) if save_states else saved
    return y_out.contiguous(), flat.view(B, H, -1), saved_out, clip_out
