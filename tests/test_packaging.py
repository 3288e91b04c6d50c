"""What `pip install` (not editable) ships: every package of the source tree."""

import os
import tomllib

from devtools.paths import REPO


def test_every_package_is_listed_in_pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    listed = set(tool["packages"])
    roots = {name: os.path.join(REPO, path) for name, path in tool["package-dir"].items()}
    roots["titans_plugin"] = os.path.join(REPO, "titans_plugin")
    found = set()
    for name, root in roots.items():
        for folder, _, files in os.walk(root):
            if "__init__.py" in files:
                relative = os.path.relpath(folder, root)
                found.add(name if relative == "." else f"{name}.{relative.replace(os.sep, '.')}")
    assert found - listed == set(), "packages missing from [tool.setuptools] packages"
