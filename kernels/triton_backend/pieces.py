"""Triton building blocks for one chunk of the memory scan (used by forward.py and backward.py).

The math is chunk.py's, line for line, with these Triton-specific choices:

- Every tile is padded to a power of two >= 16 (tl.dot's minimum on GPUs) and masked on
  load with zeros. Zero padding is exact: padded key/value/query entries are 0, act(0) = 0
  for every supported activation, padded tokens get theta = 0 and log-gates = 0, and the
  decay matrices are masked to the valid causal triangle, so padding never reaches a
  stored value.
- Matmul operands are cast to the inputs' dtype (bf16/fp16: tensor cores at their full
  rate) with fp32 accumulation; the state, decays and every sum stay fp32, and so does
  every elementwise step. No TF32 anywhere: fp32 inputs multiply in IEEE fp32 (the exact
  path); tf32x3 would be more precise than TF32, but its lowering alone fills the register
  file at a 64-token chunk.
- Decays are exp of in-chunk segment sums of log-gates, masked to -inf before the exp,
  and their gradients are the segment sum's adjoint as two scans: never differences of
  cumulative sums, which cancel catastrophically (a test caught a 3.6e-4 error in the
  eta gradient from exactly that).
- "The last token of the chunk" is a runtime index (ragged tails), so its row of a matrix
  is taken with a masked reduction, not an index.

Module-level constants are `tl.constexpr(...)` objects: a plain annotated global
(`X: tl.constexpr = 0`) runs in the interpreter but is rejected by a GPU compile.
No block pointers (removed in triton 3.9): plain base + offsets with masks everywhere.
"""

import triton
import triton.language as tl

from .config import interpreting

# Activation codes shared with the Python side (config.ACTIVATION_CODES).
SILU = tl.constexpr(0)
GELU = tl.constexpr(1)
TANH = tl.constexpr(2)
RELU = tl.constexpr(3)

# Matmul operand types (config.OPERAND_CODES): bf16/fp16 inputs on the tensor cores in
# their own type, fp32 inputs in IEEE fp32 (the exact path, on the FMA units).
OP_FP32 = tl.constexpr(0)
OP_BF16 = tl.constexpr(1)
OP_FP16 = tl.constexpr(2)

EPS = tl.constexpr(1e-30)  # chunk.py's _EPS: inside the clip's sqrt

# Under the interpreter, fp32 -> bf16 rounds toward zero and bf16 products are computed on
# the raw bits (DESIGN.md). There, bf16 operands are rounded to nearest-even by hand and
# multiplied in fp32: what a tensor core computes (a product of two bf16 values is exact in
# fp32, the sum is fp32), so bf16 numerics are tested on CPU. A GPU compile drops the branch.
INTERPRETED = tl.constexpr(interpreting())


@triton.jit
def act_fn(z, ACT: tl.constexpr):
    if ACT == SILU:
        out = z * tl.sigmoid(z)
    elif ACT == GELU:
        out = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == TANH:
        out = 2.0 * tl.sigmoid(2.0 * z) - 1.0
    else:
        out = tl.maximum(z, 0.0)
    return out


@triton.jit
def act_grad(z, ACT: tl.constexpr):
    if ACT == SILU:
        s = tl.sigmoid(z)
        out = s * (1.0 + z * (1.0 - s))
    elif ACT == GELU:
        out = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACT == TANH:
        t = 2.0 * tl.sigmoid(2.0 * z) - 1.0
        out = 1.0 - t * t
    else:
        out = tl.where(z > 0, 1.0, 0.0)
    return out


@triton.jit
def act_grad2(z, ACT: tl.constexpr):
    if ACT == SILU:
        s = tl.sigmoid(z)
        out = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    elif ACT == GELU:
        out = tl.exp(-0.5 * z * z) * 0.3989422804014327 * (2.0 - z * z)
    elif ACT == TANH:
        t = 2.0 * tl.sigmoid(2.0 * z) - 1.0
        out = -2.0 * t * (1.0 - t * t)
    else:
        out = z * 0.0
    return out


