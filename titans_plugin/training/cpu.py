"""Make torchtitan train on a machine without an accelerator.

torchtitan (0.2.2 and 0.3.0 alike) picks "cuda" when no accelerator is found and binds
`device_type` and `device_module` by name in several modules at import time. On such a
machine each adapter rebinds them, in the modules its version has, to "cpu" and a small
module that answers the calls torchtitan makes (set_device, current_device, memory
statistics, ...). Both versions import the plugin's entry module before the trainer calls
set_device, so doing it on import is early enough. With an accelerator present this is
a no-op.
"""

import importlib
import os
import resource

import torch


class _CpuProperties:
    def __init__(self):
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        self.total_memory = pages * os.sysconf("SC_PAGE_SIZE") if pages else 1 << 34
        self.name = "cpu"


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class CpuDeviceModule:
    """What torchtitan calls on its device module (torch.cuda elsewhere), answered for the CPU."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> int:
        return 0  # barrier(device_ids=[...]) needs an int

    @staticmethod
    def set_device(device) -> None:
        pass

    @staticmethod
    def synchronize(device=None) -> None:
        pass

    @staticmethod
    def empty_cache() -> None:
        pass

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        pass

    @staticmethod
    def get_device_name(device=None) -> str:
        return "cpu"

    @staticmethod
    def get_device_properties(device=None) -> _CpuProperties:
        return _CpuProperties()

    @staticmethod
    def memory_stats(device=None) -> dict[str, int]:
        # Peak resident memory of the process stands in for the allocator's peak.
        return {
            "active_bytes.all.peak": _peak_rss_bytes(),
            "reserved_bytes.all.peak": _peak_rss_bytes(),
            "num_alloc_retries": 0,
            "num_ooms": 0,
        }

    manual_seed = staticmethod(torch.manual_seed)
    manual_seed_all = staticmethod(torch.manual_seed)


CPU_DEVICE_MODULE = CpuDeviceModule()


def accelerator_present() -> bool:
    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def enable_cpu_support(modules: tuple[str, ...]) -> bool:
    """Rebind the device globals of these torchtitan modules to CPU when no accelerator is
    present. Returns True when it patched something."""
    if accelerator_present():
        return False
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "device_type"):
            vars(mod)["device_type"] = "cpu"
        if hasattr(mod, "device_module"):
            vars(mod)["device_module"] = CPU_DEVICE_MODULE
    return True


def force_sum_reductions(model: torch.nn.Module) -> None:
    """gloo has no PREMUL_SUM, which FSDP2 uses to divide gradients by the world size
    while reducing. Sum reductions with the divide done afterwards give the same math."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
