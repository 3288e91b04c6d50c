"""Make torchtitan 0.2.2 train on a machine without an accelerator.

torchtitan picks "cuda" when no accelerator is found and binds `device_type` and
`device_module` by name in several modules at import time. On such a machine we rebind
them to "cpu" and a small module that answers the calls torchtitan makes (set_device,
current_device, memory statistics, ...). `[experimental] custom_import` is imported
before the trainer calls set_device, so importing the plugin is early enough.
With an accelerator present this is a no-op.
"""

import importlib
import os
import resource
import types

import torch

_PATCHED_MODULES = (
    "torchtitan.tools.utils",
    "torchtitan.components.metrics",
    "torchtitan.distributed.parallel_dims",
    "torchtitan.distributed.utils",
    "torchtitan.tools.profiling",
)


class _CpuProperties:
    def __init__(self):
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        self.total_memory = pages * os.sysconf("SC_PAGE_SIZE") if pages else 1 << 34
        self.name = "cpu"


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _make_cpu_device_module() -> types.ModuleType:
    m = types.ModuleType("titans_cpu_device")
    m.is_available = lambda: True
    m.device_count = lambda: 1
    m.current_device = lambda: 0  # barrier(device_ids=[...]) needs an int
    m.set_device = lambda device: None
    m.synchronize = lambda device=None: None
    m.empty_cache = lambda: None
    m.reset_peak_memory_stats = lambda device=None: None
    m.get_device_name = lambda device=None: "cpu"
    m.get_device_properties = lambda device=None: _CpuProperties()
    # Peak resident memory of the process stands in for the allocator's peak.
    m.memory_stats = lambda device=None: {
        "active_bytes.all.peak": _peak_rss_bytes(),
        "reserved_bytes.all.peak": _peak_rss_bytes(),
        "num_alloc_retries": 0,
        "num_ooms": 0,
    }
    m.manual_seed = torch.manual_seed
    m.manual_seed_all = torch.manual_seed
    return m


CPU_DEVICE_MODULE = _make_cpu_device_module()


def accelerator_present() -> bool:
    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def enable_cpu_support() -> bool:
    """Rebind torchtitan's device globals to CPU when no accelerator is present.
    Returns True when it patched something."""
    if accelerator_present():
        return False
    for name in _PATCHED_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "device_type"):
            mod.device_type = "cpu"
        if hasattr(mod, "device_module"):
            mod.device_module = CPU_DEVICE_MODULE
    return True


def force_sum_reductions(model: torch.nn.Module) -> None:
    """gloo has no PREMUL_SUM, which FSDP2 uses to divide gradients by the world size
    while reducing. Sum reductions with the divide done afterwards give the same math."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
