"""Registers the ``interop`` marker (tests that drive an independent Matrix client, see ``jspeer.py``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interop: interop test against an independent client (matrix-js-sdk peer)")
