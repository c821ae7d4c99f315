"""``ratchet dev PLUGIN_DIR`` as a developer uses it (issue 15, the development loop): it prints login details a member
can use, the bot answers in the encrypted room, an edit of the plugin is reloaded, a syntax error is reported while
the previous version keeps answering, SIGTERM exits 0, and a second run reuses the same Synapse, bot device and room.
The dev Synapse outlives the command by design, so the test stops it (``ratchet dev --stop``) in any case."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.cli.dev import stop_dev_synapse
from bot.testing.member import Member
from bot.testing.tools import require_tool

pytestmark = pytest.mark.e2e

PLUGIN = '''
from bot import Context, Plugin, command

VERSION = "{version}"


class DevEcho(Plugin):
    """A plugin under development."""

    @command("hi", help="Say hi with the version")
    async def hi(self, ctx: Context) -> None:
        await ctx.reply(f"hi from {{VERSION}}")
'''


class DevProcess:
    """``python -m bot dev`` in a subprocess, its stdout and stderr in files."""

    def __init__(self, tmp: Path, run: int, *args: str) -> None:
        self.out = tmp / f"dev{run}.out"
        self.err = tmp / f"dev{run}.err"
        env = dict(os.environ)
        env.pop("RATCHET_PICKLE_KEY", None)
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "dev", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def diagnostics(self) -> str:
        return f"stdout:\n{self.text()[-3000:]}\nstderr:\n{self.err.read_text(errors='replace')[-3000:]}"

    async def wait_for(self, needle: str, timeout: float = 60, occurrences: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < occurrences:
            if self.proc.poll() is not None:
                raise AssertionError(f"ratchet dev exited with {self.proc.returncode}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not printed within {timeout}s\n{self.diagnostics()}")
            await asyncio.sleep(0.1)
        return self.text()

    def details(self) -> dict[str, str]:
        text = self.text()
        found = {}
        for key in ("homeserver", "user", "password", "room", "bot device"):
            match = re.search(rf"^\s+{key}:\s+(\S+)", text, re.MULTILINE)
            assert match, f"no {key!r} in the output\n{self.diagnostics()}"
            found[key] = match.group(1)
        match = re.search(r"the dev Synapse at \S+ \(pid (\d+)", text)
        assert match, self.diagnostics()
        found["pid"] = match.group(1)
        return found

    async def terminate(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"ratchet dev did not exit within {timeout}s of SIGTERM\n{self.diagnostics()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def ask(member: Member, room_id: str, bot_id: str, text: str) -> str:
    event_id = await member.send(room_id, text)
    reply = await member.expect_reply(room_id, event_id, sender=bot_id, timeout=30)
    assert getattr(reply, "decrypted", False), "the bot's answer was not encrypted"
    return reply.body


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped yet) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


async def test_dev_loop_reloads_reports_errors_and_reuses_the_synapse(tmp_path: Path) -> None:
    require_tool(
        importlib.util.find_spec("synapse") is not None,
        "matrix-synapse is not installed (pip install 'matrix-ratchet[homeserver]')",
    )
    plugin = tmp_path / "work" / "devecho"
    plugin.mkdir(parents=True)
    source = plugin / "__init__.py"
    source.write_text(PLUGIN.format(version="v1"))
    state = tmp_path / "state"
    args = (str(plugin), "--state-dir", str(state))
    runs: list[DevProcess] = []
    member: Member | None = None
    try:
        first = DevProcess(tmp_path, 1, *args)
        runs.append(first)
        await first.wait_for("ready in")
        assert "started the dev Synapse" in first.text()
        assert "loaded devecho (commands: !hi)" in first.text()
        details = first.details()
        assert details["user"] == "@you:localhost"
        assert details["homeserver"].startswith("http://127.0.0.1:")
        assert stat.S_IMODE((state / "dev.json").stat().st_mode) == 0o600
        bot_id = "@bot:localhost"
        room_id = details["room"]

        # A developer's client, logged in with what was printed (the room is there already, joined).
        member = Member(details["homeserver"], details["user"], details["password"], tmp_path / "member")
        await member.start()
        assert await ask(member, room_id, bot_id, "!hi") == "hi from v1"

        # An edit is picked up and answered by the new version.
        source.write_text(PLUGIN.format(version="v2-edited"))
        await first.wait_for("reloaded devecho")
        assert await ask(member, room_id, bot_id, "!hi") == "hi from v2-edited"

        # A syntax error is reported; the previous version keeps answering.
        source.write_text(PLUGIN.format(version="v3") + "\ndef broken(:\n")
        text = await first.wait_for("reload of devecho failed")
        assert "SyntaxError" in text and "the previous version keeps running" in text
        assert await ask(member, room_id, bot_id, "!hi") == "hi from v2-edited"

        started = time.monotonic()
        assert await first.terminate() == 0, first.diagnostics()
        assert time.monotonic() - started < 10
        assert "the bot stopped" in first.text()
        assert _alive(int(details["pid"])), "the dev Synapse should outlive `ratchet dev`"

        # A second run reuses the Synapse, the bot's device and the room, and loads the plugin as it is now.
        source.write_text(PLUGIN.format(version="v4"))
        second = DevProcess(tmp_path, 2, *args)
        runs.append(second)
        await second.wait_for("ready in")
        assert "reusing the dev Synapse" in second.text()
        again = second.details()
        for key in ("homeserver", "pid", "password", "room", "bot device"):
            assert again[key] == details[key], key
        assert await ask(member, room_id, bot_id, "!hi") == "hi from v4"
        assert await second.terminate() == 0, second.diagnostics()

        stopped = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot", "dev", "--stop", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped the dev Synapse (pid {details['pid']})" in stopped.stdout
        assert not _alive(int(details["pid"]))
    finally:
        if member is not None:
            with contextlib.suppress(Exception):
                await member.close()
        for run in runs:
            run.kill()
        stop_dev_synapse(state)  # never leave a dev Synapse behind
