"""Building blocks of the Gluon cluster scan (cluster_forward.py): where each CTA of a
cluster keeps what (layouts), the activations, the chunk's decays, and the cross-CTA sum.

Layouts. A tensor's `cga_layout` says how its elements are placed across the cluster's
CTAs: one basis vector per bit of the CTA rank; a zero vector replicates, a unit vector
along a dimension shards that dimension. Each CTA owns HC hidden units, so the state is
loaded and stored through layouts that shard W1's columns and W2's rows (`sharded`), and
every per-chunk computation runs on a CTA-local view of the shard: the same shared bytes
reinterpreted under a replicated layout (`replicated`), as if each CTA were alone. A
replicated tensor that is stored to global memory is stored by CTA 0 only, which is what
the output y and the clip factors want (every CTA holds the same values after the cluster
sums); per-CTA data never goes through a replicated store."""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

SILU = gl.constexpr(0)
GELU = gl.constexpr(1)
TANH = gl.constexpr(2)
EPS = gl.constexpr(1e-30)  # chunk.py's _EPS: inside the clip's sqrt


@gluon.constexpr_function
def cta_bases(n_ctas, rank, dim):
    """cga_layout bases for a rank-`rank` tensor: dimension `dim` split over the cluster's
    CTAs in rank order (dim < 0: every CTA holds the whole tensor)."""
    bases = []
    for i in range(n_ctas.bit_length() - 1):
        b = [0] * rank
        if dim >= 0:
            b[dim] = 1 << i
        bases.append(b)
    return bases


@gluon.constexpr_function
def sharded(n_ctas, dim, n_warps):
    """Register layout of a [rows, cols] tensor with dimension `dim` split over the CTAs."""
    return gl.BlockedLayout([1, 8], [4, 8], [n_warps, 1], [1, 0], cga_layout=cta_bases(n_ctas, 2, dim))


@gluon.constexpr_function
def sharded_smem(n_ctas, rank, dim, swizzle=True):
    """fp32 shared layout of a rank-`rank` buffer split over the CTAs along `dim` (dim < 0:
    a CTA-local buffer). Rows are swizzled (XOR of 8-float groups over 4 phases): unswizzled,
    every access in the accumulator layout conflicted 4 ways on the banks. The same swizzle
    for the sharded buffers and their CTA-local views keeps each CTA's offsets identical;
    swizzle=False for the [NCTA, 64] view of the per-token slots, whose CTA-local part is a
    plain vector."""
    order = list(range(rank - 1, -1, -1))
    if rank == 1 or not swizzle:
        return gl.SwizzledSharedLayout(1, 1, 1, order, cga_layout=cta_bases(n_ctas, rank, dim))
    return gl.SwizzledSharedLayout(8, 1, 4, order, cga_layout=cta_bases(n_ctas, rank, dim))


@gluon.constexpr_function
def replicated(n_ctas, rank, n_warps):
    """Register layout of a rank-2 or rank-3 tensor that every CTA holds whole (the
    cluster sums' reads of every slot)."""
    if rank == 3:
        return gl.BlockedLayout([1, 1, 4], [1, 4, 8], [1, n_warps, 1], [2, 1, 0], cga_layout=cta_bases(n_ctas, 3, -1))
    return gl.BlockedLayout([1, 1], [1, 32], [1, n_warps], [1, 0], cga_layout=cta_bases(n_ctas, 2, -1))


@gluon.constexpr_function
def vector(n_ctas, n_warps):
    """Layout of a [64] vector every CTA holds whole, over the warpgroup's threads (a scan
    of a vector needs a layout of its own: Triton cannot scan a slice of a 2-D layout)."""
    return gl.BlockedLayout([1], [32], [n_warps], [0], cga_layout=cta_bases(n_ctas, 1, -1))


