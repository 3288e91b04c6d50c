"""Titans neural long-term memory for torchtitan.

Importing this package imports neither torchtitan nor anything with a side effect:

    titans_plugin.memory            NeuralMemory (the test-time-trained deep memory)
    titans_plugin.blocks            MAC, MAG, MAL, LMM and attention blocks
    titans_plugin.model             TitansTransformer (a hybrid stack from a layer spec)
    titans_plugin.config            TitansConfig: the [titans] section, each field declared once
    titans_plugin.context_parallel  sequences sharded over ranks
    titans_plugin.conversion        hybrids from llama3 sizes or models, TOML conversion, upcycling
    titans_plugin.kernels           the memory scan: per-token reference, chunked PyTorch, Triton

torchtitan meets the plugin only through an explicit entry module, one per version:

    torchtitan 0.2.2  [experimental] custom_import = "titans_plugin.torchtitan022"
    torchtitan 0.3.0  --module titans_plugin --config titans_debug_mac  (titans_plugin/config_registry.py)
"""

__version__ = "0.1.0"
__all__ = ["__version__", "hybridize"]


def __getattr__(name: str):
    """`from titans_plugin import hybridize` (torchtitan 0.3.0), imported on first use: importing
    the package itself stays free of torchtitan."""
    if name == "hybridize":
        from titans_plugin.torchtitan030.configs import hybridize

        return hybridize
    raise AttributeError(f"module 'titans_plugin' has no attribute {name!r}")
