"""Registers the ``interop`` marker (tests that drive an independent Matrix client, see ``jspeer.py``) and requires
that client: without Node or the peer's npm packages every test here is skipped, or fails under ``CI=true``."""

from __future__ import annotations

import pytest

from bot.testing.tools import require_tool

from .jspeer import INSTALL_COMMAND, js_available


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interop: interop test against an independent client (matrix-js-sdk peer)")


@pytest.fixture(scope="session", autouse=True)
def _js_peer_installed() -> None:
    """Checked once, before the session Synapse starts (autouse fixtures of a scope come first)."""
    require_tool(js_available(), f"node or the matrix-js-sdk peer is not installed; run: {INSTALL_COMMAND}")
