"""The private torch APIs the plugin uses: all behind titans_plugin/utils/torch_internals.py,
each still there, on a torch in the range they are known to work on."""

import pathlib
import re

import torch

from devtools.paths import REPO
from titans_plugin.utils import torch_internals as ti

PRIVATE = re.compile(r"torch\._[A-Za-z]|torch\.[a-z_.]*\._[a-z]|_execution_engine|torch\.ops\.aten\._")


def test_the_installed_torch_is_in_the_tested_range():
    release = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    low, high = ti.TESTED_TORCH
    assert low <= release < high, (
        f"torch {torch.__version__} is outside {low}..{high}, where titans_plugin/utils/torch_internals.py was "
        "checked: re-check each API there and widen TESTED_TORCH"
    )


def test_no_private_torch_api_outside_its_module():
    own = pathlib.Path(ti.__file__).resolve()
    offenders = []
    for root in ("titans_plugin", "kernels"):
        for path in pathlib.Path(REPO, root).rglob("*.py"):
            if path.resolve() == own:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_graph_task_id_and_end_of_backward_callback():
    assert ti.current_graph_task_id() == -1
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            seen.append(ti.current_graph_task_id())
            ti.at_backward_end(lambda: seen.append("end"))
            return g

    Probe.apply(torch.ones(2, requires_grad=True)).sum().backward()
    assert seen[0] != -1
    assert seen[1] == "end"


def test_cpu_flash_attention_and_its_backward_match_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
    out, lse = ti.flash_attention_cpu(q, k, v, True)[:2]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out, ref, atol=1e-5)
    dout = torch.randn_like(out)
    dq, dk, dv = ti.flash_attention_cpu_backward(dout, q, k, v, out, lse, True)
    grads = torch.autograd.grad(ref, (q, k, v), dout)
    for ours, theirs in zip((dq, dk, dv), grads, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-4)


def test_the_saved_ops_resolve():
    ops = ti.saved_private_ops()
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default in ops
    assert len(ops) == 6


def test_mark_static_and_ddp_finding_unused_parameters_are_there():
    """mark_static marks every dimension; replicate and optimize_ddp exist (the torchrun
    test of carry_memory runs DDP through replicate_finding_unused)."""
    from torch.distributed._composable.replicate import replicate

    t = torch.zeros(2, 3)
    ti.mark_static(t)
    assert t._dynamo_static_indices == {0, 1}
    assert callable(replicate)
    assert torch._dynamo.config.optimize_ddp in (True, False, "ddp_optimizer", "python_reducer", "no_optimization")


def test_the_compiled_versions_limit_is_raised_never_lowered():
    before = torch._dynamo.config.recompile_limit
    try:
        ti.allow_compiled_versions(before + 3)
        assert torch._dynamo.config.recompile_limit == before + 3
        ti.allow_compiled_versions(1)
        assert torch._dynamo.config.recompile_limit == before + 3
    finally:
        torch._dynamo.config.recompile_limit = before


def test_the_recompute_can_skip_forward_side_effects():
    before = torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint
    try:
        ti.skip_forward_side_effects_when_recomputing()
        assert torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint is True
    finally:
        torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = before
