"""Ratchet's wheel installed in a fresh venv outside the checkout, shared by the tests that need it.

:func:`ratchet_venv` copies the source tree (without .git, .venv, build output), builds it into a wheel and installs
that into a new venv in pytest's temporary folder, with its dependencies from the package index (pip's cache makes
that quick). It is done once per test session: ``tests/test_wheel.py`` (the operator's install) and
``tests/test_plugin_package.py`` (a third-party plugin installed beside it) share the venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
    ".ruff_cache", ".hypothesis", "data", "bench",
)


@dataclass
class InstalledWheel:
    wheel: Path
    venv: Path
    site_packages: Path
    outside: Path  # a working folder outside the checkout
    timings: dict[str, float]

    @property
    def ratchet(self) -> Path:
        return self.venv / "bin" / "ratchet"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120):
        return subprocess.run(
            [str(a) for a in args], cwd=self.outside, env=clean_env(env), capture_output=True, text=True,
            timeout=timeout,
        )


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without the test's own venv or source tree in it."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.pop("RATCHET_PICKLE_KEY", None)
    env.update(extra or {})
    return env


def check(cmd: list[str | Path], cwd: Path, timeout: float = 600) -> str:
    """Run ``cmd`` in the clean environment; fail with its output unless it succeeds. Returns its stdout."""
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{output}"
    return result.stdout


def build_wheel(project: Path, dist: Path, cwd: Path) -> Path:
    """``pip wheel --no-deps`` of the project folder ``project`` into ``dist``; returns the one wheel made."""
    before = set(dist.glob("*.whl"))
    check([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, project], cwd=cwd)
    (wheel,) = set(dist.glob("*.whl")) - before
    return wheel


_installed: InstalledWheel | None = None


def ratchet_venv(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """Ratchet's wheel, built from a copy of the checkout and installed in a fresh venv; made once per session."""
    global _installed
    if _installed is not None:
        return _installed
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT), "the test venv must live outside the checkout"
    timings: dict[str, float] = {}

    started = time.monotonic()
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    dist = base / "dist"
    dist.mkdir()
    wheel = build_wheel(source, dist, cwd=base)
    assert wheel.name.startswith("matrix_ratchet-"), wheel.name
    timings["build"] = time.monotonic() - started

    started = time.monotonic()
    venv = base / "venv"
    check([sys.executable, "-m", "venv", venv], cwd=base)
    # with the PostgreSQL extra, as an operator running on PostgreSQL installs it (matrix-ratchet[postgresql])
    check([venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[postgresql]"], cwd=base)
    timings["install"] = time.monotonic() - started

    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    outside = base / "work"
    outside.mkdir()
    print(f"\nwheel test: build {timings['build']:.1f}s, fresh venv + install {timings['install']:.1f}s")
    _installed = InstalledWheel(wheel, venv, site_packages, outside, timings)
    return _installed
