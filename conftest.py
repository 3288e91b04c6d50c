"""Marks every torchrun test (integration_tests/) slow: the fast loop, -m "not slow", leaves
them out. Unit tests that are slow mark themselves."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration_tests" in item.path.parts:
            item.add_marker(pytest.mark.slow)
