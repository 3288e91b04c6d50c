"""torchrun tests of the torchtitan 0.2.2 adapter: they run in the 0.2.2 environment only, and fail
loudly (not skip) when collected anywhere else."""

from titans_plugin.conversion.stack import torchtitan_release

assert torchtitan_release() == (0, 2), (
    f"integration_tests/torchtitan022 needs torchtitan 0.2.x, found {torchtitan_release()}"
)