@triton.jit
def round_bf16(x):
    """x rounded to the nearest bf16 (ties to even), kept in fp32: the interpreter's stand-in
    for a bf16 cast (finite x; the bits are rounded as integers)."""
    bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def mm(a, b, OP: tl.constexpr):
    """a @ b with fp32 accumulation; operands in the inputs' precision (see module doc)."""
    if OP == OP_BF16 and INTERPRETED:
        out = tl.dot(round_bf16(a), round_bf16(b), input_precision="ieee")
    elif OP == OP_BF16:
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif OP == OP_FP16:
        out = tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        out = tl.dot(a, b, input_precision="ieee")
    return out


@triton.jit
def operand(x, OP: tl.constexpr):
    """x in the matmul operand type. For bf16/fp16 inputs loaded as fp32 this is exact,
    and it halves the registers a chunk's q and k hold."""
    if OP == OP_BF16 and INTERPRETED:
        out = round_bf16(x)
    elif OP == OP_BF16:
        out = x.to(tl.bfloat16)
    elif OP == OP_FP16:
        out = x.to(tl.float16)
    else:
        out = x
    return out


@triton.jit
def mm_fine(a, b, OP: tl.constexpr, A_EXACT: tl.constexpr):
    """a @ b to about twice the operand type's precision, for a product that feeds a
    difference which cancels (the inner error M(k) - v: once the memory fits, M(k) is close
    to v, and a bf16 operand's 2^-9 rounding of the state became a 2-6% error in the
    gradients of k, v and theta; measured on an H200 and reproduced here). Each operand is
    split into a high and a low part in bf16, and the three products that matter are summed
    in fp32, small ones first (bf16x3); A_EXACT: a already is exact in bf16 (loaded keys), so
    two products. fp16 inputs keep the one product: 8x finer than bf16, they were within
    rounding on the H200, and fp16 low parts would be subnormal for small weights. fp32
    inputs: the IEEE product."""
    if OP != OP_BF16:
        out = mm(a, b, OP)
    else:
        b_hi = operand(b, OP)
        b_lo = operand(b - b_hi.to(tl.float32), OP)
        a_hi = operand(a, OP)
        out = mm(a_hi, b_lo, OP)
        if not A_EXACT:
            out += mm(operand(a - a_hi.to(tl.float32), OP), b_hi, OP)
        out += mm(a_hi, b_hi, OP)
    return out


@triton.jit
def mm_tn(a, b, OP: tl.constexpr):
    """a^T @ b."""
    return mm(tl.trans(a), b, OP)


@triton.jit
def mm_nt(a, b, OP: tl.constexpr):
    """a @ b^T."""
    return mm(a, tl.trans(b), OP)


@triton.jit
def at_index(x, idx, i):
    """x[i] of a 1-D tile (i a runtime index) as a scalar."""
    return tl.sum(tl.where(idx == i, x, 0.0), 0)


@triton.jit
def row_at(X, idx, i):
    """Row i of a 2-D tile as a 1-D tile."""
    return tl.sum(tl.where(idx[:, None] == i, X, 0.0), 0)


@triton.jit
def rowsum(x):
    return tl.sum(x, 1)


@triton.jit
def frobenius(a, b):
    """sum_ij a_ij b_ij as a scalar."""
    return tl.sum(tl.sum(a * b, 1), 0)


@triton.jit
def rev_cumsum(x):
    """sum_{j >= t} x_j: the adjoint of cumsum. A scan, not total - prefix: the
    subtraction would cancel catastrophically when the total dwarfs the suffix."""
    return tl.cumsum(x, 0, reverse=True)


@triton.jit
def segment_sum_adjoint(Y, idx):
    """dx_j = sum_{t >= j} sum_{s < j} Y[t, s]: the gradient of the cumulative log-gates
    x through exp(cl_t - cl_s) given Y = dDecay * Decay (chunk_math.segment_sum_backward).
    Written as two scans and a diagonal, never as rowsum - colsum, for the same reason."""
    exclusive = tl.cumsum(Y, 1) - Y  # [t, j] = sum_{s < j} Y[t, s]
    from_below = tl.cumsum(exclusive, 0, reverse=True)  # summed over t' >= t
    return tl.sum(tl.where(idx[:, None] == idx[None, :], from_below, 0.0), 1)


