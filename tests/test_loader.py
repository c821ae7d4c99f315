"""Where the loader finds the bundled plugins: ``bot/bundled_plugins`` in an installed wheel, the checkout's
``plugins/`` otherwise (the wheel itself is tested in test_wheel.py), and what a missing plugin's error lists."""

from __future__ import annotations

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
