"""Titans neural long-term memory for torchtitan.

The model code imports without torchtitan and without side effects:

    titans_plugin.memory   NeuralMemory (the test-time-trained deep memory)
    titans_plugin.blocks   MAC, MAG, MAL, LMM and attention blocks
    titans_plugin.model    TitansTransformer (a hybrid stack from a layer spec)
    titans_plugin.hybrid   build hybrids from llama3 configs, swap layers in place
    titans_plugin.kernels  the memory scan: per-token reference, chunked PyTorch, Triton

Inside a torchtitan process, `[experimental] custom_import = "titans_plugin"` (and
`[job] custom_config_module = "titans_plugin.adapter.job_config"`) import this package
after torchtitan, and that registers the "titans" model, its datasets and, without an
accelerator, the CPU support (titans_plugin.adapter.register). Anywhere else, importing
titans_plugin neither imports torchtitan nor changes it; call
`titans_plugin.adapter.register()` to register explicitly.
"""

import sys

__version__ = "0.1.0"


def _register_if_in_torchtitan() -> None:
    # torchtitan's config manager and trainer have imported torchtitan.config before they
    # import a custom module; a process that has not is not a torchtitan run.
    if "torchtitan.config" in sys.modules:
        from .adapter import register

        register()


_register_if_in_torchtitan()
