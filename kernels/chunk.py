"""Exact chunk-parallel PyTorch path for the Titans neural memory, with a hand-written backward.

`chunk_forward` is the closed form (derived in chunk_autograd.py's docstring, which runs
this same function under autograd as the backward's reference); this file adds:

- forward runs chunk by chunk without autograd and keeps only each chunk's start state
  (weights and momentum) plus the inputs: O(T * D + n_chunks * |W|) saved, nothing per token
  beyond the inputs, never the weights at every token; without a backward to come
  (inference), not even the chunk-start states;
- backward walks the chunks in reverse, recomputes one chunk's intermediates from its saved
  start state and applies the chain rule written out below, so at most one chunk's
  activations are alive at a time.

Per chunk and head, with a_l the input of memory layer l for the keys, z_l = a_l W_l,
d_l the backpropagated inner error at layer l's output (d_{L-1} = 2 (M(k) - v)), h_l the
query's input to layer l and y_l = c*(h_l W_l) + f*(h_l S_l) - ((h_l a_l^T) * G) d_l:
    W'_l = c_T W_l + f_T S_l - a_l^T (g * d_l)        g = G[T, :]
    S'_l = m_T S_l - a_l^T (n * d_l)                  n = E[T, :] * theta'
and theta' = theta * clip, clip = min(1, max_norm / sqrt(sum_l |a_l|^2 |d_l|^2)).
The backward differentiates exactly these expressions (tests compare it with autograd
through chunk_autograd.py and with the per-token reference, outputs and all gradients).
It does not support double backward; chunk_autograd.py does.
"""

from dataclasses import dataclass

import torch

from .activations import Activation, get_activation
from .chunk_math import prepare_inputs, reverse_cumsum, segment_sum, segment_sum_backward
from .state import MemoryState, check_resets

_EPS = 1e-30


@dataclass
class ChunkIntermediates:
    a: list  # inputs of each memory layer for the keys, a[0] = k
    z: list  # pre-activations of the keys' forward
    d: list  # inner errors d_l
    dphi: list  # act'(z_l) for l < L - 1
    theta_eff: torch.Tensor
    clip: tuple | None  # (raw scale, squared norm, |a_l|^2 list, |d_l|^2 list)
    A: torch.Tensor
    E: torch.Tensor
    P: torch.Tensor  # A @ E
    G: torch.Tensor
    c: torch.Tensor
    em: torch.Tensor
    f: torch.Tensor
    h: list  # query input of each layer
    y: list  # query pre-activation of each layer
    s: list  # h_l a_l^T
    hW: list
    hS: list


def chunk_forward(q, k, v, theta, log_eta, log_retain, W, S, act: Activation, max_norm):
    """One chunk, no autograd. Returns output, next weights, next momentum, intermediates."""
    L = len(W)
    a, z = [k], []
    x = k
    for j in range(L):
        zl = x @ W[j]
        z.append(zl)
        x = act.fn(zl) if j < L - 1 else zl
        a.append(x)
    a.pop()
    dphi = [act.grad(z[j]) for j in range(L - 1)]
    d = [2.0 * (x - v)]  # filled from the last layer back
    for j in range(L - 2, -1, -1):
        d.insert(0, (d[0] @ W[j + 1].mT) * dphi[j])

    clip = None
    theta_eff = theta
    if max_norm:
        sqa = [(al * al).sum(-1) for al in a]
        sqd = [(dl * dl).sum(-1) for dl in d]
        sq = sum(x * y for x, y in zip(sqa, sqd, strict=True))
        raw = max_norm / torch.sqrt(sq + _EPS)
        theta_eff = theta * torch.clamp(raw, max=1.0)
        clip = (raw, sq, sqa, sqd)

    A = torch.exp(segment_sum(log_retain))
    E = torch.exp(segment_sum(log_eta))
    P = A @ E
    G = P * theta_eff.unsqueeze(-2)
    c = torch.exp(torch.cumsum(log_retain, -1))
    em = torch.exp(torch.cumsum(log_eta, -1))
    f = (A @ em.unsqueeze(-1)).squeeze(-1)

    hs, ys, ss, hWs, hSs = [], [], [], [], []
    x = q
    for j in range(L):
        hs.append(x)
        s = x @ a[j].mT
        hw, hS = x @ W[j], x @ S[j]
        y = c.unsqueeze(-1) * hw + f.unsqueeze(-1) * hS - (s * G) @ d[j]
        ss.append(s)
        hWs.append(hw)
        hSs.append(hS)
        ys.append(y)
        x = act.fn(y) if j < L - 1 else y

    g = G[..., -1, :].unsqueeze(-1)
    n = (E[..., -1, :] * theta_eff).unsqueeze(-1)
    cT, fT, mT = (t[..., -1, None, None] for t in (c, f, em))
    W_next = tuple(cT * W[j] + fT * S[j] - a[j].mT @ (g * d[j]) for j in range(L))
    S_next = tuple(mT * S[j] - a[j].mT @ (n * d[j]) for j in range(L))
    inter = ChunkIntermediates(a, z, d, dphi, theta_eff, clip, A, E, P, G, c, em, f, hs, ys, ss, hWs, hSs)
    return x, W_next, S_next, inter


