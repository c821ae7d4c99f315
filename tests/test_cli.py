"""The ``ratchet`` command: help on each subcommand, and config errors as one clear line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

GOOD = """\
homeserver: http://127.0.0.1:1
user_id: "@bot:localhost"
password: secret-password
pickle_key: a-long-enough-pickle-key
plugins:
  ping: {}
"""


def ratchet(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize("sub", [[], ["run"], ["check-config"], ["demo"], ["dev"]])
def test_help(sub):
    res = ratchet(*sub, "--help")
    assert res.returncode == 0
    assert "usage: ratchet" in res.stdout


def test_check_config_ok(tmp_path):
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(GOOD)
    res = ratchet("check-config", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


@pytest.mark.parametrize(
    "text, needle",
    [
        (GOOD.replace('user_id: "@bot:localhost"\n', ""), "user_id"),  # missing required key
        (GOOD + "homserver: x\n", "homserver"),  # unknown key
        (GOOD.replace('"@bot:localhost"', "123"), "user_id"),  # wrong type
        (GOOD + "command_prefix: ''\n", "command_prefix"),  # invalid value
        (GOOD + "plugins: [ping]\n", "plugins"),  # wrong type (and a duplicate key)
        ("homeserver: [unclosed\n", "line"),  # YAML syntax error
        (GOOD.replace("secret-password", "${RATCHET_TEST_UNSET_VAR}"), "RATCHET_TEST_UNSET_VAR"),
    ],
)
def test_config_errors_exit_2_and_name_the_key(tmp_path, text, needle):
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(text)
    for sub in ("check-config", "run"):
        res = ratchet(sub, "-c", str(cfg))
        assert res.returncode == 2, (sub, res.stdout, res.stderr)
        assert needle in res.stderr
        assert str(cfg) in res.stderr or "bot.yaml" in res.stderr
        assert "Traceback" not in res.stderr
        assert "secret-password" not in res.stderr


def test_unreadable_config_file(tmp_path):
    res = ratchet("check-config", "-c", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2
    assert "missing.yaml" in res.stderr and "Traceback" not in res.stderr


def test_dev_usage_errors_exit_2(tmp_path):
    state = ["--state-dir", str(tmp_path / "state")]
    (tmp_path / "empty").mkdir()
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "__init__.py").write_text("")
    (tmp_path / "plugin" / "dev.yaml").write_text("other: {}\n")
    for args, needle in [
        ([], "PLUGIN_DIR is required"),
        ([str(tmp_path / "missing")], "no such file"),
        ([str(tmp_path / "empty")], "no plugin found"),
        ([str(tmp_path / "plugin")], "'other' is not a plugin"),
    ]:
        res = ratchet("dev", *args, *state)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert needle in res.stderr, (args, res.stderr)
    res = ratchet("dev", "--stop", *state)
    assert res.returncode == 0 and "no dev Synapse is running" in res.stdout
