"""The Gluon cluster forward of the depth-2 memory scan (sm_90): one cluster of NCTA CTAs per
(batch, head), each CTA owning HC = 64 hidden units. Its fp32 shards of W1 [D, HC],
W2 [HC, D], S1 and S2 stay in its shared memory for the whole sequence (64 KiB), so the
state never goes through L2 between chunks; the products run on wgmma with bf16 operands
and fp32 accumulation, and the chunk's couplings are summed over the cluster through
distributed shared memory (cluster_pieces.cluster_sum):

1. the memory's output on the keys and the activations' squared norms: d1 = 2 (e - v);
2. with the clip, layer 1's squared inner-gradient norm, giving theta_eff;
3. the retrieval's layer-2 sums y1 and scores s1, while each CTA updates its shards.

So a chunk has 2 cluster barriers (3 with the clip). The arithmetic is the Triton kernels'
(step.py) with each hidden tile's terms computed by the CTA that owns it, in the same
operand roundings (bf16, the inner error's products in bf16x3) and the cluster sums as a
pairwise tree over the ranks; emulation.py is the same arithmetic in torch, which the CPU tests hold to the
reference. Gluon does not run in Triton's interpreter: on a GPU the first-use self-check
guards this kernel (kernels/self_check.py).

Scope: depth 2, head dims 64, chunk <= 64, bf16 inputs, hidden 64 * NCTA (NCTA 2 or 4), no
restarts; the cluster backend (cluster.py) says why anything else cannot run.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper

from .cluster_pieces import (
    EPS,
    accumulator,
    act_fn,
    act_grad,
    at_index,
    at_row,
    cluster_sum,
    operand_smem,
    replicated,
    segment_sum,
    sharded,
    sharded_smem,
    stall_last_cta,
    vector,
)

BC = gl.constexpr(64)  # tile rows: the padded chunk (wgmma's M)


@gluon.jit
def _mm(a, b, acc_layout: gl.constexpr):
    """a @ b on wgmma: bf16 shared operands, a fresh fp32 accumulator."""
    return hopper.warpgroup_mma(a, b, gl.zeros([a.shape[0], b.shape[1]], gl.float32, acc_layout))


@gluon.jit
def _operand(buffer, x):
    """Round x to bf16 into a wgmma operand buffer and make it visible to the tensor cores."""
    buffer.store(x.to(gl.bfloat16))
    hopper.fence_async_shared()
    return buffer


@gluon.jit
def _shard_offsets(NCTA: gl.constexpr, D: gl.constexpr, HID: gl.constexpr):
    """Offsets of W1 [D, HID] (columns split over the CTAs) and W2 [HID, D] (rows split)
    in a flat state, in the layouts that place each CTA's shard (BY_COL, BY_ROW)."""
    NW: gl.constexpr = gl.num_warps()
    BY_COL: gl.constexpr = sharded(NCTA, 1, NW)
    BY_ROW: gl.constexpr = sharded(NCTA, 0, NW)
    rd = gl.arange(0, D, gl.SliceLayout(1, BY_COL))
    ch = gl.arange(0, HID, gl.SliceLayout(0, BY_COL))
    rh = gl.arange(0, HID, gl.SliceLayout(1, BY_ROW))
    cd = gl.arange(0, D, gl.SliceLayout(0, BY_ROW))
    return rd[:, None] * HID + ch[None, :], rh[:, None] * D + cd[None, :]


@gluon.jit
def _save_state(dst, w1_sh, w2_sh, s1_sh, s2_sh, NCTA: gl.constexpr, D: gl.constexpr, HID: gl.constexpr):
    """Each CTA writes its shards to a flat state (W1 [D, HID], W2 [HID, D], S1, S2).
    Inlined: not inlining it saves 12 B of spills, but the race checker (consan) cannot
    follow shared-memory loads into a called function."""
    NW: gl.constexpr = gl.num_warps()
    BY_COL: gl.constexpr = sharded(NCTA, 1, NW)
    BY_ROW: gl.constexpr = sharded(NCTA, 0, NW)
    w1_offs, w2_offs = _shard_offsets(NCTA, D, HID)
    L1: gl.constexpr = D * HID
    gl.store(dst + w1_offs, w1_sh.load(BY_COL))
    gl.store(dst + L1 + w2_offs, w2_sh.load(BY_ROW))
    gl.store(dst + 2 * L1 + w1_offs, s1_sh.load(BY_COL))
    gl.store(dst + 3 * L1 + w2_offs, s2_sh.load(BY_ROW))


