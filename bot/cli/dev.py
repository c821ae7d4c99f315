"""``ratchet dev PLUGIN_DIR``: try a plugin by hand against a local homeserver, reloading it when its files change.

A per-user state directory (``$XDG_STATE_HOME/ratchet/dev``, else ``~/.local/state/ratchet/dev``; ``--state-dir``)
keeps everything between runs:

- ``synapse/``: a Synapse on 127.0.0.1 (SQLite), started on the first run and left running for the next one
  (``synapse.pid``; ``ratchet dev --stop`` or ``--stop-synapse`` stops it);
- ``dev.json`` (0600): the passwords of ``@bot:localhost`` and ``@you:localhost``, the bot's pickle key and the
  encrypted room the two share, generated once;
- ``bot-data/``: the bot's data_dir, so the bot keeps one device (and its plugins' storage) across runs;
- ``bot.yaml`` (0600): the bot config written for this run (the plugins found in PLUGIN_DIR and their options).

The bot runs in this process. Its plugin files are polled every half second; a change reloads the plugin the way
``!plugins reload`` does (a version that fails to load leaves the previous one running).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import shutil
import signal
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DevError", "default_state_dir", "find_plugins", "run_dev", "stop_dev_synapse"]

BOT_LOCALPART = "bot"
MEMBER_LOCALPART = "you"
#: The options file looked for in PLUGIN_DIR (the ``plugins:`` section of a config: plugin name -> options).
OPTIONS_FILE = "dev.yaml"
#: How often the plugin files are checked for changes, in seconds.
POLL_INTERVAL = 0.5
#: Files and folders never watched.
_IGNORED_DIRS = {"__pycache__", "tests", "node_modules"}
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".swx", ".tmp", "~", ".db", ".db-journal", ".db-wal", ".db-shm")

EXIT_USAGE = 2
EXIT_FAILED = 1


class DevError(Exception):
    """A problem ``ratchet dev`` reports in one line (exit code ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _say(text: str = "") -> None:
    print(text, flush=True)


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/ratchet/dev``, else ``~/.local/state/ratchet/dev``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ratchet" / "dev"


# -- the plugins under development ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginSet:
    """What ``PLUGIN_DIR`` holds: plugin names, the folder to load them from, and what to watch."""

    names: tuple[str, ...]
    plugin_dir: Path  # goes into plugin_dirs
    watched: Path  # a plugin package, a plugin module, or a folder of plugins
    options_file: Path | None

    def owner(self, path: Path) -> str | None:
        """The plugin a changed file belongs to (None: all of them)."""
        if len(self.names) == 1:
            return self.names[0]
        try:
            first = path.relative_to(self.watched).parts[0]
        except (ValueError, IndexError):
            return None
        name = first.removesuffix(".py")
        return name if name in self.names else None


def _is_plugin_name(name: str) -> bool:
    return (
        not name.startswith(("_", ".")) and name not in ("tests", "conftest", "setup") and not name.startswith("test_")
    )


def find_plugins(path: Path, options: Path | None = None) -> PluginSet:
    """The plugin(s) in ``path``: a plugin package (a folder with ``__init__.py``), a plugin module (``name.py``) or a
    folder of plugins. Raises :class:`DevError` (usage) if there is none."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise DevError(f"{path}: no such file or folder", EXIT_USAGE)
    if path.is_file():
        if path.suffix != ".py":
            raise DevError(f"{path}: not a plugin (a .py module, a package folder or a folder of plugins)", EXIT_USAGE)
        names: tuple[str, ...] = (path.stem,)
        plugin_dir = path.parent
        default_options = path.parent / OPTIONS_FILE
    elif (path / "__init__.py").is_file():
        names = (path.name,)
        plugin_dir = path.parent
        default_options = path / OPTIONS_FILE
    else:
        found = []
        for entry in sorted(path.iterdir()):
            name = entry.stem if entry.suffix == ".py" else entry.name
            if not _is_plugin_name(name) or (entry.is_dir() and not (entry / "__init__.py").is_file()):
                continue
            if entry.is_dir() or entry.suffix == ".py":
                found.append(name)
        if not found:
            raise DevError(
                f"{path}: no plugin found (a plugin is a package folder with __init__.py or a module name.py)",
                EXIT_USAGE,
            )
        names = tuple(found)
        plugin_dir = path
        default_options = path / OPTIONS_FILE
    if options is not None:
        options = options.expanduser().resolve()
        if not options.is_file():
            raise DevError(f"{options}: no such options file", EXIT_USAGE)
    elif default_options.is_file():
        options = default_options
    return PluginSet(names, plugin_dir, path, options)


def read_options(plugins: PluginSet) -> dict[str, dict[str, Any]]:
    """Each plugin's options from the options file (empty without one); :class:`DevError` if it is malformed."""
    options: dict[str, dict[str, Any]] = {name: {} for name in plugins.names}
    if plugins.options_file is None:
        return options
    source = plugins.options_file
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DevError(f"{source}: {exc}", EXIT_USAGE) from None
    if data is None:
        return options
    if not isinstance(data, dict):
        raise DevError(f"{source}: expected a mapping of plugin name to its options", EXIT_USAGE)
    for name, value in data.items():
        if name not in options:
            raise DevError(
                f"{source}: '{name}' is not a plugin in {plugins.watched} (plugins: {', '.join(plugins.names)})",
                EXIT_USAGE,
            )
        if value is not None and not isinstance(value, dict):
            raise DevError(f"{source}: the options of {name} must be a mapping", EXIT_USAGE)
        options[name] = dict(value or {})
    return options


# -- state --------------------------------------------------------------------------------------------------------


@dataclass
class DevState:
    """The files of the state directory."""

    root: Path
    secrets: dict[str, Any] = field(default_factory=dict)

    @property
    def synapse_dir(self) -> Path:
        return self.root / "synapse"

    @property
    def pid_path(self) -> Path:
        return self.root / "synapse.pid"

    @property
    def secrets_path(self) -> Path:
        return self.root / "dev.json"

    @property
    def config_path(self) -> Path:
        return self.root / "bot.yaml"

    @property
    def data_dir(self) -> Path:
        return self.root / "bot-data"

    @property
    def member_store(self) -> Path:
        return self.root / "member-store"

    def load_secrets(self) -> dict[str, Any]:
        """Read ``dev.json``, creating the passwords and pickle key the first time."""
        try:
            self.secrets = json.loads(self.secrets_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.secrets = {}
        except ValueError as exc:
            raise DevError(f"{self.secrets_path} is damaged ({exc}); remove {self.root} to start over") from None
        changed = False
        for key, size in (("bot_password", 18), ("member_password", 12), ("pickle_key", 24)):
            if not self.secrets.get(key):
                self.secrets[key] = secrets.token_urlsafe(size)
                changed = True
        if changed:
            self.save_secrets()
        return self.secrets

    def save_secrets(self) -> None:
        _write_private(self.secrets_path, json.dumps(self.secrets, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (replacing the file atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@contextlib.contextmanager
def _exclusive(state: DevState) -> Iterator[None]:
    """One ``ratchet dev`` per state directory (two bots on one data_dir would break its session)."""
    lock_path = state.root / "dev.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise DevError(f"another `ratchet dev` (pid {other}) is using {state.root}; stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# -- the persistent Synapse ---------------------------------------------------------------------------------------


def _synapse_pid(state: DevState) -> int | None:
    """The pid of this state directory's running Synapse, if there is one."""
    try:
        pid = int(state.pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or someone else's process took the number
        return None
    if _exited(pid):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return None
        if str(state.synapse_dir / "homeserver.yaml").encode() not in args:
            return None  # the pid was reused by another program
    return pid


def _answers(url: str, timeout: float = 2) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/_matrix/client/versions", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _exited(pid: int) -> bool:
    """Whether ``pid`` is gone (or a zombie nobody reaped yet, as under a container's init that does not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rpartition(")")[2].split()[:1] == ["Z"]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _exited(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
            return True
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child (started by this process)
                return True
        time.sleep(0.1)
    return False


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_dev_synapse(state_dir: Path) -> int | None:
    """Stop the dev Synapse of ``state_dir`` (SIGTERM, SIGKILL after 15 s); returns its pid, None if none ran."""
    state = DevState(state_dir.expanduser().resolve())
    pid = _synapse_pid(state)
    if pid is not None:
        _kill_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, 15):
            _kill_group(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
    with contextlib.suppress(FileNotFoundError):
        state.pid_path.unlink()
    return pid


def _ensure_synapse(state: DevState):
    """The state directory's Synapse: the running one if it answers, else a fresh start. Returns the server and
    whether this process started it (then it is still attached: stopped at exit unless detached)."""
    from bot.testing.synapse import SynapseServer, SynapseStartError

    if importlib.util.find_spec("synapse") is None:
        raise DevError("matrix-synapse is not installed (pip install 'matrix-ratchet[homeserver]')", EXIT_USAGE)
    server = SynapseServer(state.synapse_dir)
    pid = _synapse_pid(state)
    if pid is not None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _answers(server.url):
                return server, False, pid
            time.sleep(0.2)
        _say(f"the dev Synapse (pid {pid}) does not answer at {server.url}; restarting it")
        stop_dev_synapse(state.root)
    try:
        server.start()
    except SynapseStartError as exc:
        raise DevError(f"Synapse did not start: {exc}") from None
    pid = server.pid
    assert pid is not None
    state.pid_path.write_text(f"{pid}\n")
    return server, True, pid


# -- accounts and the room ------------------------------------------------------------------------------------------


def _register(server, localpart: str, password: str) -> str:
    from bot.testing.synapse import UserAlreadyExistsError

    try:
        return server.register_user(localpart, password).user_id
    except UserAlreadyExistsError:
        return f"@{localpart}:{server.server_name}"


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _ensure_room(server, state: DevState, member_id: str, bot_id: str, timeout: float = 30) -> str:
    """The member's encrypted room with the bot (created once, the bot invited again if it left); returns its id
    once the bot is joined. The member logs in for this and out again (no device is left behind)."""
    from bot.testing.synapse import SynapseAPIError

    login = server.admin_request(
        "POST",
        "/_matrix/client/v3/login",
        None,
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": member_id},
            "password": state.secrets["member_password"],
            "initial_device_display_name": "ratchet dev (setup)",
        },
    )
    token = login["access_token"]

    def members(room_id: str) -> set[str]:
        joined = server.admin_request("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/joined_members", token)
        return set(joined.get("joined", {}))

    try:
        room_id = state.secrets.get("room_id")
        joined: set[str] = set()
        if room_id:
            try:
                joined = members(room_id)
            except SynapseAPIError:
                room_id = None
            if member_id not in joined:
                room_id = None
        if not room_id:
            created = server.admin_request(
                "POST",
                "/_matrix/client/v3/createRoom",
                token,
                {
                    "name": "Ratchet dev",
                    "topic": "ratchet dev: talk to the bot under development",
                    "preset": "private_chat",
                    "invite": [bot_id],
                    "initial_state": [
                        {
                            "type": "m.room.encryption",
                            "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                        }
                    ],
                },
            )
            room_id = created["room_id"]
            state.secrets["room_id"] = room_id
            state.save_secrets()
        elif bot_id not in joined:
            with contextlib.suppress(SynapseAPIError):  # already invited
                server.admin_request(
                    "POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/invite", token, {"user_id": bot_id}
                )
        deadline = time.monotonic() + timeout
        while bot_id not in members(room_id):
            if time.monotonic() > deadline:
                raise DevError(f"the bot did not join {room_id} within {timeout:.0f} s")
            time.sleep(0.2)
        return room_id
    finally:
        with contextlib.suppress(Exception):
            server.admin_request("POST", "/_matrix/client/v3/logout", token, {})


def _write_bot_config(state: DevState, server, plugins: PluginSet, options: dict[str, dict[str, Any]]) -> None:
    member_id = f"@{MEMBER_LOCALPART}:{server.server_name}"
    configured: dict[str, Any] = dict(options)
    if "help" not in configured:
        configured["help"] = {}
    data = {
        "homeserver": server.url,
        "user_id": f"@{BOT_LOCALPART}:{server.server_name}",
        "password": state.secrets["bot_password"],
        "device_name": "Ratchet (ratchet dev)",
        "data_dir": str(state.data_dir),
        "pickle_key": state.secrets["pickle_key"],
        "admins": [member_id],
        "invites": {"accept_from": [member_id]},
        "plugin_dirs": [str(plugins.plugin_dir)],
        "plugins": configured,
    }
    _write_private(state.config_path, yaml.safe_dump(data, sort_keys=False))


# -- watching files -------------------------------------------------------------------------------------------------

Snapshot = dict[Path, tuple[int, int]]


def _snapshot(plugins: PluginSet) -> Snapshot:
    """Modification time and size of every watched file."""
    found: Snapshot = {}
    paths: list[Path] = []
    if plugins.watched.is_file():
        paths.append(plugins.watched)
    else:
        for dirpath, dirnames, filenames in os.walk(plugins.watched):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _IGNORED_DIRS]
            paths.extend(
                Path(dirpath, f) for f in filenames if not f.startswith(".") and not f.endswith(_IGNORED_SUFFIXES)
            )
    if plugins.options_file is not None:
        paths.append(plugins.options_file)
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            found[path] = (st.st_mtime_ns, st.st_size)
    return found


def _changed(old: Snapshot, new: Snapshot) -> set[Path]:
    return {p for p in old.keys() | new.keys() if old.get(p) != new.get(p)}


# -- the loop -------------------------------------------------------------------------------------------------------


@dataclass
class DevArgs:
    plugin_dir: Path | None
    state_dir: Path | None = None
    options: Path | None = None
    stop: bool = False
    stop_synapse: bool = False
    member_shell: bool = False
    log_level: str = "INFO"


def run_dev(args: DevArgs) -> int:
    """``ratchet dev``; returns the exit code."""
    state_dir = (args.state_dir or default_state_dir()).expanduser().resolve()
    if args.stop:
        pid = stop_dev_synapse(state_dir)
        _say(f"stopped the dev Synapse (pid {pid})" if pid else f"no dev Synapse is running for {state_dir}")
        return 0
    if args.plugin_dir is None:
        print("ratchet dev: PLUGIN_DIR is required (or --stop)", file=sys.stderr)
        return EXIT_USAGE
    from bot.log import setup_logging

    try:
        plugins = find_plugins(args.plugin_dir, args.options)
        options = read_options(plugins)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = DevState(state_dir)
        setup_logging(args.log_level, "text")
        with _exclusive(state):
            return asyncio.run(_dev(args, state, plugins, options))
    except DevError as exc:
        print(f"ratchet dev: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 0


async def _dev(args: DevArgs, state: DevState, plugins: PluginSet, options: dict[str, dict[str, Any]]) -> int:
    from bot.testing.harness import InProcessBot

    state.load_secrets()
    started_at = time.monotonic()
    stop = asyncio.Event()  # SIGINT/SIGTERM while starting up stop cleanly once the bot is up
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server, started, pid = await asyncio.to_thread(_ensure_synapse, state)
    how = "started" if started else "reusing"
    _say(f"{how} the dev Synapse at {server.url} (pid {pid}, in {state.synapse_dir})")
    keep_synapse = not args.stop_synapse
    bot: InProcessBot | None = None
    shell = None
    try:
        bot_id = await asyncio.to_thread(_register, server, BOT_LOCALPART, state.secrets["bot_password"])
        member_id = await asyncio.to_thread(_register, server, MEMBER_LOCALPART, state.secrets["member_password"])
        _write_bot_config(state, server, plugins, options)
        bot = InProcessBot(state.config_path)
        try:
            await bot.start()
        except Exception as exc:
            raise DevError(f"the bot did not start: {exc.__class__.__name__}: {exc}") from None
        runtime = bot.runtime
        assert runtime is not None
        room_id = await asyncio.to_thread(_ensure_room, server, state, member_id, bot_id)
        for name in plugins.names:
            _report_load(runtime, name)
        _say()
        _say("Log in with Element (or any Matrix client) as the member and talk to the bot:")
        _say(f"  homeserver: {server.url}")
        _say(f"  user:       {member_id}")
        _say(f"  password:   {state.secrets['member_password']}")
        _say(f"  room:       {room_id} (encrypted; the bot {bot_id} is in it)")
        _say(f"  bot device: {bot.device_id}")
        _say(f"  (kept in {state.secrets_path})")
        _say()
        watched = str(plugins.watched)
        if plugins.options_file is not None and not plugins.options_file.is_relative_to(plugins.watched):
            watched += f" and {plugins.options_file}"
        _say(f"watching {watched}: a change reloads the plugin")
        keep = "stopped too" if args.stop_synapse else "left running for the next run; `ratchet dev --stop` stops it"
        _say(f"stop with Ctrl-C (the Synapse is {keep})")
        _say(f"ready in {time.monotonic() - started_at:.1f}s")

        if args.member_shell:
            shell = MemberShell(server.url, member_id, state, room_id, bot_id, stop)
            await shell.start()
        watcher = asyncio.create_task(_watch(runtime, plugins, state, server))
        stopping = asyncio.create_task(stop.wait())
        assert bot._task is not None
        done, _ = await asyncio.wait({stopping, watcher, bot._task}, return_when=asyncio.FIRST_COMPLETED)
        for task in (watcher, stopping):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if bot._task in done:
            task, bot._task = bot._task, None
            exc = None if task.cancelled() else task.exception()
            raise DevError(f"the bot stopped: {exc.__class__.__name__}: {exc}" if exc else "the bot stopped")
        _say("stopping ...")
        return 0
    finally:
        if shell is not None:
            await shell.close()
        if bot is not None:
            try:
                await bot.stop()
            except Exception as exc:
                print(f"ratchet dev: the bot stopped with {exc.__class__.__name__}: {exc}", file=sys.stderr)
            else:
                _say("the bot stopped")
        if keep_synapse:
            if started:
                server.detach()
            _say(f"the dev Synapse keeps running at {server.url} (pid {pid}); `ratchet dev --stop` stops it")
        else:
            if started:
                await asyncio.to_thread(server.stop)
                with contextlib.suppress(FileNotFoundError):
                    state.pid_path.unlink()
            else:
                await asyncio.to_thread(stop_dev_synapse, state.root)
            _say("the dev Synapse stopped")


def _report_load(runtime, name: str) -> None:
    loaded = runtime.host.plugins.get(name)
    if loaded is not None:
        commands = ", ".join(runtime.config.command_prefix + c.spec.name for c in loaded.handlers.commands)
        _say(f"loaded {name}" + (f" (commands: {commands})" if commands else ""))
    else:
        _say(f"failed to load {name}: {runtime.host.errors.get(name, 'unknown error')}")


async def _watch(runtime, plugins: PluginSet, state: DevState, server) -> None:
    """Poll the plugin files; reload what changed."""
    from bot.errors import PluginLoadError

    before = await asyncio.to_thread(_snapshot, plugins)
    while True:
        await asyncio.sleep(POLL_INTERVAL)
        now = await asyncio.to_thread(_snapshot, plugins)
        changed = _changed(before, now)
        if not changed:
            continue
        # Editors write in steps (a temp file, a rename): wait until the files are still for a moment.
        for _ in range(10):
            await asyncio.sleep(0.2)
            settled = await asyncio.to_thread(_snapshot, plugins)
            more = _changed(now, settled)
            now = settled
            if not more:
                break
            changed |= more
        before = now  # (a reload drops the plugin's cached bytecode itself: bot/plugin/loader.py)
        if plugins.options_file is not None and plugins.options_file in changed:
            try:
                options = read_options(plugins)
            except DevError as exc:
                _say(f"not reloaded: {exc}")
                continue
            _write_bot_config(state, server, plugins, options)
            names = list(plugins.names)
        else:
            owners = {plugins.owner(p) for p in changed}
            names = list(plugins.names) if None in owners else [n for n in plugins.names if n in owners]
        for name in names:
            was_running = name in runtime.host.plugins
            try:
                await runtime.manager.reload(name)
            except PluginLoadError as exc:
                keeps = "; the previous version keeps running" if was_running else ""
                _say(f"reload of {name} failed: {exc}{keeps}")
            except Exception as exc:  # never let the watcher die
                _say(f"reload of {name} failed: {exc.__class__.__name__}: {exc}")
            else:
                _say(f"reloaded {name}")


# -- --member-shell -------------------------------------------------------------------------------------------------


class MemberShell:
    """The member in the terminal: each line read from stdin is sent to the room, the bot's answers are printed."""

    def __init__(self, url: str, member_id: str, state: DevState, room_id: str, bot_id: str, stop: asyncio.Event):
        self.url = url
        self.member_id = member_id
        self.state = state
        self.room_id = room_id
        self.bot_id = bot_id
        self.stop = stop
        self.member = None
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        from bot.testing.member import Member

        self.member = Member(self.url, self.member_id, self.state.secrets["member_password"], self.state.member_store)
        await self.member.start()
        await self.member.wait_for(lambda: self.room_id in self.member.client.rooms, 30, "the room to sync")
        loop = asyncio.get_running_loop()
        fd = sys.stdin.fileno()
        self._buffer = b""
        try:
            loop.add_reader(fd, self._readable, fd)
        except (OSError, ValueError) as exc:
            _say(f"member shell: cannot read stdin ({exc}); use a terminal or a pipe")
            return
        os.set_blocking(fd, False)
        self._tasks = [asyncio.create_task(self._send_lines()), asyncio.create_task(self._print_answers())]
        _say(f"member shell: type a message for the room as {self.member_id} (Ctrl-D or Ctrl-C to stop)")

    def _readable(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            asyncio.get_running_loop().remove_reader(fd)
            self._lines.put_nowait(None)
            return
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._lines.put_nowait(line.decode(errors="replace"))

    async def _send_lines(self) -> None:
        while True:
            line = await self._lines.get()
            if line is None:
                self.stop.set()
                return
            if line.strip():
                try:
                    await self.member.send(self.room_id, line)
                except Exception as exc:
                    _say(f"not sent: {exc}")

    async def _print_answers(self) -> None:
        seen = len(self.member.events)
        while True:
            await asyncio.sleep(0.2)
            events = self.member.events
            for room_id, event in events[seen:]:
                if room_id != self.room_id or event.sender != self.bot_id:
                    continue
                body = getattr(event, "body", None)
                if body is not None:
                    lock = "" if getattr(event, "decrypted", False) else " (not encrypted)"
                    _say(f"bot{lock}: {body}")
                elif type(event).__name__ == "MegolmEvent":
                    _say("bot: (a message this device cannot decrypt)")
            seen = len(events)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
        with contextlib.suppress(Exception):
            os.set_blocking(sys.stdin.fileno(), True)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self.member is not None:
            with contextlib.suppress(Exception):
                await self.member.client.logout()  # the shell's device goes away with it
            await self.member.close()
            shutil.rmtree(self.state.member_store, ignore_errors=True)