def chunk_backward(dout, dW_next, dS_next, q, k, v, theta, W, S, act: Activation, it: ChunkIntermediates):
    """Gradients of one chunk w.r.t. (q, k, v, theta, log_eta, log_retain, W, S) given the
    gradients of its output and of its end state. Mirrors chunk_forward line by line."""
    L = len(W)
    a, d, G, E = it.a, it.d, it.G, it.E
    g = G[..., -1, :]
    n = E[..., -1, :] * it.theta_eff
    cT, fT, mT = it.c[..., -1], it.f[..., -1], it.em[..., -1]
    dW = [cT[..., None, None] * dW_next[j] for j in range(L)]
    dS = [fT[..., None, None] * dW_next[j] + mT[..., None, None] * dS_next[j] for j in range(L)]
    da = [torch.zeros_like(x) for x in a]
    dd = [torch.zeros_like(x) for x in d]
    dcT = sum((dW_next[j] * W[j]).sum((-2, -1)) for j in range(L))
    dfT = sum((dW_next[j] * S[j]).sum((-2, -1)) for j in range(L))
    dmT = sum((dS_next[j] * S[j]).sum((-2, -1)) for j in range(L))
    dg = torch.zeros_like(g)
    dn = torch.zeros_like(n)

    # End state: W' -= a^T (g * d), S' -= a^T (n * d).
    for j in range(L):
        adW, adS = a[j] @ dW_next[j], a[j] @ dS_next[j]
        dd[j] -= g.unsqueeze(-1) * adW + n.unsqueeze(-1) * adS
        da[j] -= (g.unsqueeze(-1) * d[j]) @ dW_next[j].mT + (n.unsqueeze(-1) * d[j]) @ dS_next[j].mT
        dg -= (adW * d[j]).sum(-1)
        dn -= (adS * d[j]).sum(-1)

    # Query path, last layer first.
    dc = torch.zeros_like(it.c)
    df = torch.zeros_like(it.f)
    dG = torch.zeros_like(G)
    dh = dout
    for j in range(L - 1, -1, -1):
        dy = dh * act.grad(it.y[j]) if j < L - 1 else dh
        dc += (dy * it.hW[j]).sum(-1)
        df += (dy * it.hS[j]).sum(-1)
        cdy, fdy = it.c.unsqueeze(-1) * dy, it.f.unsqueeze(-1) * dy
        h = it.h[j]
        dW[j] += h.mT @ cdy
        dS[j] += h.mT @ fdy
        dR = -(dy @ d[j].mT)
        dd[j] -= (it.s[j] * G).mT @ dy
        dsc = dR * G
        dG += dR * it.s[j]
        da[j] += dsc.mT @ h
        dh = cdy @ W[j].mT + fdy @ S[j].mT + dsc @ a[j]
    dq = dh

    # Decays and gates.
    dG[..., -1, :] += dg
    dtheta_eff = (dG * it.P).sum(-2) + dn * E[..., -1, :]
    dP = dG * it.theta_eff.unsqueeze(-2)
    dE = it.A.mT @ dP
    dE[..., -1, :] += dn * it.theta_eff
    dA = dP @ E.mT
    dc[..., -1] += dcT
    df[..., -1] += dfT
    dA += df.unsqueeze(-1) * it.em.unsqueeze(-2)
    dem = (it.A.mT @ df.unsqueeze(-1)).squeeze(-1)
    dem[..., -1] += dmT
    dlog_retain = reverse_cumsum(dc * it.c) + segment_sum_backward(dA * it.A)
    dlog_eta = reverse_cumsum(dem * it.em) + segment_sum_backward(dE * E)

    # Inner-gradient clipping: theta_eff = theta * min(1, max_norm / sqrt(sq)).
    if it.clip is None:
        dtheta = dtheta_eff
    else:
        raw, sq, sqa, sqd = it.clip
        dtheta = dtheta_eff * torch.clamp(raw, max=1.0)
        active = raw < 1.0
        dsq = torch.where(active, dtheta_eff * theta * (-0.5) * raw / (sq + _EPS), torch.zeros_like(sq))
        for j in range(L):
            da[j] += 2.0 * a[j] * (dsq * sqd[j]).unsqueeze(-1)
            dd[j] += 2.0 * d[j] * (dsq * sqa[j]).unsqueeze(-1)

    # Key path: d_l = (d_{l+1} W_{l+1}^T) * act'(z_l), d_{L-1} = 2 (z_{L-1} - v).
    dz = [torch.zeros_like(x) for x in it.z]
    for j in range(L - 1):
        u = d[j + 1] @ W[j + 1].mT
        du = dd[j] * it.dphi[j]
        dd[j + 1] += du @ W[j + 1]
        dW[j + 1] += du.mT @ d[j + 1]
        dz[j] += dd[j] * u * act.grad2(it.z[j])
    dz[L - 1] += 2.0 * dd[L - 1]
    dv = -2.0 * dd[L - 1]
    # Forward chain: z_l = a_l W_l, a_{l+1} = act(z_l).
    for j in range(L - 1, -1, -1):
        if j < L - 1:
            dz[j] += da[j + 1] * it.dphi[j]
        dW[j] += a[j].mT @ dz[j]
        da[j] += dz[j] @ W[j].mT
    return dq, da[0], dv, dtheta, dlog_eta, dlog_retain, dW, dS


