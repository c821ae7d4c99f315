"""Drive the matrix-js-sdk peer (``tests/interop/js/peer.mjs``) from asyncio tests.

The peer is an independent Matrix client (matrix-js-sdk with its Rust crypto, the stack Element uses) running in
Node. It speaks JSON lines: ``{"id": n, "cmd": ..., **args}`` in, ``{"id": n, "ok": ..., "result"|"error": ...}`` out;
its logs go to a file (:attr:`JsPeer.log_path`), shown in every :class:`JsPeerError`.

Install its dependencies once with :data:`INSTALL_COMMAND` (run from the repository root).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["INSTALL_COMMAND", "JS_DIR", "JsPeer", "JsPeerError", "js_available"]

JS_DIR = Path(__file__).resolve().parent / "js"
PEER_SCRIPT = JS_DIR / "peer.mjs"
#: Installs the peer's pinned dependencies (from the repository root).
INSTALL_COMMAND = "npm ci --prefix tests/interop/js --no-audit --no-fund"

_STDERR_TAIL_LINES = 40


def js_available() -> bool:
    """True when ``node`` is on PATH and the peer's dependencies are installed."""
    return shutil.which("node") is not None and (JS_DIR / "node_modules" / "matrix-js-sdk" / "package.json").is_file()


class JsPeerError(AssertionError):
    """A peer command failed (or the peer died); carries the error text and the tail of the peer's log."""

    def __init__(self, message: str, *, cmd: str | None = None, log_tail: str = "") -> None:
        self.error = message
        self.cmd = cmd
        self.log_tail = log_tail
        text = f"js peer {cmd!r} failed: {message}" if cmd else f"js peer: {message}"
        if log_tail:
            text += f"\n--- last lines of the js peer's log ---\n{log_tail}"
        super().__init__(text)


