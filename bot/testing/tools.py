"""Optional tools of the test suite (Node for the interop peer, miniircd, Synapse...): skip without them, except in CI.

A test that needs a tool calls :func:`require_tool` first. On a developer's machine a missing tool skips the test (with
the install hint); under CI (``CI=true`` in the environment, as GitHub Actions, GitLab CI and most others set) it fails
the test, so that a CI image that lost a tool cannot turn part of the suite into silent skips.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["in_ci", "require_tool"]


def in_ci() -> bool:
    """True when the ``CI`` environment variable says so (``true``, ``1`` or ``yes``, any case)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_tool(available: bool, missing: str) -> None:
    """Skip the calling test (or fixture) when ``available`` is false; fail it instead under CI.

    ``missing`` says what is missing and how to install it, e.g. ``"miniircd is not installed (pip install
    miniircd)"``.
    """
    if available:
        return
    if in_ci():
        pytest.fail(f"{missing}; CI=true, so a missing tool is a failure, not a skip", pytrace=False)
    pytest.skip(missing)
