"""The MAG/MAC gate's initial scale (`gate_scale_init`): where it lands in the model, and
why it exists: with the gate's scale at 1 a deep stack of gated layers starts with a
gradient many times a Transformer's, and a small scale starts it at the Transformer's."""

import pytest
import torch

from devtools.models import tiny_args, tiny_model
from titans_plugin.blocks.gate import MemoryGate
from titans_plugin.model import TitansTransformer


def _initial_grad_norm(pattern: str, n_layers: int, **titans) -> float:
    model = tiny_model(pattern, n_layers=n_layers, **titans)
    tokens = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(1))
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()


@pytest.mark.parametrize("pattern", ["G", "C"])
def test_every_gate_starts_at_the_configured_scale_and_keeps_it_through_init_weights(pattern):
    model = tiny_model(pattern + "A", gate_scale_init=0.05)
    model.init_weights()
    gates = [m for m in model.modules() if isinstance(m, MemoryGate)]
    assert len(gates) == 1
    assert torch.equal(gates[0].norm_y.weight, torch.full_like(gates[0].norm_y.weight, 0.05))
    assert torch.equal(gates[0].norm_m.weight, torch.ones_like(gates[0].norm_m.weight))


def test_a_model_built_on_the_meta_device_as_torchtitan_builds_it_starts_at_the_scale():
    with torch.device("meta"):
        model = TitansTransformer(tiny_args("GC", gate_scale_init=0.05))
    model.to_empty(device="cpu")
    model.init_weights()
    weights = [m.norm_y.weight for m in model.modules() if isinstance(m, MemoryGate)]
    assert len(weights) == 2
    assert all(torch.equal(w, torch.full_like(w, 0.05)) for w in weights)


@pytest.mark.parametrize("pattern", ["G", "C"])
def test_a_small_gate_scale_starts_a_deep_model_at_the_transformers_gradient(pattern):
    transformer = _initial_grad_norm("A", 12)
    assert _initial_grad_norm(pattern, 12) > 5 * transformer  # the default scale of 1
    assert _initial_grad_norm(pattern, 12, gate_scale_init=0.02) < 1.5 * transformer


@pytest.mark.parametrize("value", [0, -0.5, float("inf")])
def test_a_gate_scale_that_is_not_a_positive_number_names_the_field(value):
    with pytest.raises(ValueError, match=r"titans\.gate_scale_init must be a number > 0, got "):
        tiny_model("GA", gate_scale_init=value)