class JsPeer:
    """One matrix-js-sdk client in a ``node peer.mjs`` child process.

    Use as ``async with JsPeer(log_dir) as peer:`` or call :meth:`start` / :meth:`close`.
    Requests may run concurrently (responses are matched by id).
    """

    def __init__(self, log_dir: Path | None = None, *, name: str = "jspeer", debug: bool = False) -> None:
        if log_dir is None:
            log_dir = Path(tempfile.mkdtemp(prefix="ratchet-jspeer-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.debug = debug
        self.user_id: str | None = None
        self.device_id: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self, timeout: float = 30) -> JsPeer:
        """Spawn the peer and wait until it has loaded the SDK."""
        if not js_available():
            raise JsPeerError(f"node or matrix-js-sdk missing; install with: {INSTALL_COMMAND}")
        self._log_file = open(self.log_path, "ab")  # noqa: ASYNC230 - a local log file, closed in close()
        env = dict(os.environ)
        if self.debug:
            env["JSPEER_DEBUG"] = "1"
        self._proc = await asyncio.create_subprocess_exec(
            "node",
            str(PEER_SCRIPT),
            cwd=str(JS_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            limit=16 * 1024 * 1024,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_loop(), name=f"{self.name}-reader")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.close()
            raise JsPeerError(f"did not start within {timeout}s", log_tail=self.log_tail()) from None
        return self

    async def close(self, timeout: float = 10) -> None:
        """Stop the client (``stop``) and reap the process; kill it if it does not leave in time."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("stop"), timeout)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._proc = None

    async def __aenter__(self) -> JsPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def log_tail(self, lines: int = _STDERR_TAIL_LINES) -> str:
        """The last ``lines`` lines of the peer's log (stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def _read_loop(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        error: str = "the js peer exited"
        try:
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue  # not a protocol line
                msg_id = msg.get("id")
                if msg_id == 0 and self._ready is not None and not self._ready.done():
                    self._ready.set_result(msg)
                    continue
                fut = self._pending.pop(msg_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except Exception as exc:  # pragma: no cover - defensive
            error = f"reader failed: {exc!r}"
        finally:
            rc: int | None = None
            with contextlib.suppress(TimeoutError):
                rc = await asyncio.wait_for(proc.wait(), 5)
            tail = self.log_tail()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(JsPeerError(f"{error} (exit code {rc})", log_tail=tail))
            self._pending.clear()
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(JsPeerError(f"{error} before it was ready (exit code {rc})", log_tail=tail))

    # -- protocol --------------------------------------------------------------------------------------------------

    async def call(self, cmd: str, timeout: float | None = None, /, **args: Any) -> Any:
        """Send one command and return its ``result``; raise :class:`JsPeerError` on failure.

        ``timeout`` (seconds) bounds the wait on the Python side; by default it is ``timeout_ms`` + 15 s when the
        command has one, else 60 s.
        """
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            raise JsPeerError("the js peer is not running", cmd=cmd, log_tail=self.log_tail())
        if timeout is None:
            timeout = (args["timeout_ms"] / 1000 + 15) if "timeout_ms" in args else 60
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        payload = {"id": msg_id, "cmd": cmd, **{k: v for k, v in args.items() if v is not None}}
        proc.stdin.write((json.dumps(payload) + "\n").encode())
        await proc.stdin.drain()
        try:
            msg = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(msg_id, None)
            raise JsPeerError(f"no answer within {timeout}s", cmd=cmd, log_tail=self.log_tail()) from None
        if not msg.get("ok"):
            raise JsPeerError(str(msg.get("error")), cmd=cmd, log_tail=self.log_tail())
        return msg.get("result")

    # -- commands --------------------------------------------------------------------------------------------------

    async def login(self, homeserver: str, user_id: str, password: str, device_name: str | None = None) -> str:
        """Password login, Rust crypto, first sync; returns the new device id."""
        result = await self.call(
            "login", homeserver=homeserver, user_id=user_id, password=password, device_name=device_name
        )
        self.user_id = result["user_id"]
        self.device_id = result["device_id"]
        return self.device_id

    async def bootstrap_cross_signing(self, password: str) -> dict[str, Any]:
        """Create and publish new cross-signing keys (UIA answered with ``password``); returns the status."""
        return await self.call("bootstrap_cross_signing", password=password)

    async def bootstrap_secret_storage(self, passphrase: str | None = None) -> dict[str, Any]:
        """New SSSS key + key backup, storing the cross-signing and backup keys; returns ``recovery_key`` etc."""
        return await self.call("bootstrap_secret_storage", passphrase=passphrase)

    async def set_isolation(self, mode: str) -> None:
        """``"only_signed"`` (MSC4153, Element's "exclude insecure devices") or ``"all"``."""
        await self.call("set_isolation", mode=mode)

    async def create_room(self, invite: list[str] = (), *, encrypted: bool = True, name: str | None = None) -> str:
        """Create a private room (encrypted by default) inviting ``invite``; returns its id."""
        result = await self.call("create_room", invite=list(invite), encrypted=encrypted, name=name)
        return result["room_id"]

    async def join_room(self, room_id: str) -> dict[str, Any]:
        return await self.call("join_room", room_id=room_id)

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 30) -> None:
        await self.call("wait_joined", room_id=room_id, user_id=user_id, timeout_ms=int(timeout * 1000))

    async def send_text(self, room_id: str, body: str, *, reply_to: str | None = None) -> str:
        """Send an ``m.text`` (encrypted if the room is); returns the event id."""
        result = await self.call("send_text", room_id=room_id, body=body, reply_to=reply_to)
        return result["event_id"]

    async def wait_message(
        self,
        room_id: str,
        *,
        sender: str | None = None,
        reply_to: str | None = None,
        body_prefix: str | None = None,
        timeout: float = 30,
        fail_on_utd: bool = False,
    ) -> dict[str, Any]:
        """Wait for a decrypted ``m.room.message`` (past or future) matching the filters.

        On timeout the :class:`JsPeerError`'s ``error`` is a JSON object with ``timeout``, ``utd`` (events matching
        ``sender``/``reply_to`` that failed to decrypt: ``event_id``, ``sender``, ``reason``, a js-sdk
        ``DecryptionFailureCode`` such as ``UNSIGNED_SENDER_DEVICE``) and ``pending``. With ``fail_on_utd`` it fails
        that way as soon as such an event has failed for a reason no later key can fix (``UNSIGNED_SENDER_DEVICE``,
        ``MEGOLM_KEY_WITHHELD``..., not ``MEGOLM_UNKNOWN_INBOUND_SESSION_ID``) and no match exists (``timeout`` is
        then false).
        """
        return await self.call(
            "wait_message",
            room_id=room_id,
            sender=sender,
            reply_to=reply_to,
            body_prefix=body_prefix,
            timeout_ms=int(timeout * 1000),
            fail_on_utd=fail_on_utd or None,
        )

    async def event_info(self, room_id: str, event_id: str, *, timeout: float = 30) -> dict[str, Any]:
        """What this client shows for one event once its decryption was attempted: ``{event_id, sender, type,
        encrypted, body, decryption_failure, failure_detail, shield_colour, shield_reason, sender_curve25519,
        claimed_ed25519}``;
        ``shield_colour`` is the name of a js-sdk ``EventShieldColour`` (``NONE``, ``GREY``, ``RED``) and
        ``shield_reason`` of an ``EventShieldReason`` (e.g. ``MISMATCHED_SENDER``, ``UNSIGNED_DEVICE``) or None."""
        return await self.call("event_info", room_id=room_id, event_id=event_id, timeout_ms=int(timeout * 1000))

    async def device_status(
        self, user_id: str, device_id: str, *, wait: float = 10, expect_signed: bool | None = None
    ) -> dict[str, Any]:
        """``{known, signed_by_owner, cross_signing_verified, locally_verified, is_verified}`` for a device.

        Polls up to ``wait`` seconds until the device is known (and, if ``expect_signed`` is given, until
        ``signed_by_owner`` equals it), then returns the last status either way.
        """
        return await self.call(
            "device_status",
            wait + 30,
            user_id=user_id,
            device_id=device_id,
            wait_ms=int(wait * 1000),
            expect_signed=expect_signed,
        )

    async def user_identity(self, user_id: str) -> dict[str, Any]:
        return await self.call("user_identity", user_id=user_id)

    async def cross_signing_status(self) -> dict[str, Any]:
        return await self.call("cross_signing_status")

    async def key_backup_info(self) -> dict[str, Any]:
        return await self.call("key_backup_info")

    async def wait_backup_uploaded(self, timeout: float = 30) -> dict[str, Any]:
        """Wait until all of this device's room keys are in the server-side backup; returns ``{total, backed_up}``."""
        return await self.call("wait_backup_uploaded", timeout_ms=int(timeout * 1000))

    async def get_secret(self, name: str, recovery_key: str) -> str | None:
        """Read secret ``name`` from secret storage, opened with ``recovery_key`` only (``None`` if not stored)."""
        result = await self.call("get_secret", name=name, recovery_key=recovery_key)
        return result["value"]

    async def verify_own_device_with_recovery_key(self, recovery_key: str) -> dict[str, Any]:
        """Import the cross-signing keys from SSSS and sign this device; returns the statuses."""
        return await self.call("verify_own_device_with_recovery_key", recovery_key=recovery_key)

    async def restore_backup(self, recovery_key: str) -> dict[str, Any]:
        """Restore room keys from the server-side backup (key from SSSS); returns ``{imported, total}``."""
        return await self.call("restore_backup", 120, recovery_key=recovery_key)
