"""The running bot's local control channel: a Unix socket in ``data_dir`` (``control.sock``, mode 0600).

One JSON object per line each way: ``{"cmd": "verification.list", ...args}`` in, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}`` out, then the connection closes. Only processes of the bot's own user may talk to it
(the socket is 0600 inside the 0700 ``data_dir``, and the peer's uid is checked with ``SO_PEERCRED`` where the system
has it). ``ratchet verification ...`` and ``ratchet verify-user`` are its clients (:func:`call`).

The commands are the verification service's operator API (:func:`verification_commands`):

``verification.list``                 flows in progress (``all: true``: every flow this run)
``verification.show``     ``id``      one flow, with its emoji and their names
``verification.confirm``  ``id``      the short codes match: send our MAC
``verification.mismatch`` ``id``      they differ: cancel with ``m.mismatched_sas``
``verification.cancel``   ``id``      cancel (``m.user``)
``verification.request``  ``user``, ``room`` (optional: in-room user verification), ``devices`` (optional)
``fingerprint``           ``user`` (optional): the bot's device and master keys, the user's master key and the
                          safety number of the two
``trust-user``            ``user``, ``fingerprint``: pin and sign the user's master key if the fingerprint (the key,
                          or the safety number) matches; refused otherwise
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["CONTROL_SOCKET", "ControlError", "ControlServer", "call", "control_socket_alive", "verification_commands"]

log = logging.getLogger("ratchet.control")

#: The socket's name inside data_dir.
CONTROL_SOCKET = "control.sock"
#: The longest request line accepted (bytes).
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """A control request failed (the bot is not running, or it answered with an error)."""


class ControlServer:
    """Serves ``commands`` (name -> async handler taking the request's arguments) on a Unix socket."""

    def __init__(self, path: Path, commands: dict[str, Handler]) -> None:
        self.path = path
        self.commands = commands
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> ControlServer:
        if self.path.exists() or self.path.is_symlink():
            if control_socket_alive(self.path):
                raise ControlError(f"{self.path} is in use: is another instance of this bot running?")
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.info("control channel listening on %s", self.path)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = _peer_uid(sock) if sock is not None else None
            if uid is not None and uid != os.getuid():
                log.warning("control channel: refused a connection from uid %d", uid)
                return
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError("expected a JSON object with a cmd")
            except (ValueError, asyncio.LimitOverrunError, TimeoutError) as exc:
                await _answer(writer, {"ok": False, "error": f"bad request: {exc}"})
                return
            handler = self.commands.get(request["cmd"])
            if handler is None:
                await _answer(writer, {"ok": False, "error": f"unknown command {request['cmd']!r}"})
                return
            args = {k: v for k, v in request.items() if k != "cmd"}
            try:
                result = await handler(args)
            except (KeyError, ValueError) as exc:
                await _answer(writer, {"ok": False, "error": str(exc.args[0] if exc.args else exc)})
                return
            except Exception as exc:
                log.warning("control command %s failed: %s", request["cmd"], exc, exc_info=exc)
                await _answer(writer, {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"})
                return
            await _answer(writer, {"ok": True, "result": result})
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _answer(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write((json.dumps(message, ensure_ascii=False) + "\n").encode())
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def _peer_uid(sock: socket.socket) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def control_socket_alive(path: Path) -> bool:
    """True if something answers on the control socket at ``path`` (a bot is running there); False if nothing is
    there or nothing listens on it (a socket left behind by a bot that died)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def call(path: Path, cmd: str, timeout: float = 60, **args: Any) -> Any:
    """Send one command to the bot's control socket at ``path``; return its result or raise :class:`ControlError`."""
    request = json.dumps({"cmd": cmd, **{k: v for k, v in args.items() if v is not None}}) + "\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            reason = exc.strerror or exc
            raise ControlError(f"cannot reach the running bot at {path} ({reason}): is it running?") from None
        sock.sendall(request.encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError("the bot gave no answer") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error")))
    return answer.get("result")


def verification_commands(service: Any) -> dict[str, Handler]:
    """The ``verification.*`` commands, served from ``service`` (a
    :class:`~bot.e2ee.verification_service.VerificationService`)."""

    def need(args: dict[str, Any], name: str) -> str:
        value = args.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"missing argument: {name}")
        return value

    def find(args: dict[str, Any]) -> str:
        wanted = need(args, "id")
        flows = [f for f in service.all() if f.flow_id == wanted] or [
            f for f in service.all() if f.flow_id.startswith(wanted)
        ]
        if len(flows) != 1:
            raise ValueError(f"no verification {wanted!r}" if not flows else f"{wanted!r} is ambiguous")
        return flows[0].flow_id

    async def list_(args: dict[str, Any]) -> Any:
        flows = service.all() if args.get("all") else service.pending()
        return [f.describe() for f in flows]

    async def show(args: dict[str, Any]) -> Any:
        return service.machine.flows[find(args)].describe()

    async def confirm(args: dict[str, Any]) -> Any:
        return (await service.confirm(find(args))).describe()

    async def mismatch(args: dict[str, Any]) -> Any:
        return (await service.mismatch(find(args))).describe()

    async def cancel(args: dict[str, Any]) -> Any:
        return (await service.cancel(find(args))).describe()

    async def request(args: dict[str, Any]) -> Any:
        user = need(args, "user")
        room = args.get("room")
        if isinstance(room, str) and room:
            return (await service.request_in_room(room, user)).describe()
        devices = args.get("devices")
        return (await service.request(user, devices if isinstance(devices, list) and devices else None)).describe()

    async def fingerprint(args: dict[str, Any]) -> Any:
        user = args.get("user")
        return await service.fingerprints(user if isinstance(user, str) and user else None)

    async def trust_user(args: dict[str, Any]) -> Any:
        return await service.trust_user(need(args, "user"), need(args, "fingerprint"))

    return {
        "fingerprint": fingerprint,
        "trust-user": trust_user,
        "verification.list": list_,
        "verification.show": show,
        "verification.confirm": confirm,
        "verification.mismatch": mismatch,
        "verification.cancel": cancel,
        "verification.request": request,
    }
