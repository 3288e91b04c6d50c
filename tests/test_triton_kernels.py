"""The Triton scan kernels against the chunked PyTorch path and the per-token reference.

On a machine without CUDA the kernels run in Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 there, and the kernels round bf16 operands to nearest-even by hand, as a
tensor core reads them: pieces.round_bf16); on a GPU the same tests compile them.
Every output buffer the kernels return is filled with NaN first, so an element a kernel
forgets to write fails the comparison. Shapes are ragged on purpose: T not a multiple of
the chunk, chunk sizes and head dims that are not powers of two.
"""

import dataclasses
import functools

import pytest
import torch
import triton
import triton.language as tl

from devtools import scan_harness as harness
from devtools.models import flat, max_rel_err, memory_inputs
from titans_plugin.config import TitansConfig
from titans_plugin.kernels import (
    ACTIVATIONS,
    MemoryState,
    chunk_neural_memory,
    naive_neural_memory,
    neural_memory_scan,
    resolve_backend,
    triton_neural_memory,
)
from titans_plugin.kernels.triton_backend import buffers, config, ops
from titans_plugin.kernels.triton_backend.pieces import round_bf16
from titans_plugin.memory import MemoryConfig, NeuralMemory

pytestmark = pytest.mark.slow  # the Triton interpreter (minutes)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(buffers, "empty", nan_filled)


def _compare(inputs, state, tol=2e-5, grad_tol=5e-5, dtype=torch.float32, reference="chunk", **kw):
    """Triton (fp32 state, `dtype` inputs) against an fp64 reference (devtools/scan_harness.py):
    outputs, every end-state tensor, the gradients of every input and of every initial-state
    tensor (and of the restart weights)."""
    every = kw.pop("checkpoint_every", None)
    scan = functools.partial(triton_neural_memory, checkpoint_every=every)
    ref = chunk_neural_memory if reference == "chunk" else naive_neural_memory
    return harness.compare(scan, ref, inputs, state, tol=tol, grad_tol=grad_tol, dtype=dtype, device=DEVICE, **kw)


# (depth 2, chunk 16, T 37) is left out: test_several_state_tiles_and_checkpoint_groups runs
# depth 2 at chunk 16 over more chunks, and (24, 50) covers a ragged multi-chunk run.
@pytest.mark.parametrize(("depth", "chunk", "T"), [(1, 16, 37), (1, 24, 50), (2, 24, 50), (1, 16, 5), (2, 16, 5)])
@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_matches_chunked_path_on_ragged_shapes(depth, chunk, T, clip):
    """chunk 24 pads to a 32-token tile, T=5 is a single short chunk, D=20 and hidden=36
    pad to 32 and 64; clip=0.5 makes the inner-gradient clip active on most tokens."""
    inputs, state = memory_inputs(B=2, T=T, H=2, D=20, depth=depth, hidden=36)
    _compare(inputs, state, chunk_size=chunk, activation="silu", max_grad_norm=clip)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_several_state_tiles_and_checkpoint_groups(depth, clip, monkeypatch):
    """The state walked in 16-wide tiles (hidden 36 and D_v 20: 3 and 2 tiles, the last
    ragged) and a checkpoint every 3 chunks (5 chunks: groups of 3 and 2), so the
    backward rebuilds chunk-start states from a checkpoint."""
    monkeypatch.setattr(config, "HIDDEN_TILE", 16)
    inputs, state = memory_inputs(B=2, T=70, H=2, D=20, depth=depth, hidden=36)
    _compare(inputs, state, chunk_size=16, activation="silu", max_grad_norm=clip, checkpoint_every=3)


def test_phased_forward(monkeypatch):
    """The depth-2 forward as four phases (layer 1, layer 2, update, output), which sm_80 runs:
    several ragged state tiles, a 24-token chunk padded to 32, a ragged last chunk and
    checkpoint groups, with the clip active, against the fp64 chunked path (outputs, end state,
    every gradient). Restarts happen in the chunk loop before the phases, as before the walk."""
    monkeypatch.setattr(config, "HIDDEN_TILE", 16)
    monkeypatch.setattr(config, "PHASED_FORWARD", True)
    inputs, state = memory_inputs(B=2, T=70, H=2, D=20, depth=2, hidden=36)
    _compare(inputs, state, chunk_size=24, activation="silu", max_grad_norm=0.5, checkpoint_every=2)


def test_phased_forward_is_chosen_where_the_walk_spills():
    """Phases where the one walk spills (docs/kernels.md): sm_80, and sm_90 above 64-wide tiles."""
    assert config.phased_forward(2, 80, 64, 64)
    assert config.phased_forward(2, 86, 32, 64)
    assert not config.phased_forward(2, 90, 64, 64)
    assert not config.phased_forward(2, None, 64, 128)
    assert config.phased_forward(2, 90, 64, 128)
    assert config.phased_forward(2, 90, 128, 64)
    assert not config.phased_forward(1, 80, 64, 64)  # the depth-1 forward does not spill on sm_80