@gluon.jit
def cluster_forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    log_eta_ptr,
    log_retain_ptr,
    state_ptr,
    y_ptr,
    saved_ptr,
    clip_ptr,
    T,
    H,
    max_norm,
    CHUNK: gl.constexpr,
    D: gl.constexpr,
    HC: gl.constexpr,
    ACT: gl.constexpr,
    CLIP: gl.constexpr,
    SAVE: gl.constexpr,
    CKPT: gl.constexpr,
    STALL: gl.constexpr = 0,
):
    """The scan of one (batch, head) per cluster: state_ptr [B*H, N] fp32 (the state to
    advance in place), y [B, T, H, D], saved [B*H, n_ckpt, N] (the state entering every
    CKPT-th chunk, with SAVE), clip factors [B, T, H] (with CLIP); the other arguments as
    the Triton forward's (forward.py). STALL > 0: after every exchange's barrier the last
    CTA waits STALL ns before it reads (the acceptance run's stress test; 0 compiles no
    trace of it)."""
    NCTA: gl.constexpr = gl.num_ctas()
    NW: gl.constexpr = gl.num_warps()
    HID: gl.constexpr = NCTA * HC
    L1: gl.constexpr = D * HID
    NSTATE: gl.constexpr = 4 * L1
    LOCAL: gl.constexpr = sharded_smem(NCTA, 2, -1)
    ACC: gl.constexpr = accumulator(NCTA, NW)
    BLK: gl.constexpr = sharded(NCTA, -1, NW)
    VEC: gl.constexpr = vector(NCTA, NW)
    ROW: gl.constexpr = gl.SliceLayout(1, ACC)  # a vector over the chunk's tokens, as rows
    COL: gl.constexpr = gl.SliceLayout(0, ACC)
    OPS: gl.constexpr = operand_smem(NCTA)

    bh = gl.program_id(0).to(gl.int64)
    st = state_ptr + bh * NSTATE

    # The state shards, resident for the whole sequence (CTA-local views of the sharded buffers).
    w1_offs, w2_offs = _shard_offsets(NCTA, D, HID)
    w1_sh = gl.allocate_shared_memory(gl.float32, [D, HID], sharded_smem(NCTA, 2, 1), gl.load(st + w1_offs))
    w2_sh = gl.allocate_shared_memory(gl.float32, [HID, D], sharded_smem(NCTA, 2, 0), gl.load(st + L1 + w2_offs))
    s1_sh = gl.allocate_shared_memory(gl.float32, [D, HID], sharded_smem(NCTA, 2, 1), gl.load(st + 2 * L1 + w1_offs))
    s2_sh = gl.allocate_shared_memory(gl.float32, [HID, D], sharded_smem(NCTA, 2, 0), gl.load(st + 3 * L1 + w2_offs))
    w1_loc = w1_sh.reinterpret(gl.float32, [D, HC], LOCAL)
    w2_loc = w2_sh.reinterpret(gl.float32, [HC, D], LOCAL)
    s1_loc = s1_sh.reinterpret(gl.float32, [D, HC], LOCAL)
    s2_loc = s2_sh.reinterpret(gl.float32, [HC, D], LOCAL)

    # bf16 operand buffers (wgmma reads its operands from shared memory), reused across phases.
    q_s = gl.allocate_shared_memory(gl.bfloat16, [BC, D], OPS)
    k_s = gl.allocate_shared_memory(gl.bfloat16, [BC, D], OPS)
    w1_hi = gl.allocate_shared_memory(gl.bfloat16, [D, HC], OPS)
    w1_lo = gl.allocate_shared_memory(gl.bfloat16, [D, HC], OPS)
    w2_hi = gl.allocate_shared_memory(gl.bfloat16, [HC, D], OPS)
    w2_lo = gl.allocate_shared_memory(gl.bfloat16, [HC, D], OPS)
    s1_b = gl.allocate_shared_memory(gl.bfloat16, [D, HC], OPS)
    s2_b = gl.allocate_shared_memory(gl.bfloat16, [HC, D], OPS)
    a_s = gl.allocate_shared_memory(gl.bfloat16, [BC, HC], OPS)  # act(k W1): the bf16x3 high part, then act(z)
    x_s = gl.allocate_shared_memory(gl.bfloat16, [BC, HC], OPS)  # scratch operand
    d1_s = gl.allocate_shared_memory(gl.bfloat16, [BC, D], OPS)
    m_s = w1_lo  # once the inner error is summed: decays, scores, operand scratch
    n_s = w2_lo

    # Exchange slots: each CTA's partial, viewed over the cluster as [NCTA, ...].
    ALL3: gl.constexpr = replicated(NCTA, 3, NW)
    ALL2: gl.constexpr = replicated(NCTA, 2, NW)
    e_slot = gl.allocate_shared_memory(gl.float32, [BC, D], LOCAL)
    y_slot = gl.allocate_shared_memory(gl.float32, [BC, D], LOCAL)
    s_slot = gl.allocate_shared_memory(gl.float32, [BC, BC], LOCAL)
    v_slot = gl.allocate_shared_memory(gl.float32, [BC], sharded_smem(NCTA, 1, -1))
    c_slot = gl.allocate_shared_memory(gl.float32, [BC], sharded_smem(NCTA, 1, -1))
    e_parts = e_slot.reinterpret(gl.float32, [NCTA, BC, D], sharded_smem(NCTA, 3, 0))
    y_parts = y_slot.reinterpret(gl.float32, [NCTA, BC, D], sharded_smem(NCTA, 3, 0))
    s_parts = s_slot.reinterpret(gl.float32, [NCTA, BC, BC], sharded_smem(NCTA, 3, 0))
    v_parts = v_slot.reinterpret(gl.float32, [NCTA, BC], sharded_smem(NCTA, 2, 0, False))
    c_parts = c_slot.reinterpret(gl.float32, [NCTA, BC], sharded_smem(NCTA, 2, 0, False))

    rows = gl.arange(0, BC, ROW)
    cols = gl.arange(0, D, COL)
    brows = gl.arange(0, BC, gl.SliceLayout(1, BLK))
    bcols = gl.arange(0, BC, gl.SliceLayout(0, BLK))
    n_chunks = gl.cdiv(T, CHUNK)
    n_ckpt = gl.cdiv(n_chunks, CKPT)
    token0 = (bh // H) * T * H + bh % H  # row of token 0 in the [B*T*H, D] view
    for ci in range(n_chunks):
        if SAVE and ci % CKPT == 0:
            _save_state(saved_ptr + (bh * n_ckpt + ci // CKPT) * NSTATE, w1_sh, w2_sh, s1_sh, s2_sh, NCTA, D, HID)
        t0 = ci * CHUNK
        last = gl.minimum(CHUNK, T - t0) - 1
        valid = (rows < CHUNK) & (t0 + rows < T)
        bvalid = (brows < CHUNK) & (t0 + brows < T)
        tok = token0 + (t0 + rows.to(gl.int64)) * H  # [BC] rows of this chunk's tokens
        btok = token0 + (t0 + brows.to(gl.int64)) * H
        offs = tok[:, None] * D + cols[None, :]
        mask = valid[:, None] & (cols[None, :] < D)
        bmask = bvalid[:, None] & (bcols[None, :] < D)
        boffs = btok[:, None] * D + bcols[None, :]
        q = gl.load(q_ptr + boffs, mask=bmask, other=0.0)
        k = gl.load(k_ptr + boffs, mask=bmask, other=0.0)
        v = gl.load(v_ptr + offs, mask=mask, other=0.0).to(gl.float32)
        theta = gl.load(theta_ptr + tok, mask=valid, other=0.0)
        log_eta = gl.load(log_eta_ptr + btok, mask=bvalid, other=0.0)
        log_retain = gl.load(log_retain_ptr + btok, mask=bvalid, other=0.0)
        kf = k.to(gl.float32)
        sqa0 = gl.convert_layout(gl.sum(kf * kf, 1), ROW)
        q_s.store(q)
        k_s.store(k)
        W1 = w1_loc.load(ACC)
        W2 = w2_loc.load(ACC)
        W1h = W1.to(gl.bfloat16)
        W2h = W2.to(gl.bfloat16)
        w1_hi.store(W1h)
        w1_lo.store((W1 - W1h.to(gl.float32)).to(gl.bfloat16))
        w2_hi.store(W2h)
        w2_lo.store((W2 - W2h.to(gl.float32)).to(gl.bfloat16))
        s1_b.store(s1_loc.load(ACC).to(gl.bfloat16))
        s2_b.store(s2_loc.load(ACC).to(gl.bfloat16))
        hopper.fence_async_shared()

        # 1. The inner error: this CTA's share of M(k) = act(k W1) W2 in bf16x3 (mm_fine),
        # and of the activations' squared norms (the clip's), summed over the cluster.
        a_fine = act_fn(_mm(k_s, w1_lo, ACC) + _mm(k_s, w1_hi, ACC), ACT)
        a_hi = a_fine.to(gl.bfloat16)
        _operand(a_s, a_fine)
        _operand(x_s, a_fine - a_hi.to(gl.float32))
        e_part = _mm(a_s, w2_lo, ACC)
        e_part += _mm(x_s, w2_hi, ACC)
        e_part += _mm(a_s, w2_hi, ACC)
        e_slot.store(e_part)
        v_slot.store(gl.sum(a_fine * a_fine, 1))
        gl.barrier(cluster=True)
        if STALL > 0:
            stall_last_cta(STALL)
        d1 = 2.0 * (cluster_sum(e_parts, ACC, ALL3) - v)
        sqa1 = cluster_sum(v_parts, ROW, ALL2)
        sqd1 = gl.sum(d1 * d1, 1)
        # layer 1's pre-activation at the operand precision, again: cheaper than holding it
        # in registers across the exchange
        z = _mm(k_s, w1_hi, ACC)
        _operand(a_s, act_fn(z, ACT))
        _operand(d1_s, d1)
        d0 = _mm(d1_s, w2_hi.permute([1, 0]), ACC) * act_grad(z, ACT)
        if CLIP:
            c_slot.store(gl.sum(d0 * d0, 1))
            gl.barrier(cluster=True)
            if STALL > 0:
                stall_last_cta(STALL)
            raw = max_norm / gl.sqrt(sqa0 * cluster_sum(c_parts, ROW, ALL2) + sqa1 * sqd1 + EPS)
            factor = gl.minimum(raw, 1.0)
            gl.store(clip_ptr + tok, factor, mask=valid)  # replicated: CTA 0 stores
            theta_eff = theta * factor
        else:
            theta_eff = theta

        # 2. The chunk's decays (every CTA the same: cheaper than exchanging them).
        bidx = gl.arange(0, BC, gl.SliceLayout(0, BLK))
        col_valid = (bidx < CHUNK) & (t0 + bidx < T)
        causal = (brows[:, None] >= bidx[None, :]) & bvalid[:, None] & col_valid[None, :]
        A = gl.exp(gl.where(causal, segment_sum(log_retain, brows, bidx), float("-inf")))
        E = gl.exp(gl.where(causal, segment_sum(log_eta, brows, bidx), float("-inf")))
        c_b = gl.convert_layout(gl.exp(gl.cumsum(gl.convert_layout(log_retain, VEC), 0)), gl.SliceLayout(1, BLK))
        em_b = gl.convert_layout(gl.exp(gl.cumsum(gl.convert_layout(log_eta, VEC), 0)), gl.SliceLayout(1, BLK))
        f_b = gl.sum(A * gl.convert_layout(em_b, gl.SliceLayout(0, BLK))[None, :], 1)
        n = gl.convert_layout(at_row(E, brows, last), ROW) * theta_eff
        G = _mm(_operand(m_s, A), _operand(n_s, E), ACC) * gl.convert_layout(theta_eff, COL)[None, :]
        g = gl.convert_layout(at_row(G, rows, last), ROW)
        c = gl.convert_layout(c_b, ROW)
        f = gl.convert_layout(f_b, ROW)
        cT = at_index(c, rows, last)
        fT = at_index(f, rows, last)
        mT = at_index(gl.convert_layout(em_b, ROW), rows, last)

        # 3. This CTA's shards advance (the retrieval below reads the bf16 copies of the
        # chunk-start state, so the fp32 inner errors die here).
        kT = k_s.permute([1, 0])
        aT = a_s.permute([1, 0])
        S1 = s1_loc.load(ACC)
        W1n = cT * w1_loc.load(ACC) + fT * S1 - _mm(kT, _operand(x_s, g[:, None] * d0), ACC)
        S1n = mT * S1 - _mm(kT, _operand(n_s, n[:, None] * d0), ACC)
        w1_loc.store(W1n)
        s1_loc.store(S1n)
        S2 = s2_loc.load(ACC)
        W2n = cT * w2_loc.load(ACC) + fT * S2 - _mm(aT, _operand(x_s, g[:, None] * d1), ACC)
        S2n = mT * S2 - _mm(aT, _operand(n_s, n[:, None] * d1), ACC)
        w2_loc.store(W2n)
        s2_loc.store(S2n)

        # 4. Retrieval: layer 1 from this CTA's hidden units, its layer-2 partial sums.
        _operand(n_s, d0)
        _operand(m_s, _mm(q_s, k_s.permute([1, 0]), ACC) * G)
        y0 = c[:, None] * _mm(q_s, w1_hi, ACC) + f[:, None] * _mm(q_s, s1_b, ACC) - _mm(m_s, n_s, ACC)
        _operand(x_s, act_fn(y0, ACT))
        y_slot.store(c[:, None] * _mm(x_s, w2_hi, ACC) + f[:, None] * _mm(x_s, s2_b, ACC))
        s_slot.store(_mm(x_s, aT, ACC))

        # 5. The output: the cluster's layer-2 sums, less the scores' inner-error term.
        gl.barrier(cluster=True)
        if STALL > 0:
            stall_last_cta(STALL)
        _operand(m_s, cluster_sum(s_parts, ACC, ALL3) * G)
        y = cluster_sum(y_parts, ACC, ALL3) - _mm(m_s, d1_s, ACC)
        gl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)  # replicated: CTA 0 stores
    gl.barrier(cluster=True)
    _save_state(st, w1_sh, w2_sh, s1_sh, s2_sh, NCTA, D, HID)
