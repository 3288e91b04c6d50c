"""Every private torch API the plugin relies on, in one place.

Private APIs change without deprecation between torch releases. Keeping them here means
one file to read at a torch upgrade, and one test (tests/test_torch_internals.py) that
checks each still exists and that the installed torch lies in TESTED_TORCH, the range
they are known to work on. Nothing outside this module names a private torch API."""

import torch

# Releases these APIs were checked on (inclusive lower, exclusive upper bound).
TESTED_TORCH = ((2, 11), (2, 16))


def current_graph_task_id() -> int:
    """The id of the autograd backward pass running on this thread, -1 outside of one
    (activation checkpointing recomputes a forward inside the backward)."""
    return torch._C._current_graph_task_id()


def at_backward_end(callback) -> None:
    """Run callback() when the backward pass that is running now finishes."""
    torch.autograd.Variable._execution_engine.queue_callback(callback)


# Fused attention kernels that also return the log-sum-exp (ring attention's blocks).
def flash_attention_cpu(q, k, v, causal: bool):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal)


def flash_attention_cpu_backward(dout, q, k, v, out, lse, causal: bool):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(dout, q, k, v, out, lse, 0.0, causal)


def flash_attention_cuda(q, k, v, causal: bool):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal)[:2]
    return out, lse


def flash_attention_cuda_backward(dout, q, k, v, out, lse, causal: bool):
    # the forward's cumulative lengths (dense inputs: none) and random state (no dropout:
    # never read) do not depend on the block, so the backward does not need the forward's.
    # The kernel reads lse unchecked as dense fp32 [B, H, Tq]: anything else is silently wrong
    no_rng = torch.zeros(2, dtype=torch.uint64, device=q.device), torch.zeros((), dtype=torch.uint64, device=q.device)
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        dout, q, k, v, out, lse.float().contiguous(), None, None, q.shape[2], k.shape[2], 0.0, causal, *no_rng
    )


def saved_private_ops() -> set:
    """SDPA's kernels and the functional reduce-scatter as ops (what activation
    checkpointing's save list names, as torchtitan's llama3 does)."""
    aten = torch.ops.aten
    return {
        torch.ops._c10d_functional.reduce_scatter_tensor.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_cudnn_attention.default,
        aten._scaled_dot_product_attention_math.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
    }


def mark_static(tensor: torch.Tensor) -> None:
    """Tell torch.compile to treat every size of `tensor` (an input of a compiled call) as a
    constant of the graph, never as a symbol."""
    torch._dynamo.mark_static(tensor)


def replicate_finding_unused(model: torch.nn.Module, mesh, compiled: bool) -> None:
    """DDP (the composable `replicate`, as torchtitan's apply_ddp) that does not wait for the
    gradients of parameters a step leaves out of the loss."""
    from torch.distributed._composable.replicate import replicate

    if compiled:
        torch._dynamo.config.optimize_ddp = "ddp_optimizer"  # as apply_ddp with compile
    replicate(model, device_mesh=mesh, bucket_cap_mb=100, find_unused_parameters=True)


def allow_compiled_versions(per_function: int) -> None:
    """Let torch.compile keep at least `per_function` compiled versions of one Python
    function before it stops (fullgraph) or falls back to eager."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, per_function)


def skip_forward_side_effects_when_recomputing() -> None:
    """Compiled blocks under activation checkpointing: the recomputation in the backward
    does not replay the forward's Python side effects (the memory's statistics for the
    logger), which fullgraph compile cannot trace there (torchtitan 0.3.0 sets the same)."""
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
