"""Titans neural long-term memory for torchtitan.

`[experimental] custom_import = "titans_plugin"` registers the "titans" model with
torchtitan (when torchtitan is installed); the model code itself is importable without it:

    titans_plugin.memory   NeuralMemory (the test-time-trained deep memory)
    titans_plugin.blocks   MAC, MAG, MAL, LMM and attention blocks
    titans_plugin.model    TitansTransformer (a hybrid stack from a layer spec)
    titans_plugin.hybrid   build hybrids from llama3 configs, swap layers in place
    titans_plugin.kernels  the memory scan: per-token reference, chunked PyTorch, Triton
"""

__version__ = "0.1.0"


def _register_with_torchtitan() -> None:
    try:
        import torchtitan  # noqa: F401
    except ImportError:
        return
    from .adapter import register

    register()


_register_with_torchtitan()