@triton.jit
def load_tokens(ptr, rows_valid, n_cols, BR: tl.constexpr, BCOL: tl.constexpr, row_stride):
    """[BR, BCOL] fp32 tile of a token-major tensor (rows = tokens), zero outside."""
    r = tl.arange(0, BR)
    c = tl.arange(0, BCOL)
    offs = r[:, None] * row_stride + c[None, :]  # int32 within a chunk; ptr carries the int64 base
    mask = rows_valid[:, None] & (c[None, :] < n_cols)
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_tokens(ptr, x, rows_valid, n_cols, BR: tl.constexpr, BCOL: tl.constexpr, row_stride):
    r = tl.arange(0, BR)
    c = tl.arange(0, BCOL)
    offs = r[:, None] * row_stride + c[None, :]
    mask = rows_valid[:, None] & (c[None, :] < n_cols)
    if INTERPRETED and ptr.dtype.element_ty == tl.bfloat16:
        x = round_bf16(x)  # the interpreter's own cast would round toward zero
    tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_gate(ptr, rows_valid, BR: tl.constexpr, row_stride):
    r = tl.arange(0, BR)
    return tl.load(ptr + r * row_stride, mask=rows_valid, other=0.0).to(tl.float32)


@triton.jit
def store_gate(ptr, x, rows_valid, BR: tl.constexpr, row_stride):
    r = tl.arange(0, BR)
    tl.store(ptr + r * row_stride, x, mask=rows_valid)


@triton.jit
def stored_by_first(valid, s):
    """The rows that program s of a group stores when every program of the group holds the
    same values: program 0 the valid ones, its partners none (a [BC] mask: a scalar
    condition in a mask is not supported everywhere). The one-program kernels pass s = 0."""
    return valid & ((valid.to(tl.int32) * 0 + s) == 0)


@triton.jit
def load_tile(ptr, n_rows, n_cols, row0, col0, BR: tl.constexpr, BCOL: tl.constexpr):
    """Rows [row0, row0 + BR) x cols [col0, col0 + BCOL) of a row-major fp32
    [n_rows, n_cols] matrix, zero outside it."""
    r = row0 + tl.arange(0, BR)
    c = col0 + tl.arange(0, BCOL)
    mask = (r[:, None] < n_rows) & (c[None, :] < n_cols)
    return tl.load(ptr + r[:, None] * n_cols + c[None, :], mask=mask, other=0.0)


@triton.jit
def store_tile(ptr, x, n_rows, n_cols, row0, col0, BR: tl.constexpr, BCOL: tl.constexpr):
    r = row0 + tl.arange(0, BR)
    c = col0 + tl.arange(0, BCOL)
    mask = (r[:, None] < n_rows) & (c[None, :] < n_cols)
    tl.store(ptr + r[:, None] * n_cols + c[None, :], x, mask=mask)


@triton.jit
def copy_flat(src, dst, n, BLOCK: tl.constexpr):
    """dst[:n] = src[:n] (one flat state), BLOCK floats at a time."""
    offs = tl.arange(0, BLOCK)
    for start in range(0, n, BLOCK):
        m = start + offs < n
        tl.store(dst + start + offs, tl.load(src + start + offs, mask=m), mask=m)


@triton.jit
def zero_flat(dst, n, BLOCK: tl.constexpr):
    """dst[:n] = 0, BLOCK floats at a time."""
    offs = tl.arange(0, BLOCK)
    for start in range(0, n, BLOCK):
        tl.store(dst + start + offs, tl.zeros([BLOCK], dtype=tl.float32), mask=start + offs < n)