@pytest.mark.parametrize("depth", [1, 2])
def test_restarts_inside_the_kernels(depth, monkeypatch):
    """Packed documents in one launch: rows restart from their initial weights (zero
    momentum) before flagged chunks. Restarts at the first chunk, at a checkpoint group's
    start, inside a group (the backward's replay restarts too) and at the last, ragged
    chunk; two or three state tiles. Against the chunked path in fp64: outputs, end state and
    the gradients of every input, the start state and the initial weights."""
    monkeypatch.setattr(config, "HIDDEN_TILE", 16)
    inputs, state = memory_inputs(B=2, T=70, H=2, D=20, depth=depth, hidden=36)
    g = torch.Generator().manual_seed(5)
    init = tuple(torch.randn(w.shape, generator=g, dtype=w.dtype) / w.shape[-2] ** 0.5 for w in state.weights)
    # 5 chunks of 16 (the last 6 tokens), a checkpoint every 3: groups 0-2 and 3-4
    resets = torch.tensor([[False, True, False, True, False], [True, False, True, False, True]])
    errors = _compare(
        inputs,
        state,
        chunk_size=16,
        activation="silu",
        max_grad_norm=0.5,
        checkpoint_every=3,
        resets=resets,
        initial=MemoryState(init, ()),
    )
    assert f"gradient of restart W{depth}" in errors  # the initial weights are compared too