def _rows_per_chunk(resets: torch.Tensor) -> dict[int, torch.Tensor]:
    """resets [B, n_chunks] -> {chunk: the rows that restart there} (one host sync)."""
    rows: dict[int, list[int]] = {}
    for b, i in resets.nonzero().tolist():
        rows.setdefault(i, []).append(b)
    return {i: torch.tensor(r, device=resets.device) for i, r in rows.items()}


class _ChunkScan(torch.autograd.Function):
    """Inputs [B, H, T, *] in the state dtype; returns (y, clip factors, *weights, *momentum).

    resets [B, n_chunks] (bool) or None: rows restart from `init` (the last n_layers
    tensors of `state`) before those chunks; the backward sends those chunks' start-state
    gradient to init instead of to the chunk before. report_clip: return each token's clip
    factor [B, H, T] (no gradient; empty when not asked for or without the clip)."""

    @staticmethod
    def forward(
        ctx, q, k, v, theta, log_eta, log_retain, chunk_size, act_name, max_norm, n_layers, resets, report_clip, *state
    ):
        act = get_activation(act_name)
        W, S = list(state[:n_layers]), list(state[n_layers : 2 * n_layers])
        init = state[2 * n_layers :]
        restart_at = {} if resets is None else _rows_per_chunk(resets)
        T = q.shape[2]
        starts = list(range(0, T, chunk_size))
        # Chunk-start states are only kept when a backward can follow: inference holds
        # one state at a time, whatever the length.
        keep = any(ctx.needs_input_grad)
        saved_W, saved_S, outs, factors = [], [], [], []
        for i, start in enumerate(starts):
            sl = slice(start, min(start + chunk_size, T))
            if i in restart_at:  # in place, on the restarting rows only
                rows = restart_at[i]
                if i == 0:  # never write into the caller's state
                    W, S = [w.clone() for w in W], [m.clone() for m in S]
                for w, w0 in zip(W, init, strict=True):
                    w.index_copy_(0, rows, w0.index_select(0, rows))
                for m in S:
                    m.index_fill_(0, rows, 0.0)
            if keep:
                saved_W.append(W)
                saved_S.append(S)
            y, W, S, it = chunk_forward(
                q[:, :, sl],
                k[:, :, sl],
                v[:, :, sl],
                theta[..., sl],
                log_eta[..., sl],
                log_retain[..., sl],
                W,
                S,
                act,
                max_norm,
            )
            outs.append(y)
            if report_clip and it.clip is not None:
                factors.append(torch.clamp(it.clip[0], max=1.0))
        flat_states = [t for W_, S_ in zip(saved_W, saved_S, strict=True) for t in (*W_, *S_)]
        ctx.save_for_backward(q, k, v, theta, log_eta, log_retain, *flat_states)
        ctx.meta = (chunk_size, act_name, max_norm, n_layers, len(starts))
        ctx.restart_at, ctx.n_init = restart_at, len(init)
        clip_factor = torch.cat(factors, dim=2).float() if factors else q.new_empty(0, dtype=torch.float32)
        ctx.mark_non_differentiable(clip_factor)
        return (torch.cat(outs, dim=2), clip_factor, *W, *S)

    @staticmethod
    def backward(ctx, dy, _dclip_factor, *dstate):
        chunk_size, act_name, max_norm, L, n_chunks = ctx.meta
        act = get_activation(act_name)
        q, k, v, theta, log_eta, log_retain, *flat = ctx.saved_tensors
        T = q.shape[2]
        # Every chunk's state has the same shapes: the first chunk's give the zeros.
        dW_next = [g if g is not None else torch.zeros_like(flat[j]) for j, g in enumerate(dstate[:L])]
        dS_next = [g if g is not None else torch.zeros_like(flat[L + j]) for j, g in enumerate(dstate[L:])]
        if dy is None:
            dy = torch.zeros(*q.shape[:3], flat[L - 1].shape[-1], dtype=q.dtype, device=q.device)
        grads = {
            name: torch.zeros_like(t)
            for name, t in (
                ("q", q),
                ("k", k),
                ("v", v),
                ("theta", theta),
                ("log_eta", log_eta),
                ("log_retain", log_retain),
            )
        }
        dinit = [torch.zeros_like(flat[j]) for j in range(ctx.n_init)]
        for i in range(n_chunks - 1, -1, -1):
            W = flat[2 * L * i : 2 * L * i + L]
            S = flat[2 * L * i + L : 2 * L * (i + 1)]
            sl = slice(i * chunk_size, min((i + 1) * chunk_size, T))
            args = (q[:, :, sl], k[:, :, sl], v[:, :, sl], theta[..., sl])
            _, _, _, it = chunk_forward(*args, log_eta[..., sl], log_retain[..., sl], W, S, act, max_norm)
            dq, dk, dv, dth, dlog_eta, dlog_retain, dW_next, dS_next = chunk_backward(
                dy[:, :, sl], dW_next, dS_next, *args, W, S, act, it
            )
            for name, gval in zip(("q", "k", "v"), (dq, dk, dv), strict=True):
                grads[name][:, :, sl] = gval
            for name, gval in zip(("theta", "log_eta", "log_retain"), (dth, dlog_eta, dlog_retain), strict=True):
                grads[name][..., sl] = gval
            if i in ctx.restart_at:  # these rows began from init, not from the chunk before
                rows = ctx.restart_at[i]
                for d, g in zip(dinit, dW_next, strict=True):
                    d.index_add_(0, rows, g.index_select(0, rows))
                for g in (*dW_next, *dS_next):  # fresh from chunk_backward: in place is safe
                    g.index_fill_(0, rows, 0.0)
        return (
            grads["q"],
            grads["k"],
            grads["v"],
            grads["theta"],
            grads["log_eta"],
            grads["log_retain"],
            None,
            None,
            None,
            None,
            None,
            None,
            *dW_next,
            *dS_next,
            *dinit,
        )


