"""Running a Ratchet bot from tests: a config file writer, an in-process bot and a bot in its own process.

The in-process :class:`InProcessBot` is the fast default for plugin tests. :class:`BotProcess` runs the real
``ratchet run`` command in a subprocess, for what only a process shows: exit codes, signals, ``kill -9`` and the log
an operator would read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from bot.testing.synapse import RegisteredUser, SynapseServer

__all__ = ["BotProcess", "InProcessBot", "write_bot_config"]


def write_bot_config(
    path: Path,
    *,
    server: SynapseServer,
    user: RegisteredUser,
    data_dir: Path,
    plugins: dict[str, dict[str, Any] | None] | None = None,
    pickle_key: str | None = None,
    **extra: Any,
) -> Path:
    """Write a bot config for ``user`` on ``server`` to ``path`` and return it.

    Invites are accepted from everyone on the test server; ``extra`` keys go into the config as they are.
    """
    data: dict[str, Any] = {
        "homeserver": server.url,
        "user_id": user.user_id,
        "password": user.password,
        "data_dir": str(data_dir),
        "pickle_key": pickle_key or secrets.token_urlsafe(24),
        "invites": {"accept_from": [f"@*:{server.server_name}"]},
        "plugins": plugins if plugins is not None else {"ping": {}},
    }
    data.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class InProcessBot:
    """A :class:`bot.runtime.runtime.Runtime` running as a task in the test's event loop."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.runtime = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60) -> InProcessBot:
        """Start the bot and wait until its first sync is handled."""
        from bot.config import load_config
        from bot.runtime.runtime import Runtime

        self.runtime = await Runtime.open(load_config(self.config_path))
        self._task = asyncio.create_task(self.runtime.run(install_signal_handlers=False))
        ready = asyncio.ensure_future(self.runtime.ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # raises the start-up error
            raise RuntimeError("the bot stopped during start-up")
        if ready not in done:
            ready.cancel()
            raise TimeoutError(f"the bot was not ready within {timeout}s")
        return self

    @property
    def device_id(self) -> str:
        """The running bot's device id."""
        assert self.runtime and self.runtime.client
        return self.runtime.client.device_id

    async def stop(self, timeout: float = 15) -> None:
        """Ask the bot to stop and wait for a clean shutdown."""
        if self._task is None:
            return
        self.runtime.request_stop()
        await asyncio.wait_for(self._task, timeout)
        self._task = None


class BotProcess:
    """``python -m bot run -c CONFIG`` in a subprocess, its log captured to a file.

    ``command`` replaces ``python -m bot`` (e.g. ``["/path/to/venv/bin/ratchet"]`` to run an installed console
    script); ``cwd`` is the process's working directory (default: the test's); ``env`` adds environment variables.
    """

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        *,
        extra_args: tuple[str, ...] = (),
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.extra_args = extra_args
        self.command = tuple(command) if command is not None else (sys.executable, "-m", "bot")
        self.cwd = cwd
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._count_starts = 0

    def start(self) -> BotProcess:
        """Start the process (appending to the log file)."""
        env = dict(os.environ)
        env.pop("RATCHET_PICKLE_KEY", None)
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, "run", "-c", str(self.config_path), *self.extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
            )
        return self

    def log_text(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_for_log(self, needle: str, timeout: float = 60, *, occurrences: int = 1) -> None:
        """Wait until ``needle`` appears ``occurrences`` times in the log (fails early if the process died)."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(needle) < occurrences:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bot exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in the bot's log after {timeout}s:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.1)

    async def run_ready(self, timeout: float = 60) -> BotProcess:
        """Start and wait until the first sync of this start is handled (the log says ``synced;``)."""
        self._count_starts += 1
        self.start()
        await self.wait_for_log("synced;", timeout, occurrences=self._count_starts)
        return self

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code (fails if it took longer than ``timeout``)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError(f"bot did not exit within {timeout}s of signal {sig}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