def test_checkpoint_interval_keeps_saved_state_within_budget():
    """Default config (head dim 64, hidden 256, chunk 64): 256 KiB of state per chunk, so a
    checkpoint every 4 chunks is 1 KiB per token and head; depth 1 saves every chunk."""
    n = config.state_size(64, 256, 64)
    assert config.checkpoint_interval(n, 64) == 4
    assert n * 4 / (4 * 64) == config.SAVED_BYTES_PER_TOKEN
    assert config.checkpoint_interval(config.state_size(64, 0, 64), 64) == 1
    inputs, state = memory_inputs(B=1, T=4, H=1, D=4, depth=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1"):
        triton_neural_memory(*[t.to(DEVICE) for t in inputs], state, checkpoint_every=0)


@pytest.mark.parametrize("depth", [1, 2])
def test_matches_per_token_reference(depth):
    """Directly against the definition (token loop, autograd inner gradients)."""
    inputs, state = memory_inputs(B=1, T=21, H=2, D=20, depth=depth, hidden=24)
    _compare(inputs, state, reference="naive", chunk_size=8, activation="silu", max_grad_norm=1.0)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation(activation):
    inputs, state = memory_inputs(B=1, T=19, H=2, D=16, depth=2, hidden=24)
    _compare(inputs, state, chunk_size=16, activation=activation, max_grad_norm=1.0)


def test_chunk_size_one_is_the_per_token_recurrence():
    inputs, state = memory_inputs(B=1, T=7, H=1, D=16, depth=2, hidden=16)
    _compare(inputs, state, reference="naive", chunk_size=1, activation="silu", max_grad_norm=0.0)


def test_exact_gates_stay_finite():
    """eta = 0 and alpha = 1 (log 0 in the closed form) on some tokens."""
    inputs, state = memory_inputs(B=1, T=20, H=2, D=16, depth=2, hidden=16)
    q, k, v, theta, eta, alpha = inputs
    eta, alpha = eta.clone(), alpha.clone()
    eta[:, ::3] = 0.0
    alpha[:, ::5] = 1.0
    _compare((q, k, v, theta, eta, alpha), state, chunk_size=8, activation="silu", max_grad_norm=1.0)


@triton.jit
def _rounded_bf16(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, round_bf16(tl.load(x_ptr + offs)))


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's stand-in for the bf16 cast")
def test_interpreted_bf16_rounding_is_round_to_nearest_even():
    """pieces.round_bf16 equals torch's fp32 -> bf16 cast bit for bit: ties to even (both
    ways, normal and subnormal), signs, subnormals, overflow past bf16's largest value to
    infinity, infinities and zeros."""
    g = torch.Generator().manual_seed(0)
    ties = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 0.0])
    ties[3] = torch.tensor(0x00018000, dtype=torch.int32).view(torch.float32)  # a subnormal tie: up
    special = torch.tensor([3.3e38, -0.0, 3.4e38, -3.4e38, 1e-40, float("inf"), float("-inf"), 0.0])
    special[7] = torch.tensor(0x00008000, dtype=torch.int32).view(torch.float32)  # a subnormal tie: down
    scales = 10.0 ** torch.randint(-30, 30, (4084,), generator=g)
    x = torch.cat([torch.randn(4084, generator=g) * scales, ties, special])
    y = torch.empty_like(x)
    _rounded_bf16[(1,)](x, y, 4096)
    assert torch.equal(y.view(torch.int32), x.bfloat16().float().view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    """bf16/fp16 q, k, v are read as such; the products take their operands in that type and
    sum in fp32, with an fp32 state."""
    inputs, state = memory_inputs(B=2, T=40, H=2, D=32, depth=2, hidden=64)
    # The reference sees the same rounded inputs, so only the computation differs.
    rounded = tuple(t.to(dtype).double() if i < 3 else t for i, t in enumerate(inputs))
    _compare(rounded, state, tol=2e-2, grad_tol=3e-2, dtype=dtype, chunk_size=16, activation="silu", max_grad_norm=1.0)


@pytest.mark.parametrize("depth", [1, 2])
def test_bf16_inner_error_that_cancels(depth):
    """A memory that already maps k close to v: the inner error 2 (M(k) - v) is a small
    difference of large terms. With M(k) from plain bf16 products (the state rounded to
    2^-9) the end momentum and the gradient of theta were 2-3e-2 off here; with the split
    products (pieces.mm_fine) everything is within 6e-3."""
    inputs, state = memory_inputs(B=1, T=40, H=2, D=32, depth=depth, hidden=64, momentum=False)
    q, k, v, theta, eta, alpha = inputs
    q, k = (x.to(torch.bfloat16).double() for x in (q, k))
    out = torch.einsum("bthd,bhde->bthe", k, state.weights[0])
    if depth == 2:
        out = torch.einsum("bthd,bhde->bthe", torch.nn.functional.silu(out), state.weights[1])
    v = (out + 0.01 * v).to(torch.bfloat16).double()  # fitted to 1%
    alpha = torch.full_like(alpha, 1e-3)  # and it stays fitted: almost no forgetting
    _compare((q, k, v, theta, eta, alpha), state, tol=1e-2, grad_tol=1e-2, dtype=torch.bfloat16, chunk_size=16)


def test_streaming_split_equals_one_call():
    """The returned end state continues the scan exactly (split inside a chunk too)."""
    inputs, state = memory_inputs(B=1, T=45, H=2, D=16, depth=2, hidden=16, dtype=torch.float32)
    inputs = [t.to(DEVICE) for t in inputs]
    state = MemoryState(*[tuple(t.to(DEVICE) for t in ts) for ts in state])
    with torch.no_grad():
        y_all, s_all = triton_neural_memory(*inputs, state, chunk_size=16)
        first = [t[:, :32] for t in inputs]
        second = [t[:, 32:] for t in inputs]
        y1, s1 = triton_neural_memory(*first, state, chunk_size=16)
        y2, s2 = triton_neural_memory(*second, s1, chunk_size=16)
    assert max_rel_err(torch.cat([y1, y2], 1), y_all) < 1e-6
    for a, b in zip(flat(s2), flat(s_all), strict=True):
        assert max_rel_err(a, b) < 1e-6


def test_inference_saves_no_chunk_states():
    inputs, state = memory_inputs(B=1, T=40, H=1, D=16, depth=1, dtype=torch.float32)
    args = [t.to(DEVICE).contiguous() for t in inputs[:4]] + [torch.zeros(1, 40, 1, device=DEVICE)] * 2
    flat_state = ops.pack_state(state).to(DEVICE)
    no_resets = (torch.zeros(0, dtype=torch.int8, device=DEVICE), torch.zeros(0, device=DEVICE))
    _, _, saved, _ = torch.ops.titans.memory_scan(*args, flat_state, *no_resets, 0, 16, "silu", 0.0, False, 1, 1)
    assert saved.numel() == 0
    _, _, saved, _ = torch.ops.titans.memory_scan(*args, flat_state, *no_resets, 0, 16, "silu", 0.0, True, 1, 1)
    assert saved.shape == (1, 1, 3, 2 * 16 * 16)
    _, _, saved, _ = torch.ops.titans.memory_scan(*args, flat_state, *no_resets, 0, 16, "silu", 0.0, True, 2, 1)
    assert saved.shape == (1, 1, 2, 2 * 16 * 16)  # 3 chunks, a checkpoint every 2


def _op_args(depth, requires_grad, resets=False):
    inputs, state = memory_inputs(B=1, T=20, H=2, D=16, depth=depth, hidden=16, dtype=torch.float32)
    q, k, v, theta, eta, alpha = (t.to(DEVICE) for t in inputs)
    log_eta, log_retain = torch.log(eta), torch.log1p(-alpha)
    flat = ops.pack_state(state).to(DEVICE)
    init = flat[..., : flat.shape[-1] // 2] * 0.5 if resets else flat.new_zeros(0)
    tensors = [q, k, v, theta, log_eta, log_retain, flat, init]
    tensors = [t.contiguous().requires_grad_(requires_grad) for t in tensors]
    # 3 chunks of 8, a checkpoint every 2: the restart at chunk 1 falls inside a group
    flags = torch.tensor([[0, 1, 0]] if resets else [], dtype=torch.int8, device=DEVICE)
    # split 1: the one-program kernel
    return (*tensors[:7], flags, tensors[7], 16 if depth == 2 else 0, 8, "silu", 1.0, requires_grad, 2, 1)


@pytest.mark.parametrize(("depth", "resets"), [(1, False), (2, False), (2, True)])
def test_opcheck(depth, resets):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch."""
    torch.library.opcheck(torch.ops.titans.memory_scan.default, _op_args(depth, True, resets))
    torch.library.opcheck(
        torch.ops.titans.memory_scan.default,
        _op_args(depth, False, resets),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_compiles_with_fullgraph():
    """The custom op traces through torch.compile(fullgraph=True), forward and backward."""
    inputs, state = memory_inputs(B=1, T=24, H=2, D=16, depth=2, hidden=16, dtype=torch.float32)

    def run(*leaves):
        y, s = triton_neural_memory(*leaves[:6], MemoryState(leaves[6:8], leaves[8:]), chunk_size=8)
        return y.square().sum() + s.weights[1].sum()

    leaves = [t.to(DEVICE).requires_grad_() for t in (*inputs, *flat(state))]
    eager = torch.autograd.grad(run(*leaves), leaves)
    compiled_fn = torch.compile(run, fullgraph=True, backend="aot_eager")
    compiled = torch.autograd.grad(compiled_fn(*leaves), leaves)
    for a, b in zip(compiled, eager, strict=True):
        assert max_rel_err(a, b) < 1e-6


def test_auto_backend_is_chunk_off_cuda_and_errors_name_the_limit():
    inputs, state = memory_inputs(B=1, T=4, H=1, D=4, depth=3, dtype=torch.float32)
    cpu = torch.zeros(1)
    assert resolve_backend("auto", cpu, state, chunk_size=2, activation="silu") == "chunk"
    with pytest.raises(ValueError, match="depth must be one of \\[1, 2\\]"):
        neural_memory_scan(*inputs, state, chunk_size=2, activation="silu", backend="triton")
    inputs2, state2 = memory_inputs(B=1, T=4, H=1, D=4, depth=2)  # fp64
    with pytest.raises(ValueError, match="inputs in"):
        triton_neural_memory(*inputs2, state2)
    with pytest.raises(ValueError, match="memory backend must be one of"):
        resolve_backend("cuda", cpu, state, chunk_size=2, activation="silu")


def test_forced_triton_without_cuda_or_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inputs, state = memory_inputs(B=1, T=4, H=1, D=4, depth=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        triton_neural_memory(*inputs, state)


@pytest.mark.parametrize("depth", [1, 2])
def test_memory_module_on_triton_equals_chunk_backend(depth):
    """The whole NeuralMemory (projections, gates, streaming through a partial chunk)
    with backend 'triton' against 'chunk': outputs and every parameter's gradient."""
    torch.manual_seed(0)
    cfg = MemoryConfig(dim=24, n_heads=2, head_dim=12, depth=depth, chunk_size=8, backend="chunk")
    ref = NeuralMemory(cfg).to(DEVICE)
    fast = NeuralMemory(dataclasses.replace(cfg, backend="triton")).to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 29, 24, device=DEVICE)
    w = torch.randn(2, 29, 24, device=DEVICE)
    y_ref, _ = ref(x)
    ys, state, pos = [], None, 0
    for n in (13, 3, 13):  # pieces end inside chunks
        y, state = fast(x[:, pos : pos + n], state)
        ys.append(y)
        pos += n
    y = torch.cat(ys, 1)
    assert max_rel_err(y, y_ref) < 1e-5
    grads = torch.autograd.grad((y * w).sum(), list(fast.parameters()))
    grads_ref = torch.autograd.grad((y_ref * w).sum(), list(ref.parameters()))
    for (name, _), a, b in zip(fast.named_parameters(), grads, grads_ref, strict=True):
        assert max_rel_err(a, b) < 1e-4, name


def test_config_rejects_depth_the_kernels_do_not_have():
    with pytest.raises(ValueError, match=r"titans.memory_depth must be one of \[1, 2\] with titans.backend='triton'"):
        TitansConfig(pattern="M", memory_depth=3, backend="triton").validate(dim=24, n_layers=1)
