"""NeuralMemory module: streaming, causality, stability, gradients, configuration errors."""

import dataclasses
import random

import pytest
import torch

from devtools.models import flat, max_rel_err
from titans_plugin.config import TitansConfig
from titans_plugin.memory import MemoryConfig, NeuralMemory


def _memory(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    cfg = MemoryConfig(**{"dim": 24, "n_heads": 2, "head_dim": 5, "chunk_size": 4, **kw})
    return NeuralMemory(cfg).to(dtype)


def _split_lengths(T, seed):
    rng = random.Random(seed)
    out = []
    while sum(out) < T:
        out.append(min(rng.randint(1, 9), T - sum(out)))
    return out


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("gate_mode", ["token", "chunk"])
@pytest.mark.parametrize("split", ["random", "one_token"])
def test_streaming_any_split_equals_one_call(depth, gate_mode, split):
    m = _memory(depth=depth, gate_mode=gate_mode)
    x = torch.randn(2, 23, 24, dtype=torch.float64)
    y, s = m(x)
    lengths = [1] * 23 if split == "one_token" else _split_lengths(23, seed=depth)
    ys, st, pos = [], None, 0
    for n in lengths:
        o, st = m(x[:, pos : pos + n], st)
        ys.append(o)
        pos += n
    assert st.seen == 23
    assert max_rel_err(torch.cat(ys, 1), y) < 1e-8
    for a, b in zip(flat(st.memory), flat(s.memory), strict=True):
        assert max_rel_err(a, b) < 1e-8


@pytest.mark.parametrize("gate_mode", ["token", "chunk"])
def test_module_is_causal(gate_mode):
    m = _memory(gate_mode=gate_mode)
    x = torch.randn(2, 17, 24, dtype=torch.float64)
    y, _ = m(x)
    for t in (0, 5, 8, 15):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :])
        y2, _ = m(x2)
        assert torch.equal(y[:, : t + 1], y2[:, : t + 1]), t


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("chunk", [1, 4])
def test_module_gradients_equal_per_token_reference(depth, chunk):
    """Same module, same weights, backend 'naive' (token loop + autograd) vs 'chunk'."""
    m = _memory(depth=depth, chunk_size=chunk)
    ref = _memory(depth=depth, chunk_size=chunk, backend="naive")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 11, 24, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 11, 24, dtype=torch.float64)
    y, _ = m(x)
    y_ref, _ = ref(x)
    assert max_rel_err(y, y_ref) < 1e-10
    params = list(m.parameters())
    g = torch.autograd.grad((y * w).sum(), [x, *params])
    g_ref = torch.autograd.grad((y_ref * w).sum(), [x, *ref.parameters()])
    for (name, _), a, b in zip([("x", None), *m.named_parameters()], g, g_ref, strict=True):
        assert max_rel_err(a, b) < 1e-8, name


def test_16k_tokens_stay_finite_in_fp32():
    torch.manual_seed(0)
    m = NeuralMemory(MemoryConfig(dim=64, n_heads=2, depth=2, expansion=2, chunk_size=64))
    x = torch.randn(1, 16384, 64, requires_grad=True)
    y, s = m(x)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(t).all() for t in flat(s.memory))
    y.pow(2).mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_gates_start_at_their_configured_fractions():
    m = _memory(lr_init=0.02, forget_init=1e-4, max_lr=0.5)
    torch.nn.init.zeros_(m.w_gates.weight)  # only the biases speak
    theta, eta, alpha = m.gates(torch.randn(1, 3, 24, dtype=torch.float64))
    assert torch.allclose(theta, torch.full_like(theta, 0.02 * 0.5))
    assert torch.allclose(eta, torch.full_like(eta, 0.9))
    assert torch.allclose(alpha, torch.full_like(alpha, 1e-4))


def test_gates_respect_configured_bounds():
    """Saturating inputs drive every gate to both ends of its range: within (0, bound),
    and reaching the bound (a gate scaled by a smaller bound fails) and 0."""
    m = _memory(max_lr=0.05, max_momentum=0.5, max_forget=0.25)
    gates = m.gates(100 * torch.randn(2, 9, 24, dtype=torch.float64))
    for gate, bound in zip(gates, (0.05, 0.5, 0.25), strict=True):
        assert 0 <= gate.min() <= 0.01 * bound
        assert 0.99 * bound <= gate.max() <= bound


def _state_tensors(s) -> list[torch.Tensor]:
    return [*flat(s.memory), *flat(s.chunk_start), *s.pending, *(s.conv_tail or ())]


def test_state_is_detachable_for_truncated_backprop():
    m = _memory()
    x = torch.randn(1, 9, 24, dtype=torch.float64)  # 9 tokens, chunk 4: one token pending
    _, s = m(x)
    tensors = _state_tensors(s)
    assert len(s.pending) == 6
    assert s.conv_tail is not None
    assert all(t.grad_fn is not None for t in tensors)  # the state is in the graph
    s = s.detach()
    assert all(t.grad_fn is None and not t.requires_grad for t in _state_tensors(s))
    assert s.seen == 9
    y, _ = m(x, s)
    y.sum().backward()  # no error: nothing from the first call is in the graph


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("chunk_size", 0, ">= 1"),
        ("memory_heads", 5, "divisor of model.dim=24"),
        ("memory_head_dim", -1, ">= 0"),
        ("memory_depth", 0, ">= 1"),
        ("max_lr", 0.0, "> 0"),
        ("max_momentum", 1.5, "(0, 1]"),
        ("max_forget", 0.0, "(0, 1]"),
        ("max_grad_norm", -1.0, ">= 0"),
        ("memory_activation", "swish", "silu"),
        ("gate_mode", "layer", "token"),
        ("backend", "cuda", "chunk"),
        ("conv_kernel", -1, ">= 0"),
        ("memory_expansion", 0, "> 0"),
        ("lr_init", 1.0, "(0, 1)"),
        ("forget_init", 0.0, "(0, 1)"),
        ("mac_memory_input", "output", "['residual', 'attention']"),
        ("mal_form", "parallel", "['stacked', 'fused']"),
    ],
)
def test_bad_configuration_names_field_and_allowed_values(field, value, allowed):
    cfg = TitansConfig(**{"pattern": "CLM", "memory_heads": 2, field: value})
    with pytest.raises(ValueError, match=f"titans.{field} must be") as err:
        cfg.validate(dim=24, n_layers=2)
    assert allowed in str(err.value)
    # A configuration without memory layers does not read the memory (or MAC, MAL) fields.
    dataclasses.replace(cfg, pattern="A").validate(dim=24, n_layers=2)
