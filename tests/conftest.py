"""Fixtures shared by Ratchet's own tests (the test kit's fixtures come from ``bot.testing.pytest_plugin``)."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
#: Plugins used only by tests (loaded through ``plugin_dirs``).
TEST_PLUGINS = TESTS_DIR / "plugins"


@pytest.fixture
def test_plugins_dir() -> Path:
    """The folder of test-only plugins."""
    return TEST_PLUGINS
