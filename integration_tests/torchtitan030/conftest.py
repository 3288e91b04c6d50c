"""torchrun tests of the torchtitan 0.3.0 adapter: they run in the 0.3.0 environment only,
and fail loudly (not skip) when collected anywhere else."""

from titans_plugin.conversion.stack import torchtitan_release

assert torchtitan_release() == (0, 3), (
    f"integration_tests/torchtitan030 needs torchtitan 0.3.x, found {torchtitan_release()}"
)
