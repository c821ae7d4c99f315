"""A real Synapse homeserver for end-to-end tests.

:class:`SynapseServer` runs ``python -m synapse.app.homeserver`` as a child process with a
throw-away configuration tuned for tests: SQLite, a single client listener bound to
``127.0.0.1``, no federation, no registration (users are created through the shared-secret
admin API with :meth:`SynapseServer.register_user`) and rate limits relaxed so that tests
never hit them (unless ``tight_rate_limits=True``).

Everything here is synchronous and uses only the standard library (plus ``pyyaml``) on the
test side, so it can be used from plain pytest fixtures as well as from asyncio tests::

    with SynapseServer(tmp_path) as server:
        alice = server.register_user("alice", "secret-password")
        client = nio.AsyncClient(server.url, alice.user_id)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import copy
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

__all__ = [
    "RegisteredUser",
    "SynapseAPIError",
    "SynapseServer",
    "SynapseStartError",
    "UserAlreadyExistsError",
]

#: Rate limit settings used for every limiter when limits are relaxed.
_RELAXED = {"per_second": 1000, "burst_count": 1000}

#: Limit for sending messages with ``tight_rate_limits=True``.
_TIGHT_MESSAGE = {"per_second": 2, "burst_count": 5}

#: How long a single HTTP request of the harness may take, in seconds.
_HTTP_TIMEOUT = 30.0

#: Servers that are running, so that they get killed if the test process exits early.
_LIVE_SERVERS: weakref.WeakSet[SynapseServer] = weakref.WeakSet()


@atexit.register
def _kill_leftover_servers() -> None:
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


class SynapseStartError(RuntimeError):
    """Synapse did not come up (the process died or did not answer in time)."""


class SynapseAPIError(RuntimeError):
    """A request to Synapse got a non-2xx answer.

    Attributes:
        method: the HTTP method of the request.
        path: the path of the request.
        status: the HTTP status code of the answer.
        body: the answer's body, parsed from JSON when possible, else the raw text.
        errcode: the Matrix ``errcode`` of the answer, if any (e.g. ``M_USER_IN_USE``).
    """

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        self.errcode: str | None = body.get("errcode") if isinstance(body, dict) else None
        super().__init__(f"{method} {path} failed with HTTP {status}: {body!r}")


class UserAlreadyExistsError(SynapseAPIError):
    """:meth:`SynapseServer.register_user` was asked for a user id that is taken."""


@dataclass(frozen=True)
class RegisteredUser:
    """A user created on the test homeserver, logged in on one device.

    Attributes:
        user_id: the full Matrix user id, e.g. ``@alice:localhost``.
        password: the password, for tests that log in again (new device).
        access_token: the access token of the device created at registration.
        device_id: that device's id.
        homeserver: the homeserver's base URL, e.g. ``http://127.0.0.1:8008``.
    """

    user_id: str
    password: str
    access_token: str
    device_id: str
    homeserver: str

    @property
    def localpart(self) -> str:
        """The user id without the leading ``@`` and the ``:server`` part."""
        return self.user_id[1:].split(":", 1)[0]


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into a copy of ``base``: dicts merge recursively, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be listened on (with SO_REUSEADDR, as Twisted does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _rate_limits(tight: bool) -> dict[str, Any]:
    """The ``rc_*`` settings: everything relaxed, ``rc_message`` tight if asked."""
    relaxed = dict(_RELAXED)
    return {
        "rc_message": dict(_TIGHT_MESSAGE) if tight else dict(relaxed),
        "rc_registration": dict(relaxed),
        "rc_registration_token_validity": dict(relaxed),
        "rc_login": {
            "address": dict(relaxed),
            "account": dict(relaxed),
            "failed_attempts": dict(relaxed),
        },
        "rc_joins": {"local": dict(relaxed), "remote": dict(relaxed)},
        "rc_joins_per_room": dict(relaxed),
        "rc_invites": {
            "per_room": dict(relaxed),
            "per_user": dict(relaxed),
            "per_issuer": dict(relaxed),
        },
        "rc_third_party_invite": dict(relaxed),
        "rc_key_requests": dict(relaxed),
        "rc_reports": dict(relaxed),
        "rc_3pid_validation": dict(relaxed),
        "rc_admin_redaction": dict(relaxed),
        "rc_media_create": dict(relaxed),
        "rc_delayed_event_mgmt": dict(relaxed),
        "rc_room_creation": dict(relaxed),
        "rc_presence": {"per_user": dict(relaxed)},
        "rc_user_directory": dict(relaxed),
        "rc_profile": dict(relaxed),
    }


class SynapseServer:
    """A Synapse homeserver running as a child process, for tests.

    All state lives under ``base_dir``: ``homeserver.yaml``, the signing key, the SQLite
    database, the media store, ``homeserver.log`` (Synapse's own log) and
    ``synapse.stdout.log`` (the process's stdout/stderr, where start-up crashes end up).

    The configuration is rewritten from the constructor's arguments on every
    :meth:`start`, but the secrets and the port are kept from the first start, so a
    restarted server (or a new :class:`SynapseServer` over the same directory) keeps its
    users, rooms and URL.

    Args:
        base_dir: directory for all the server's files (created if missing).
        port: TCP port on 127.0.0.1 to listen on; by default a free port is picked on the
            first start and reused afterwards.
        server_name: the Matrix server name (the part after ``:`` in user ids).
        tight_rate_limits: limit sending messages to 2 per second with a burst of 5, to
            test handling of ``429 M_LIMIT_EXCEEDED``; all other limits stay relaxed.
        extra_config: settings deep-merged last into ``homeserver.yaml``.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        server_name: str = "localhost",
        tight_rate_limits: bool = False,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self._base_dir = Path(base_dir).resolve()
        self._port = port
        self._server_name = server_name
        self.tight_rate_limits = tight_rate_limits
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._secrets: dict[str, str] | None = None
        # An automatically picked port may be replaced until the first successful start.
        self._port_repickable = port is None and self._port_from_existing_config() is None

    # ------------------------------------------------------------------ properties

    @property
    def base_dir(self) -> Path:
        """The directory holding the configuration, database, media and logs."""
        return self._base_dir

    @property
    def server_name(self) -> str:
        """The Matrix server name, e.g. ``localhost``."""
        return self._server_name

    @property
    def port(self) -> int:
        """The TCP port the client listener uses on 127.0.0.1 (picked on first use)."""
        if self._port is None:
            self._port = self._port_from_existing_config() or _free_port()
        return self._port

    @property
    def url(self) -> str:
        """The homeserver's base URL, e.g. ``http://127.0.0.1:8008``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        """Path of the generated ``homeserver.yaml``."""
        return self._base_dir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        """Path of Synapse's log file (INFO and above)."""
        return self._base_dir / "homeserver.log"

    @property
    def stdout_path(self) -> Path:
        """Path of the file receiving the process's stdout and stderr."""
        return self._base_dir / "synapse.stdout.log"

    @property
    def pid(self) -> int | None:
        """The process id of the running Synapse, or ``None`` when stopped."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the Synapse process is alive (a paused server counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        """Whether the server is stopped with SIGSTOP (see :meth:`pause`)."""
        return self._paused and self.is_running

    @property
    def registration_shared_secret(self) -> str:
        """The secret for the shared-secret registration API."""
        return self._load_secrets()["registration_shared_secret"]

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60) -> None:
        """Write the configuration and start Synapse; return once it answers requests.

        Blocks until ``GET /_matrix/client/versions`` succeeds. If the port was picked
        automatically and gets taken by someone else before the first start, another
        free port is picked.

        Raises:
            SynapseStartError: the port is taken, the process exited, or it did not answer
                within ``timeout`` seconds (then it is killed); the message holds the end
                of its logs.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"Synapse is already running (pid {self._proc.pid})")
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            last_attempt = attempt == 2 or not self._port_repickable
            if not _port_is_free(self.port):
                if last_attempt:
                    raise SynapseStartError(f"port {self.port} on 127.0.0.1 is already in use")
                self._port = _free_port()
                continue
            self._write_files()
            if self._launch_and_wait(deadline, timeout, retry_bind_error=not last_attempt):
                self._port_repickable = False
                return
            self._port = _free_port()
        raise SynapseStartError(f"could not find a free port for Synapse\n{self.log_tail()}")

    def _launch_and_wait(self, deadline: float, timeout: float, *, retry_bind_error: bool) -> bool:
        """Start the process and wait for it to answer.

        Returns False if it failed to bind its port and ``retry_bind_error`` is set.
        """
        with open(self.stdout_path, "ab") as out:
            out_offset = out.tell()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self._base_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._paused = False
        _LIVE_SERVERS.add(self)
        versions = f"{self.url}/_matrix/client/versions"
        while True:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                with open(self.stdout_path, "rb") as out:
                    out.seek(out_offset)
                    output = out.read().decode("utf-8", errors="replace")
                if retry_bind_error and "Address already in use" in output:
                    return False
                raise SynapseStartError(
                    f"Synapse exited with code {code} while starting\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(versions, timeout=2) as response:
                    if response.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop(timeout=5)
                raise SynapseStartError(
                    f"Synapse did not answer {versions} within {timeout} s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 15) -> None:
        """Stop Synapse: SIGTERM, then SIGKILL if it is still alive after ``timeout`` s.

        Does nothing if the server is not running. A paused server is resumed first so
        that it can handle SIGTERM.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=10)
        else:
            # The main process is gone; make sure nothing of its group lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._proc = None
        self._paused = False
        _LIVE_SERVERS.discard(self)

    def detach(self) -> int:
        """Let the running Synapse outlive this object and this process (``ratchet dev`` keeps its homeserver
        for the next run): it is no longer stopped at exit nor by :meth:`stop`. Returns its pid, which is also its
        process group id (signal the group to stop it)."""
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("Synapse is not running")
        pid = self._proc.pid
        _LIVE_SERVERS.discard(self)
        self._proc = None
        self._paused = False
        return pid

    def restart(self, timeout: float = 60) -> None:
        """Stop and start again, on the same port and with the same data."""
        self.stop()
        self.start(timeout=timeout)

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections hang, nothing answers.

        For outage tests; undo with :meth:`resume` (or :meth:`stop`).
        """
        if not self.is_running:
            raise RuntimeError("Synapse is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a server frozen by :meth:`pause` run again (SIGCONT)."""
        if not self.is_running:
            raise RuntimeError("Synapse is not running")
        self._signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> SynapseServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<SynapseServer {self._server_name} at {self.url} ({state}) in {self._base_dir}>"

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of Synapse's log and of its stdout/stderr, for errors."""
        parts = []
        for path in (self.log_path, self.stdout_path):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail:
                parts.append(f"--- {path.name} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts) or "(no log output)"

    # ------------------------------------------------------------------ users & admin

    def register_user(
        self,
        localpart: str,
        password: str,
        *,
        admin: bool = False,
        displayname: str | None = None,
    ) -> RegisteredUser:
        """Create a user through the shared-secret registration admin API.

        Synapse lower-cases the localpart. The returned user is logged in on a new device.

        Raises:
            UserAlreadyExistsError: the user id is taken.
            SynapseAPIError: any other refusal.
        """
        path = "/_synapse/admin/v1/register"
        nonce = self._request("GET", path)["nonce"]
        mac = hmac.new(self.registration_shared_secret.encode("utf-8"), digestmod=hashlib.sha1)
        for i, part in enumerate((nonce, localpart, password, "admin" if admin else "notadmin")):
            if i:
                mac.update(b"\x00")
            mac.update(part.encode("utf-8"))
        body: dict[str, Any] = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        if displayname is not None:
            body["displayname"] = displayname
        try:
            result = self._request("POST", path, body=body)
        except SynapseAPIError as err:
            if err.errcode == "M_USER_IN_USE":
                raise UserAlreadyExistsError(err.method, err.path, err.status, err.body) from None
            raise
        return RegisteredUser(
            user_id=result["user_id"],
            password=password,
            access_token=result["access_token"],
            device_id=result["device_id"],
            homeserver=self.url,
        )

    def admin_request(
        self,
        method: str,
        path: str,
        token: str | None,
        body: Any = None,
    ) -> dict[str, Any]:
        """Send one JSON request to the server and return the decoded JSON answer.

        Meant for the admin API (``/_synapse/admin/...``) but works for any endpoint.

        Args:
            method: HTTP method, e.g. ``"GET"``.
            path: path beginning with ``/``, with any query string already encoded.
            token: access token sent as a bearer token (``None`` for none).
            body: JSON-serialisable request body, or ``None`` for none.

        Raises:
            SynapseAPIError: the answer was not 2xx.
        """
        return self._request(method, path, body=body, token=token)

    # ------------------------------------------------------------------ internals

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method.upper())
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            text = raw.decode("utf-8", errors="replace")
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            raise SynapseAPIError(method.upper(), path, err.code, parsed) from None
        if not raw:
            return {}
        result = json.loads(raw)
        return result if isinstance(result, dict) else {"result": result}

    def _existing_config(self) -> dict[str, Any]:
        try:
            with open(self.config_path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh)
        except FileNotFoundError:
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _port_from_existing_config(self) -> int | None:
        for listener in self._existing_config().get("listeners", []):
            if isinstance(listener, dict) and isinstance(listener.get("port"), int):
                return int(listener["port"])
        return None

    def _load_secrets(self) -> dict[str, str]:
        if self._secrets is None:
            existing = self._existing_config()
            self._secrets = {
                key: str(existing.get(key) or secrets.token_urlsafe(32))
                for key in ("registration_shared_secret", "macaroon_secret_key", "form_secret")
            }
        return self._secrets

    def build_config(self) -> dict[str, Any]:
        """The ``homeserver.yaml`` content that :meth:`start` writes, as a dict."""
        base = self._base_dir
        config: dict[str, Any] = {
            "server_name": self._server_name,
            "public_baseurl": self.url + "/",
            "report_stats": False,
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(base / "homeserver.db")},
            },
            "log_config": str(base / "log.config"),
            "media_store_path": str(base / "media_store"),
            "signing_key_path": str(base / "signing.key"),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "enable_registration": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "serve_server_wellknown": False,
            # The default (12) costs about 0.25 s per registration and per password login.
            "bcrypt_rounds": 4,
            **self._load_secrets(),
            **_rate_limits(self.tight_rate_limits),
        }
        return _deep_merge(config, self.extra_config)

    def _log_config(self) -> dict[str, Any]:
        return {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                    "%(request)s - %(message)s"
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "encoding": "utf8",
                }
            },
            "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def _write_files(self) -> None:
        base = self._base_dir
        base.mkdir(parents=True, exist_ok=True)
        (base / "media_store").mkdir(exist_ok=True)
        key_path = base / "signing.key"
        if not key_path.exists():
            # Same format as signedjson's write_signing_keys: any 32 random bytes are a
            # valid ed25519 seed, so no need to start Synapse with --generate-keys.
            seed = base64.b64encode(os.urandom(32)).decode("ascii").rstrip("=")
            version = "a_" + secrets.token_hex(2)
            key_path.write_text(f"ed25519 {version} {seed}\n", encoding="ascii")
            key_path.chmod(0o600)
        (base / "log.config").write_text(
            yaml.safe_dump(self._log_config(), sort_keys=False), encoding="utf-8"
        )
        config = self.build_config()
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.config_path.chmod(0o600)
