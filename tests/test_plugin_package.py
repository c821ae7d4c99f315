"""Issue 15: a third-party plugin packaged on its own (``examples/packaged-plugin``) works installed beside Ratchet.

The example is built into a wheel (``pip wheel --no-deps``) and installed, with its own dependency from the package
index, into the fresh venv that holds Ratchet's own wheel (``tests/wheel_kit.py``, shared with ``test_wheel.py`` and
built once per session; the plugin is uninstalled again afterwards). Then, from a folder outside the checkout:
``ratchet check-config`` lists it and checks its options (a ``__post_init__`` refusal is a config error with its
line, exit 2), and ``<venv>/bin/ratchet run`` answers its command in an encrypted room.
"""

from __future__ import annotations

import shutil

import pytest
import yaml
from wheel_kit import ROOT, InstalledWheel, build_wheel, check, clean_env, ratchet_venv

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "packaged-plugin"
SECRETS = {"BOT_PASSWORD": "secret-password", "RATCHET_PICKLE_KEY": "a-pickle-key-of-24-chars"}


@pytest.fixture(scope="module")
def with_karma(tmp_path_factory: pytest.TempPathFactory):
    """Ratchet's venv with the example plugin's wheel installed (removed again after this module)."""
    installed = ratchet_venv(tmp_path_factory)
    base = tmp_path_factory.mktemp("plugin-package")
    source = base / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    dist = base / "dist"
    dist.mkdir()
    wheel = build_wheel(source, dist, cwd=base)
    assert wheel.name.startswith("ratchet_karma-1.0.0-"), wheel.name
    probe = [installed.python, "-c", "import sortedcontainers"]
    assert installed.run(*probe).returncode != 0, "the plugin's dependency must come with the plugin, not Ratchet"
    check([installed.python, "-m", "pip", "install", "-q", wheel], cwd=base)
    try:
        yield installed
    finally:
        check([installed.python, "-m", "pip", "uninstall", "-y", "-q", "ratchet-karma", "sortedcontainers"], cwd=base)


def _config(installed: InstalledWheel, name: str, plugins: dict) -> str:
    data = {
        "homeserver": "http://127.0.0.1:9",
        "user_id": "@bot:localhost",
        "password": "${BOT_PASSWORD}",
        "pickle_key": "${RATCHET_PICKLE_KEY}",
        "plugins": plugins,
    }
    (installed.outside / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return name


def test_installed_plugin_is_listed_and_its_options_checked(with_karma: InstalledWheel):
    installed = with_karma
    code = "import ratchet_karma, sortedcontainers; print(ratchet_karma.__file__)"
    result = installed.run(installed.python, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(installed.site_packages)), "the plugin must come from its wheel"

    config = _config(installed, "karma.yaml", {"ping": {}, "karma": {"max_top": 5}})
    result = installed.run(installed.ratchet, "check-config", "-c", config, env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{config}: OK (@bot:localhost on http://127.0.0.1:9, plugins: ping, karma)"

    # Its own check (__post_init__) is a config error like any other: the file, the line, the option; exit 2.
    config = _config(installed, "bad-karma.yaml", {"karma": {"max_top": 0}})
    lines = (installed.outside / config).read_text().splitlines()
    line = lines.index("  karma:") + 1
    result = installed.run(installed.ratchet, "check-config", "-c", config, env=SECRETS)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{config}:{line}: plugins.karma: max_top must be at least 1" in result.stderr, result.stderr


async def test_installed_plugin_answers_in_an_encrypted_room(with_karma: InstalledWheel, synapse, bot_in_room):
    installed = with_karma
    env = clean_env()
    t = await bot_in_room(
        synapse,
        plugins={"karma": {"max_top": 2}},
        command=[str(installed.ratchet)],
        cwd=installed.outside,
        env={"PATH": env["PATH"], "PYTHONPATH": ""},
    )
    first = await t.ask("python++")
    assert first.decrypted, "the reply must be encrypted"
    assert first.body.endswith("python now has 1 point"), first.body
    assert (await t.ask("rust++")).body.endswith("rust now has 1 point")
    assert (await t.ask("python++")).body.endswith("python now has 2 points")
    assert (await t.ask("zig++")).body.endswith("zig now has 1 point")
    top = await t.ask("!karma top 10")
    assert top.decrypted and top.body.endswith("1. python (2)\n2. rust (1)"), top.body  # max_top: 2
    assert (await t.ask("!karma Python")).body.endswith("python: 2")
    assert await t.proc.stop() == 0, t.proc.log_text()[-3000:]
    log = t.proc.log_text()
    assert "Traceback" not in log
    assert "plugin karma loaded" in log, log[-3000:]
