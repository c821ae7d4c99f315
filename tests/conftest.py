"""Fixtures shared by Ratchet's own tests (the test kit's fixtures come from ``bot.testing.pytest_plugin``), and the
rule that a test may not skip silently for want of a test dependency."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.testing.tools import in_ci

TESTS_DIR = Path(__file__).resolve().parent
#: Plugins used only by tests (loaded through ``plugin_dirs``).
TEST_PLUGINS = TESTS_DIR / "plugins"

#: Modules this suite needs (the ``dev`` extra of pyproject.toml lists them): a test or module that would be skipped by
#: ``pytest.importorskip`` for want of one fails instead, so that the spec-vector tests cannot vanish unnoticed. Under
#: ``CI=true`` every such skip fails, like a missing tool (see ``bot.testing.tools``).
REQUIRED_MODULES = frozenset({"cryptography"})

_IMPORTORSKIP = re.compile(r"could not import '([^']+)'")


@pytest.fixture
def test_plugins_dir() -> Path:
    """The folder of test-only plugins."""
    return TEST_PLUGINS


def _fail_if_a_dependency_is_missing(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    found = _IMPORTORSKIP.search(reason)
    if found is None:
        return
    module = found.group(1).split(".")[0]
    if module in REQUIRED_MODULES or in_ci():
        report.outcome = "failed"
        report.longrepr = f"{reason} -- a test dependency is missing: pip install -e '.[dev,homeserver]'"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _fail_if_a_dependency_is_missing(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _fail_if_a_dependency_is_missing(outcome.get_result())
