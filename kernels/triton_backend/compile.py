"""Ahead-of-time compilation of the scan kernels for a given GPU architecture, without a
GPU: what the compile report reads, and what `auto` dispatch checks before it picks the
kernels on a device (a kernel over the device's shared-memory limit would fail at launch)."""

import functools

import torch

from .config import backward_args, forward_args

TYPE_NAME = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
KERNELS = ("forward-train", "forward-infer", "backward")
# The split-state scan (split_forward.py, split_backward.py), compiled at the design's 4
# programs per (batch, head); reported beside the launched kernels, not launched by `auto`.
SPLIT_KERNELS = ("split-forward-train", "split-backward")
REPORT_SPLIT = 4


def reported_kernels() -> tuple[str, ...]:
    """What the compile report compiles with this triton: the split scan needs
    `tl.atomic_poll` (triton >= 3.9)."""
    import triton.language as tl

    return KERNELS + SPLIT_KERNELS if hasattr(tl, "atomic_poll") else KERNELS


def signature(kernel: str, dtype: torch.dtype) -> dict:
    """Pointer and scalar arguments of the forward or backward kernel, in their order."""
    t = "*" + TYPE_NAME[dtype]
    f = "*fp32"
    inputs = dict(q_ptr=t, k_ptr=t, v_ptr=t, theta_ptr=f, log_eta_ptr=f, log_retain_ptr=f)
    restarts = dict(resets_ptr="*i8", init_ptr=f)
    exchange = {"slots_ptr": f, "counters_ptr": "*i32", "ok_ptr": "*i32"}
    if kernel == "split-forward-train":
        names = {**inputs, "state_ptr": f, "y_ptr": t, "saved_ptr": f, **restarts, **exchange, "scratch_ptr": f}
    elif kernel.startswith("forward"):
        names = {**inputs, "state_ptr": f, "y_ptr": t, "saved_ptr": f, "scratch_ptr": f, **restarts}
    else:
        grads = {"d" + name: type_ for name, type_ in inputs.items()}  # dq_ptr, ..., dlog_retain_ptr
        names = {"dy_ptr": t, "dstate_ptr": f, **inputs, "saved_ptr": f, "replay_ptr": f, "scratch_ptr": f}
        names = {**names, **grads, **restarts, "dinit_ptr": f}
        if kernel == "split-backward":
            sums = {"sum_slots_ptr": f, "sum_counters_ptr": "*i32"}
            names = {**names, "slots_ptr": f, "counters_ptr": "*i32", **sums, "ok_ptr": "*i32"}
    return {**names, "T": "i32", "H": "i32", "max_norm": "fp32"}


def compile_for(kernel: str, meta: dict, dtype: torch.dtype, arch: int):
    """The CompiledKernel of 'forward-train' (saves checkpoints), 'forward-infer',
    'backward', 'split-forward-train' or 'split-backward' for one kernel_meta(...) and an
    sm_<arch> target."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .backward import scan_backward_kernel
    from .forward import scan_forward_kernel
    from .split import backward_slots
    from .split_backward import split_backward_kernel
    from .split_forward import split_forward_kernel

    meta = dict(meta)
    options = {"num_warps": meta.pop("num_warps"), "maxnreg": meta.pop("maxnreg"), "num_stages": 1}
    timeout = {"SPLIT": REPORT_SPLIT, "TIMEOUT_NS": 10**10}
    if kernel == "split-backward":
        fn = split_backward_kernel
        meta = backward_args(meta)
        slot, sum_slot = backward_slots(meta)
        meta = {**meta, **timeout, "SLOT": slot, "SUM_SLOT": sum_slot}
    elif kernel.startswith("split"):
        fn = split_forward_kernel
        meta = forward_args(meta)
        slot = meta["BC"] * meta["BV"]
        meta = {**meta, **timeout, "SAVE": True, "SLOT": slot}
    elif kernel.startswith("forward"):
        fn = scan_forward_kernel
        meta = {**forward_args(meta), "SAVE": kernel == "forward-train"}
    else:
        fn = scan_backward_kernel
        meta = backward_args(meta)
    sig = {**signature(kernel, dtype), **{name: "constexpr" for name in meta}}
    return triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=meta), target=GPUTarget("cuda", arch, 32), options=options
    )


def shared_memory_problem(meta: dict, dtype: torch.dtype, arch: int, limit: int, kernels=KERNELS) -> str | None:
    """Why these kernels cannot launch on an sm_<arch> device whose blocks may use `limit`
    bytes of shared memory (None when they can)."""
    for kernel in kernels:
        try:
            shared = compile_for(kernel, meta, dtype, arch).metadata.shared
        except Exception as e:  # a compile failure is a reason not to launch, never a crash
            return f"the {kernel} kernel does not compile for sm_{arch} ({type(e).__name__}: {e})"
        if shared > limit:
            return (
                f"the {kernel} kernel needs {shared:,} bytes of shared memory per block and sm_{arch} allows {limit:,}"
            )
    return None


@functools.cache
def device_problem(meta_items: tuple, dtype: torch.dtype, device_index: int) -> str | None:
    """shared_memory_problem for a CUDA device, once per configuration and device."""
    props = torch.cuda.get_device_properties(device_index)
    arch = props.major * 10 + props.minor
    limit = getattr(props, "shared_memory_per_block_optin", None) or props.shared_memory_per_block
    return shared_memory_problem(dict(meta_items), dtype, arch, limit)