def chunk_neural_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    state: MemoryState,
    *,
    chunk_size: int = 64,
    activation: str = "silu",
    max_grad_norm: float | None = None,
    resets: torch.Tensor | None = None,
    initial: MemoryState | None = None,
    stats: dict | None = None,
) -> tuple[torch.Tensor, MemoryState]:
    """Same contract as naive_neural_memory, computed chunk by chunk.

    q, k: [B, T, H, D_k]; v: [B, T, H, D_v]; theta, eta, alpha: [B, T, H].
    A ragged tail (T not a multiple of chunk_size, or T < chunk_size) is one shorter chunk
    and still updates the memory. resets [B, n_chunks] with `initial`: rows restart from
    initial's weights (zero momentum) before those chunks, inside the one chunk loop
    (kernels/dispatch.py documents the contract).
    """
    get_activation(activation)  # validate the name before any work
    if resets is not None:
        check_resets(q, resets, initial, state, chunk_size)
    q, k, v, theta, log_eta, log_retain, state = prepare_inputs(q, k, v, theta, eta, alpha, state, chunk_size)
    L = len(state.weights)
    if q.shape[2] == 0:
        if stats is not None and max_grad_norm:
            stats["clip_factor"] = q.new_ones(q.shape[0], 0, q.shape[1], dtype=torch.float32)
        return q.new_zeros(q.shape[0], 0, q.shape[1], state.weights[-1].shape[-1]), state
    init = () if resets is None or initial is None else tuple(w.to(q.dtype) for w in initial.weights)
    out = _ChunkScan.apply(
        q,
        k,
        v,
        theta,
        log_eta,
        log_retain,
        chunk_size,
        activation,
        max_grad_norm or 0.0,
        L,
        resets,
        stats is not None,
        *state.weights,
        *state.momentum,
        *init,
    )
    y, clip_factor, W, S = out[0], out[1], out[2 : 2 + L], out[2 + L :]
    if stats is not None and max_grad_norm:
        stats["clip_factor"] = clip_factor.transpose(1, 2)  # [B, H, T] -> [B, T, H]
    return y.transpose(1, 2), MemoryState(tuple(W), tuple(S))


def supports(q, state: MemoryState, **config) -> str | None:
    """The chunked path runs every configuration, anywhere."""
    return None
