"""Where the loader finds the bundled plugins: ``bot/bundled_plugins`` in an installed wheel, the checkout's
``plugins/`` otherwise (the wheel itself is tested in test_wheel.py), and what a missing plugin's error lists."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bot.errors import PluginLoadError
from bot.plugin import loader

ROOT = Path(__file__).resolve().parents[1]


def test_checkout_uses_the_plugins_folder():
    assert loader.BUNDLED_DIR == ROOT / "plugins"
    assert set(loader.available_plugins()) >= {"ping", "help", "admin", "reminders", "report", "irc_bridge", "webhooks"}


def test_packaged_folder_wins_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package = tmp_path / "bot"
    monkeypatch.setattr(loader.importlib.resources, "files", lambda name: package)
    assert loader.bundled_dir() == ROOT / "plugins"  # no bot/bundled_plugins: the checkout's folder
    (package / "bundled_plugins").mkdir(parents=True)
    assert loader.bundled_dir() == package / "bundled_plugins"
    monkeypatch.setattr(loader, "CHECKOUT_DIR", tmp_path / "nowhere")
    (package / "bundled_plugins").rmdir()
    assert loader.bundled_dir() == package / "bundled_plugins", "neither exists: errors name the packaged place"


def test_missing_plugin_lists_where_it_looked(tmp_path: Path):
    with pytest.raises(PluginLoadError) as err:
        loader.import_plugin("no_such_plugin", [tmp_path])
    message = str(err.value)
    assert message.startswith("plugin no_such_plugin: not found (looked in ")
    assert str(tmp_path) in message and str(loader.BUNDLED_DIR) in message and "'ratchet.plugins'" in message


def test_a_same_size_edit_within_the_same_second_is_reloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The .pyc of the first import records the source's mtime in whole seconds and its size: an edit that keeps
    both would be served from the cache unless the loader drops it before a reload."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as in production (the suite may run without .pyc)
    package = tmp_path / "samesize"
    (package / "sub").mkdir(parents=True)
    init, helper = package / "__init__.py", package / "sub" / "__init__.py"
    code = "from bot import Plugin\nfrom .sub import WORD\n\n\nclass Same(Plugin):\n    word = WORD\n"
    init.write_text(code)
    helper.write_text("WORD = 'one'\n")
    stamp = (1_700_000_000, 1_700_000_000)
    for path in (init, helper):
        os.utime(path, stamp)
    assert loader.import_plugin("samesize", [tmp_path]).word == "one"
    assert list(package.rglob("*.pyc")), "the first import wrote bytecode"
    helper.write_text("WORD = 'two'\n")  # same size, and the same mtime as the cached bytecode records
    os.utime(helper, stamp)
    assert loader.import_plugin("samesize", [tmp_path]).word == "two"