@triton.jit(noinline=True)
def restart_state(st, init_ptr, resets_ptr, ci, T, H, CHUNK: tl.constexpr, NSTATE: tl.constexpr):
    """Packed documents: if this program's row restarts at chunk ci (resets_ptr [B,
    n_chunks], int8), the state at st becomes the row's initial weights (init_ptr [B*H,
    NSTATE / 2], this program's row) with zero momentum. Not inlined, and it derives its
    offsets from the program id, so the chunk loop holds nothing more across it."""
    pid = tl.program_id(0)
    n_chunks = tl.cdiv(T, CHUNK)
    if tl.load(resets_ptr + (pid // H).to(tl.int64) * n_chunks + ci) != 0:
        NW: tl.constexpr = NSTATE // 2  # weights first, then momentum (pack_state)
        copy_flat(init_ptr + pid.to(tl.int64) * NW, st, NW, 1024)
        zero_flat(st + NW, NW, 1024)
    tl.debug_barrier()  # the chunk that follows reads what other threads wrote


@triton.jit
def segment_sum(x, idx):
    """out[t, s] = sum_{s < j <= t} x_j (lower triangle; the rest is masked by the caller).
    Summed per entry, not as cumsum_t - cumsum_s: a chunk of near-total forgetting makes
    the cumulative sums large and their difference imprecise."""
    terms = tl.where(idx[:, None] > idx[None, :], x[:, None], 0.0)  # [j, s] = x_j for j > s
    return tl.cumsum(terms, 0)


@triton.jit
def decays(log_retain, log_eta, theta_eff, valid, BC: tl.constexpr, OP: tl.constexpr):
    """A[t,s] = prod_{s<j<=t} (1-alpha_j), E[t,s] = prod_{s<j<=t} eta_j (s <= t, valid),
    P = A E, G = P diag(theta), c = cumulative retain, em = cumulative eta, f = A em.
    A and E (entries in (0, 1]) are matmul operands in the inputs' precision like every
    other operand; P accumulates in fp32."""
    idx = tl.arange(0, BC)
    causal = (idx[:, None] >= idx[None, :]) & valid[:, None] & valid[None, :]
    A = tl.exp(tl.where(causal, segment_sum(log_retain, idx), float("-inf")))
    E = tl.exp(tl.where(causal, segment_sum(log_eta, idx), float("-inf")))
    P = mm(A, E, OP)
    G = P * theta_eff[None, :]
    c = tl.exp(tl.cumsum(log_retain, 0))
    em = tl.exp(tl.cumsum(log_eta, 0))
    f = tl.sum(A * em[None, :], 1)
    return A, E, P, G, c, em, f


@triton.jit
def clip_scale(sq, max_norm):
    """raw = max_norm / |inner gradient|; theta is scaled by min(1, raw)."""
    return max_norm / tl.sqrt(sq + EPS)


@triton.jit
def chunk_rows(ci, T, CHUNK: tl.constexpr, idx):
    """First token of chunk ci, which of its BC tile rows are real tokens, and the index of
    its last token (short for a ragged tail)."""
    t0 = tl.cast(ci, tl.int64) * CHUNK
    valid = (idx < CHUNK) & (t0 + idx < T)
    last = tl.minimum(CHUNK, T - t0) - 1
    return t0, valid, last


@triton.jit
def load_chunk(
    q_ptr,
    k_ptr,
    v_ptr,
    theta_ptr,
    log_eta_ptr,
    log_retain_ptr,
    row0,
    valid,
    H,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    OP: tl.constexpr,
):
    """One chunk's q, k (in the operand type), v (fp32) and gates; token i of the chunk is
    row row0 + i * H of the [B*T*H, D] view of the contiguous [B, T, H, D] tensors."""
    q = operand(load_tokens(q_ptr + row0 * DK, valid, DK, BC, BK, H * DK), OP)
    k = operand(load_tokens(k_ptr + row0 * DK, valid, DK, BC, BK, H * DK), OP)
    v = load_tokens(v_ptr + row0 * DV, valid, DV, BC, BV, H * DV)
    theta = load_gate(theta_ptr + row0, valid, BC, H)
    log_eta = load_gate(log_eta_ptr + row0, valid, BC, H)
    log_retain = load_gate(log_retain_ptr + row0, valid, BC, H)
    return q, k, v, theta, log_eta, log_retain
