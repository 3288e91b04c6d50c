"""Memory-MLP activations with their derivatives written out.

The chunked path builds the inner gradient (backprop through the memory MLP) by hand,
so it needs act'(z) as ordinary differentiable tensor ops: the outer training loop then
differentiates through act' (second derivatives of the activation) with plain autograd.
The per-token reference does not use these derivatives; it calls torch.autograd.grad,
which is what makes it an independent check of the formulas below.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Activation(NamedTuple):
    fn: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]  # d fn / dz, elementwise
    grad2: Callable[[torch.Tensor], torch.Tensor]  # d^2 fn / dz^2 (hand-written backward)


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    # exact (erf) GELU: Phi(z) + z * phi(z)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return cdf + z * pdf


def _silu_grad2(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _gelu_grad2(z: torch.Tensor) -> torch.Tensor:
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return pdf * (2 - z * z)


def _tanh_grad2(z: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(z)
    return -2 * t * (1 - t * t)


def _tanh_grad(z: torch.Tensor) -> torch.Tensor:
    return 1 - torch.tanh(z) ** 2


def _relu_grad(z: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)


ACTIVATIONS: dict[str, Activation] = {
    "silu": Activation(F.silu, _silu_grad, _silu_grad2),
    "gelu": Activation(F.gelu, _gelu_grad, _gelu_grad2),
    "tanh": Activation(torch.tanh, _tanh_grad, _tanh_grad2),
    "relu": Activation(F.relu, _relu_grad, torch.zeros_like),
}


def get_activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise ValueError(f"memory activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]