@gluon.constexpr_function
def accumulator(n_ctas, n_warps):
    """wgmma's fp32 accumulator layout for a [64, 64] product, the layout of every [64, 64]
    tensor of the chunk: with 8 warps, two warpgroups take 32 columns each (half the
    registers per thread of one warpgroup)."""
    return gl.NVMMADistributedLayout(
        version=[3, 0],
        warps_per_cta=[4, n_warps // 4],
        instr_shape=[16, 256 // n_warps, 16],
        cga_layout=cta_bases(n_ctas, 2, -1),
    )


@gluon.constexpr_function
def operand_smem(n_ctas):
    """Shared layout of a CTA-local [64, 64] bf16 wgmma operand."""
    return gl.NVMMASharedLayout.get_default_for([64, 64], gl.bfloat16, cga_layout=cta_bases(n_ctas, 2, -1))


@gluon.jit
def sigmoid(x):
    return 1.0 / (1.0 + gl.exp(-x))


@gluon.jit
def act_fn(z, ACT: gl.constexpr):
    """pieces.act_fn of the Triton kernels, term for term."""
    if ACT == SILU:
        out = z * sigmoid(z)
    elif ACT == GELU:
        out = 0.5 * z * (1.0 + gl.erf(z * 0.7071067811865476))
    elif ACT == TANH:
        out = 2.0 * sigmoid(2.0 * z) - 1.0
    else:
        out = gl.where(z > 0.0, z, 0.0)
    return out


@gluon.jit
def act_grad(z, ACT: gl.constexpr):
    """pieces.act_grad of the Triton kernels, term for term."""
    if ACT == SILU:
        s = sigmoid(z)
        out = s * (1.0 + z * (1.0 - s))
    elif ACT == GELU:
        out = 0.5 * (1.0 + gl.erf(z * 0.7071067811865476)) + z * gl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACT == TANH:
        t = 2.0 * sigmoid(2.0 * z) - 1.0
        out = 1.0 - t * t
    else:
        out = gl.where(z > 0.0, 1.0, 0.0)
    return out


@gluon.jit
def segment_sum(x, rows, cols):
    """out[t, s] = sum_{s < j <= t} x_j (pieces.segment_sum): x along the rows."""
    terms = gl.where(rows[:, None] > cols[None, :], x[:, None], 0.0)
    return gl.cumsum(terms, 0)


@gluon.jit
def at_row(M, rows, last):
    """Row `last` of M as a vector along M's columns."""
    return gl.sum(gl.where(rows[:, None] == last, M, 0.0), 0)


@gluon.jit
def at_index(x, idx, last):
    return gl.sum(gl.where(idx == last, x, 0.0), 0)


@gluon.jit
def cluster_sum(parts, layout: gl.constexpr, ALL: gl.constexpr):
    """After a cluster barrier: the sum of every CTA's slot (`parts`: the CTA-local slots
    viewed as [NCTA, ...] split over the CTAs; the others' read through distributed shared
    memory). Triton 3.9 reduces within a thread as a tree: (p0 + p1) + (p2 + p3) for 4 CTAs
    (read in the PTX; emulation._cluster_sum sums the same way).

    An exchange is: each CTA stores its partial to its own slot, one cluster barrier, then
    cluster_sum. No second barrier is needed before a slot is written again, because each
    exchange of a chunk has slots of its own and a chunk has at least two exchanges: a CTA
    writes a slot again only after passing a later barrier, which every partner reaches
    only after its reads of that slot."""
    return gl.convert_layout(gl.sum(parts.load(ALL), axis=0), layout)


@gluon.jit
def _now():
    return gl.inline_asm("mov.u64 $0, %globaltimer;", "=l", (), gl.int64)


@gluon.jit
def stall_last_cta(NS: gl.constexpr):
    """The cluster's last CTA waits NS nanoseconds (a stress test of the exchanges: a CTA
    that reads its partners' slots late must still read the chunk's values)."""
    rank = gl.inline_asm("mov.u32 $0, %cluster_ctarank;", "=r", (), gl.int32)
    if rank == gl.num_ctas() - 1:
        start = _now()
        now = start
        while now - start < NS:
            now = _now()
