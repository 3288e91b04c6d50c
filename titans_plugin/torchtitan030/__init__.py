"""torchtitan 0.3.0 adapter. Importing it registers the plugin's datasets with torchtitan
and, on a machine without an accelerator, the CPU support; 0.3.0 has no model registry:
a model travels inside its config (titans_plugin/config_registry.py is the entry module
that `--module titans_plugin` imports).

Everything here speaks torchtitan 0.3.0; what both torchtitan versions share lives in
titans_plugin/training/."""

from titans_plugin.training.cpu import enable_cpu_support

from .data import register_datasets

# the modules of torchtitan 0.3.0 that bind device_type / device_module by name
DEVICE_MODULES = (
    "torchtitan.tools.utils",
    "torchtitan.components.metrics",
    "torchtitan.distributed.parallel_dims",
    "torchtitan.distributed.utils",
    "torchtitan.tools.profiler",
    "torchtitan.models.common.token_dispatcher",
)


def _register() -> None:
    enable_cpu_support(DEVICE_MODULES)
    register_datasets()


_register()  # once: a module runs once per process
