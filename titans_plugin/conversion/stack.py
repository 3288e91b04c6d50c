"""The torchtitan installed here, and its adapter.

The conversion tools (and evaluations) work on whichever torchtitan a team runs: they ask
this module for the installed version's adapter instead of importing one. Importing an
adapter registers the plugin with that torchtitan (its entry module)."""

import importlib
from importlib import metadata

ADAPTERS = {(0, 2): "titans_plugin.torchtitan022", (0, 3): "titans_plugin.torchtitan030"}


def torchtitan_release() -> tuple[int, int] | None:
    """(major, minor) of the installed torchtitan, None when there is none."""
    try:
        version = metadata.version("torchtitan")
    except metadata.PackageNotFoundError:
        return None
    major, minor = (int(x) for x in version.split(".")[:2])
    return major, minor


def adapter(part: str = ""):
    """The installed torchtitan's adapter module (or its submodule `part`)."""
    release = torchtitan_release()
    if release not in ADAPTERS:
        supported = ", ".join(f"{a}.{b}" for a, b in ADAPTERS)
        raise RuntimeError(f"titans_plugin supports torchtitan {supported}; installed: {release}")
    return importlib.import_module(ADAPTERS[release] + (f".{part}" if part else ""))
