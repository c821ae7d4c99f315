"""Issue 14, part 1: the wheel an operator installs works on its own, outside the checkout.

The project's source tree is copied (without .git, .venv, build output) and built into a wheel; a fresh venv in the
test's temporary folder (outside the checkout) gets the wheel, its dependencies from the package index (pip's cache
and find-links make that quick); then, from a folder outside the checkout: ``ratchet check-config`` with every bundled
plugin, the README's ``config.example.yaml``, the exit codes of a bad config, no top-level ``plugins`` package, and an
encrypted ``!ping`` answered by ``<venv>/bin/ratchet run`` against the test Synapse, stopped by SIGTERM with exit 0.

Nothing here is skipped: without network access to the package index the install fails, and so does the test.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from wheel_kit import ROOT, InstalledWheel, clean_env, ratchet_venv

pytestmark = pytest.mark.e2e

BUNDLED = ["ping", "help", "admin", "reminders", "report", "irc_bridge", "webhooks"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """Ratchet's wheel in a fresh venv (see ``tests/wheel_kit.py``; built once per session)."""
    return ratchet_venv(tmp_path_factory)


def test_wheel_ships_the_bundled_plugins_inside_bot(installed: InstalledWheel):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"bot"}, "one top-level package: bot"
    for path in (ROOT / "plugins").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            shipped = "bot/bundled_plugins/" + path.relative_to(ROOT / "plugins").as_posix()
            assert shipped in names, f"{path.relative_to(ROOT)} is not in the wheel (as {shipped})"
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
    assert installed.wheel.name.startswith("matrix_ratchet-")


def test_installed_wheel_has_no_top_level_plugins_package(installed: InstalledWheel):
    assert not (installed.site_packages / "plugins").exists()
    assert (installed.site_packages / "bot" / "bundled_plugins" / "ping" / "__init__.py").is_file()
    result = installed.run(installed.python, "-c", "import plugins")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, result.stderr
    code = "import bot, bot.plugin.loader as l, importlib.metadata as m; print(bot.__file__); print(l.BUNDLED_DIR); "
    code += "print(m.version('matrix-ratchet'))"
    result = installed.run(installed.python, "-c", code)
    assert result.returncode == 0, result.stderr
    bot_file, bundled, version = result.stdout.split()
    assert Path(bot_file).is_relative_to(installed.site_packages), "bot must come from the wheel, not the checkout"
    assert Path(bundled) == installed.site_packages / "bot" / "bundled_plugins"
    result = installed.run(installed.python, "-c", "import bot; print(bot.__version__)")
    assert result.stdout.strip() == version


def _config(path: Path, plugins: list[str], **extra) -> Path:
    data = {
        "homeserver": "http://127.0.0.1:9",
        "user_id": "@bot:localhost",
        "password": "${BOT_PASSWORD}",
        "pickle_key": "${RATCHET_PICKLE_KEY}",
        "data_dir": "./data",
        "plugins": {name: PLUGIN_OPTIONS.get(name, {}) for name in plugins},
        **extra,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


#: Options a bundled plugin cannot do without (an IRC bridge without a network is a config error).
PLUGIN_OPTIONS = {"irc_bridge": {"networks": {"libera": {"host": "irc.libera.chat"}}}}

SECRETS = {"BOT_PASSWORD": "secret-password", "RATCHET_PICKLE_KEY": "a-pickle-key-of-24-chars"}


def test_check_config_with_every_bundled_plugin(installed: InstalledWheel):
    config = _config(installed.outside / "config.yaml", BUNDLED)
    result = installed.run(installed.ratchet, "check-config", "-c", "config.yaml", env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"config.yaml: OK (@bot:localhost on http://127.0.0.1:9, plugins: {', '.join(BUNDLED)})"
    )
    assert config.exists() and not (installed.outside / "data").exists(), "check-config must not create data_dir"

    # The README's path: the example config, secrets from the environment.
    shutil.copy(ROOT / "config.example.yaml", installed.outside / "example.yaml")
    result = installed.run(installed.ratchet, "check-config", "-c", "example.yaml", env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("example.yaml: OK (@ratchet:example.org on https://matrix.example.org")


def test_bad_config_exits_2_naming_the_key(installed: InstalledWheel):
    _config(installed.outside / "bad.yaml", ["ping"], max_concurrency=0)
    for command in ("check-config", "run"):
        result = installed.run(installed.ratchet, command, "-c", "bad.yaml", env=SECRETS)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "max_concurrency" in result.stderr and "at least 1" in result.stderr

    _config(installed.outside / "missing.yaml", ["ping", "no_such_plugin"])
    result = installed.run(installed.ratchet, "run", "-c", "missing.yaml", env=SECRETS)
    assert result.returncode == 2, result.stderr
    assert "plugin no_such_plugin: not found" in result.stderr
    assert str(installed.site_packages / "bot" / "bundled_plugins") in result.stderr, "where it looked"

    result = installed.run(installed.ratchet, "run", "-c", "missing.yaml")  # no pickle key, no password
    assert result.returncode == 2 and "BOT_PASSWORD" in result.stderr, result.stderr


@pytest.mark.both_engines  # the [postgresql] extra, installed as operators install it
async def test_installed_bot_answers_ping_in_an_encrypted_room(installed: InstalledWheel, synapse, bot_in_room):
    env = clean_env()
    t = await bot_in_room(
        synapse,
        plugins={"ping": {}, "help": {}},
        command=[str(installed.ratchet)],
        cwd=installed.outside,
        env={"PATH": env["PATH"], "PYTHONPATH": ""},
    )
    reply = await t.ask("!ping")
    assert reply.decrypted, "the reply must be encrypted"
    assert reply.body.startswith("pong")
    help_reply = await t.ask("!help")
    assert help_reply.decrypted and "ping" in help_reply.body
    assert await t.proc.stop() == 0, t.proc.log_text()[-3000:]
    # a restart, as operators restart: the room comes from the saved state, and the room is still known as encrypted
    await t.proc.run_ready()
    again = await t.ask("!ping")
    assert again.decrypted and again.body.startswith("pong")
    assert "loaded 1 rooms as the last run left them" in t.proc.log_text()
    assert await t.proc.stop() == 0, t.proc.log_text()[-3000:]
    assert "Traceback" not in t.proc.log_text()
