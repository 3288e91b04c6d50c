"""torchrun tests of the torchtitan 0.2.2 adapter: they run in the 0.2.2 environment only, and fail
loudly (not skip) when collected anywhere else."""

import pytest

from devtools.debug_run import train_debug_mac
from titans_plugin.conversion.stack import torchtitan_release

assert torchtitan_release() == (0, 2), (
    f"integration_tests/torchtitan022 needs torchtitan 0.2.x, found {torchtitan_release()}"
)


@pytest.fixture(scope="session")
def debug_mac_run(tmp_path_factory):
    """The main job's config trained briefly (devtools/debug_run.py): its dump folder and log."""
    out = tmp_path_factory.mktemp("default_run")
    return out, train_debug_mac(str(out))
