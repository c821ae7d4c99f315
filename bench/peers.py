"""The bots under test: Ratchet, a bare-nio echo bot and echo bots on the peer frameworks.

Each peer gets its own venv under ``bench/.venvs/<name>`` (installed by the benchmark on first use, pinned
versions); an install or start failure is recorded with its reason and the benchmark moves on. Every bot answers
``!ping`` with ``pong`` (Ratchet with its bundled ``ping`` plugin, as a rich reply) and, with ``BENCH_MARK_FILE`` in
its environment, appends the time it handled each ping to that file (Ratchet through ``bench/plugins/benchping``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import BENCH, PLUGINS, ROOT, VENVS, log

BOTS_DIR = BENCH / "bots"
#: The Ratchet variants, and those of them that run with the peers' e2ee settings instead of the shipped defaults.
RATCHETS = ("ratchet", "ratchet-peer", "ratchet-before", "ratchet-mc64")
PEER_SETTINGS = ("ratchet-peer", "ratchet-before")
#: ``ratchet-mc<N>``: Ratchet's defaults with ``max_concurrency: N`` (bench/concurrency.py sweeps N).
MC_PREFIX = "ratchet-mc"


def is_ratchet(name: str) -> bool:
    """One of the Ratchet variants (the fixed ones, or ``ratchet-mc<N>``)."""
    return name in RATCHETS or (name.startswith(MC_PREFIX) and name[len(MC_PREFIX):].isdigit())


def label(name: str) -> str:
    """How a bot is named in the reports."""
    if name in LABELS:
        return LABELS[name]
    if is_ratchet(name):
        return f"Ratchet, defaults but max_concurrency: {name[len(MC_PREFIX):]}"
    return name

#: name -> (pip requirements, extra pip steps, why)
PEER_REQUIREMENTS: dict[str, list[list[str]]] = {
    "niobot": [["nio-bot==1.2.1", "matrix-nio[e2e]"]],
    "smbl": [["simplematrixbotlib==2.13.1", "matrix-nio[e2e]"]],
    "maubot": [["maubot[encryption]==0.6.0", "mautrix==0.21.1"]],
    # opsdroid 0.31 imports pkg_resources, which setuptools 81 no longer ships
    "opsdroid": [["opsdroid[connector-matrix-e2e]==0.31.0", "setuptools<81"]],
}
LABELS = {
    "ratchet": "Ratchet (shipped defaults)",
    "ratchet-peer": "Ratchet, peers' settings (trust: all, no cross-signing, no key backup)",
    "ratchet-before": "Ratchet before issue 8 (peers' settings)",
    "ratchet-mc64": "Ratchet, defaults but max_concurrency: 64",
    "nio": "bare nio 0.26",
    "niobot": "nio-bot 1.2.1",
    "smbl": "simplematrixbotlib 2.13.1",
    "maubot": "maubot 0.6.0 (mautrix 0.21.1)",
    "opsdroid": "opsdroid 0.31.0",
}


def base_python() -> str:
    """The interpreter the project venv was made from (peers' venvs use the same Python)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(name: str) -> tuple[Path | None, str | None]:
    """Create/upgrade the venv of peer ``name``; returns (python path, None) or (None, why it failed)."""
    steps = PEER_REQUIREMENTS[name]
    venv = VENVS / name
    stamp = venv / ".bench-installed"
    wanted = json.dumps(steps)
    python = venv / "bin" / "python"
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python, None
    VENVS.mkdir(parents=True, exist_ok=True)
    logfile = VENVS / f"{name}.install.log"
    log(f"installing {name} into {venv} (log: {logfile})")
    with open(logfile, "w") as out:
        if not python.exists():
            cmd = [base_python(), "-m", "venv", str(venv)]
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
            if rc:
                return None, f"python -m venv failed (exit {rc}), see {logfile}"
        for reqs in steps:
            rc = subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
            ).returncode
            if rc:
                tail = [line for line in logfile.read_text().splitlines() if not line.startswith("WARNING: Location")]
                return None, f"pip install {' '.join(reqs)} failed (exit {rc}): {' | '.join(tail[-3:])}"
    stamp.write_text(wanted)
    return python, None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def login(homeserver: str, user_id: str, password: str, device_name: str) -> dict[str, Any]:
    """Password login over HTTP; returns the login response (access_token, device_id)."""
    body = json.dumps(
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "initial_device_display_name": device_name,
        }
    ).encode()
    req = urllib.request.Request(
        f"{homeserver}/_matrix/client/v3/login", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@dataclass
class BotRun:
    """A bot process under test."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    mark_file: Path | None = None
    started_at: float = field(default_factory=time.time)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class BotSetup:
    """Everything needed to (re)start one bot: command line, environment, working directory."""

    name: str
    args: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def start(self, log_path: Path, mark_file: Path | None = None) -> BotRun:
        env = dict(os.environ)
        env.pop("RATCHET_PICKLE_KEY", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        if mark_file is not None:
            env["BENCH_MARK_FILE"] = str(mark_file)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return BotRun(self.name, proc, log_path, mark_file)


def ratchet_config(
    path: Path,
    *,
    homeserver: str,
    user_id: str,
    password: str,
    data_dir: Path,
    plugins: dict[str, Any],
    peer_settings: bool = False,
    **extra: Any,
) -> Path:
    """Ratchet's config: its shipped ``e2ee`` defaults (tofu trust, cross-signing, key backup), or with
    ``peer_settings`` what bare nio and the peers do (every device trusted, no cross-signing, no key backup)."""
    data = {
        "homeserver": homeserver,
        "user_id": user_id,
        "password": password,
        "data_dir": str(data_dir),
        "pickle_key": "bench-ratchet-pickle-key-0123456789",
        "invites": {"accept_from": ["@*:localhost"]},
        "plugins": plugins,
        "plugin_dirs": [str(PLUGINS)],
        "log_level": "WARNING",
    }
    if peer_settings:  # what bare nio and the peers do not do either (see docs/performance.md)
        data["e2ee"] = {"trust": "all", "cross_signing": False, "key_backup": False}
    data.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prepare_bot(
    name: str,
    work: Path,
    *,
    homeserver: str,
    user_id: str,
    password: str,
    rooms: list[str],
    plugin: str = "ping",
) -> BotSetup:
    """Write the bot's config into ``work`` and return how to start it (raises RuntimeError if it cannot)."""
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    if is_ratchet(name):
        extra: dict[str, Any] = {"max_concurrency": int(name[len(MC_PREFIX):])} if name.startswith(MC_PREFIX) else {}
        cfg = ratchet_config(
            work / "config.yaml",
            homeserver=homeserver,
            user_id=user_id,
            password=password,
            data_dir=work / "data",
            plugins={plugin: {}},
            peer_settings=name in PEER_SETTINGS,
            **extra,
        )
        entry = [str(BOTS_DIR / "ratchet_before.py")] if name == "ratchet-before" else ["-m", "bot"]
        return BotSetup(name, [sys.executable, *entry, "run", "-c", str(cfg)], ROOT)
    if name == "nio":
        return BotSetup(
            name, [sys.executable, str(BOTS_DIR / "nio_echo.py"), homeserver, user_id, password, str(store)], work
        )
    python, why = ensure_venv(name)
    if python is None:
        raise RuntimeError(why)
    if name == "niobot":
        return BotSetup(name, [str(python), str(BOTS_DIR / "niobot_echo.py"), homeserver, user_id, password,
                               str(store)], work)
    if name == "smbl":
        return BotSetup(name, [str(python), str(BOTS_DIR / "smbl_echo.py"), homeserver, user_id, password,
                               str(store)], work)
    if name == "maubot":
        creds = login(homeserver, user_id, password, "maubot-echo")
        config = {
            "user": {
                "credentials": {
                    "id": user_id,
                    "homeserver": homeserver,
                    "access_token": creds["access_token"],
                    "device_id": creds["device_id"],
                },
                "sync": True,
                "appservice": False,
                "autojoin": True,
                "displayname": "disable",
                "avatar_url": "disable",
                "ignore_initial_sync": True,
                "ignore_first_sync": False,
            },
            "server": {"hostname": "127.0.0.1", "port": free_port(), "base_path": "/",
                       "public_url": "http://127.0.0.1"},
            "database": f"sqlite:{work / 'bot.db'}",
            "crypto_db_pickle_key": "bench.maubot.crypto",
            "database_opts": {"min_size": 1, "max_size": 10},
            "plugin_config": {},
            "logging": {
                "version": 1,
                "formatters": {"plain": {"format": "[%(asctime)s] [%(levelname)s@%(name)s] %(message)s"}},
                "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
                "root": {"level": "WARNING", "handlers": ["console"]},
            },
        }
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return BotSetup(
            name,
            [str(python), "-m", "maubot.standalone", "-c", str(work / "config.yaml"), "-m",
             str(BOTS_DIR / "maubot_echo" / "maubot.yaml")],
            BOTS_DIR / "maubot_echo",
        )
    if name == "opsdroid":
        config = {
            "logging": {"level": "warning", "console": True},
            "web": {"host": "127.0.0.1", "port": free_port()},
            "connectors": {
                "matrix": {
                    "mxid": user_id,
                    "password": password,
                    "homeserver": homeserver,
                    "rooms": {("main" if i == 0 else f"r{i}"): room for i, room in enumerate(rooms)},
                    "enable_encryption": True,
                    "store_path": str(store),
                    "device_name": "opsdroid-echo",
                }
            },
            "skills": {"echo": {"path": str(BOTS_DIR / "opsdroid_echo")}},
        }
        store.mkdir(parents=True, exist_ok=True)
        (work / "configuration.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        opsdroid = python.parent / "opsdroid"
        env = {"HOME": str(work), "XDG_DATA_HOME": str(work / "xdg-data"), "XDG_CONFIG_HOME": str(work / "xdg")}
        return BotSetup(name, [str(opsdroid), "start", "-f", str(work / "configuration.yaml")], work, env)
    raise ValueError(name)
