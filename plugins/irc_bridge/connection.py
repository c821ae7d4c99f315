"""One IRC network as a :class:`~bot.bridge.RemoteConnection`, on jaraco's ``irc`` library (``irc.client_aio``).

The library parses the protocol, handles CTCP and PING, decodes leniently and dispatches events in the order lines
arrive (so messages reach Matrix in IRC order). This module adds what a bridge needs around it: TLS (with or without
certificate checks), SASL PLAIN through the library's own state machine, nick collisions (433: ``nick_``, ``nick__``,
then ``nick1``, ``nick2``...), joining the portal channels, keepalive pings, and turning events into
:class:`~bot.bridge.RemoteMessage` values.

A TLS/plain-text mismatch is named instead of timing out: a plain-text server (ngircd, say) stays silent while it
waits for a line, so a TLS handshake with it would hang until the server drops the connection. When the handshake has
not finished after :data:`TLS_PROBE_AFTER` seconds, or fails, one plain-text probe connection (``CAP LS``, then
``QUIT``) checks whether the port speaks IRC in the clear; if it does, connecting fails at once with
:class:`TlsMismatchError` ("server does not speak TLS? set tls: false"). The other way round (``tls: false`` against a
TLS port), a server that closes the connection before saying anything gets the hint to set ``tls: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

from irc import client_aio
from irc import connection as irc_connection
from irc import modes as irc_modes
from irc.client import Event, NickMask, is_channel
from jaraco.stream import buffer

from bot.bridge import RemoteCapabilities, RemoteConnection, RemoteMessage, RemoteSend

from .formatting import irc_line_budget

__all__ = ["IrcConnection", "TlsMismatchError", "irc_lower", "next_nick", "probe_plain_irc"]

log = logging.getLogger("ratchet.plugin.irc_bridge")

#: Nick attempts before registration is given up (the supervisor then retries later).
MAX_NICK_ATTEMPTS = 12
#: Seconds a TLS handshake may take before a plain-text probe checks whether the port speaks TLS at all (a TLS server
#: answers a handshake within a round trip or two; a plain-text IRC server stays silent until it times the client out).
TLS_PROBE_AFTER = 2.0
#: Seconds a TLS handshake may take in all.
TLS_HANDSHAKE_TIMEOUT = 15.0
#: Seconds the plain-text probe waits for the server's first line.
PROBE_TIMEOUT = 3.0
#: The first word of a line from a plain-text IRC server: a prefix, a numeric or one of the commands servers send
#: unasked (``NOTICE AUTH``, ``PING``, ``ERROR``), or the answer to ``CAP LS``.
_IRC_LINE = re.compile(rb"^(?::\S+ |NOTICE |PING |ERROR |CAP |\d{3} )")
#: Control characters that must not reach IRC from Matrix text (CTCP delimiter, NUL, line breaks...), keeping the
#: formatting codes.
_UNSAFE = re.compile(r"[\x00\x01\x04-\x08\x0b\x0c\x0e\x10\x12-\x15\x17-\x1c\x7f]")


def irc_lower(name: str) -> str:
    """RFC 1459 case folding (``[]\\~`` are the upper case of ``{}|^``), for comparing nicks and channels."""
    return name.lower().translate(str.maketrans("[]\\~", "{}|^"))


def next_nick(base: str, attempt: int, max_len: int = 30) -> str:
    """The nick to try after ``attempt`` collisions: ``base_``, ``base__``, then ``base1``, ``base2``..."""
    if attempt <= 0:
        return base[:max_len]
    suffix = "_" * attempt if attempt <= 2 else str(attempt - 2)
    return base[: max(1, max_len - len(suffix))] + suffix


def clean_outgoing(text: str) -> str:
    """Text from Matrix made safe for an IRC line: no CTCP delimiters or other stray control characters."""
    return _UNSAFE.sub("", text)


class TlsMismatchError(ConnectionError):
    """The server answered in plain text where a TLS handshake was expected (``tls: true`` on a plain-text port)."""


async def probe_plain_irc(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``host:port`` speaks IRC in plain text: connect without TLS, send ``CAP LS 302`` and see whether the
    first line that comes back looks like IRC (then say ``QUIT``). False on any error or silence."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(b"CAP LS 302\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        plain = bool(_IRC_LINE.match(line.lstrip()))
        if plain:
            writer.write(b"QUIT :ratchet checking for TLS\r\n")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 1)
        return plain
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


class IrcConnection(RemoteConnection):
    """A connection to one IRC network for the bridge (see the module docstring)."""

    capabilities = RemoteCapabilities()  # IRC has no ids, edits, replies, reactions or redactions

    def __init__(
        self,
        network: str,
        *,
        host: str,
        port: int,
        nick: str,
        tls: bool = True,
        tls_verify: bool = True,
        username: str | None = None,
        realname: str = "Ratchet Matrix bridge",
        password: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        ping_interval: float = 120.0,
        channels: Callable[[], list[str]] = list,
        relay_membership: bool = False,
        ghost_members: bool = False,
    ) -> None:
        super().__init__(network)
        self.host = host
        self.port = port
        self.wanted_nick = nick
        self.tls = tls
        self.tls_verify = tls_verify
        self.username = username or re.sub(r"[^A-Za-z0-9]", "", nick)[:10] or "ratchet"
        self.realname = realname
        self.password = password
        self.sasl_username = sasl_username
        self.sasl_password = sasl_password
        self.ping_interval = ping_interval
        self.channels = channels
        self.relay_membership = relay_membership
        #: Ghost mode: deliver every membership change (with ``extra``), each channel's NAMES and bans.
        self.ghost_members = ghost_members
        self.nick = nick
        #: Nick (folded) -> ``nick!user@host`` as last seen (JOIN, messages), for matching ban masks.
        self.masks: dict[str, str] = {}
        #: Channels (folded) where the bridge is a channel operator (or half-op: it may kick).
        self.ops: set[str] = set()
        #: NAMES being received: channel (folded) -> nicks as the server spells them.
        self._names: dict[str, list[str]] = {}
        #: Our own ``user``/``host`` as others see them (learnt from our JOIN), for the line budget.
        self.own_user: str | None = None
        self.own_host: str | None = None
        #: Channel (folded) -> nicks (folded) in it, as far as NAMES/JOIN/PART/QUIT/NICK told us.
        self.members: dict[str, set[str]] = {}
        self.joined: set[str] = set()
        self._reactor: client_aio.AioReactor | None = None
        self._conn: client_aio.AioConnection | None = None
        self._registered: asyncio.Future[None] | None = None
        self._closed = asyncio.Event()
        self._nick_attempts = 0
        self._last_rx = time.monotonic()
        #: Lines received since the current connection was opened (a server that closes before any: wrong TLS?).
        self._rx_lines = 0
        #: The TLS mismatch was logged in this outage (logged once, not at every retry).
        self._mismatch_logged = False

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        conn = self._conn
        transport = getattr(conn, "transport", None)
        return bool(conn is not None and conn.connected and transport is not None and not transport.is_closing())

    def is_own(self, sender_id: str) -> bool:
        return irc_lower(sender_id) == irc_lower(self.nick)

    def describe(self) -> str:
        tls = " (TLS)" if self.tls else ""
        joined = len(self.joined)
        return f"{self.host}:{self.port}{tls} as {self.nick}, in {joined} channel{'s' * (joined != 1)}"

    def line_budget(self, channel: str) -> int:
        """Bytes of text one PRIVMSG to ``channel`` may carry (4 spare for a longer nick after a collision)."""
        return irc_line_budget(self.nick, channel, user=self.own_user, host=self.own_host) - 4

    # -- RemoteConnection ------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._registered = loop.create_future()
        self._nick_attempts = 0
        self._rx_lines = 0
        self.nick = self.wanted_nick
        self.members.clear()
        self.joined.clear()
        self.ops.clear()
        self._names.clear()
        reactor = client_aio.AioReactor(loop=loop)
        conn = reactor.server()
        conn.buffer_class = buffer.LenientDecodingLineBuffer  # UTF-8, falling back to Latin-1 per line
        self._reactor, self._conn = reactor, conn
        for event, handler in self._handlers().items():
            reactor.add_global_handler(event, handler)
        use_sasl = bool(self.sasl_username and self.sasl_password)
        if use_sasl:
            # irc's SASL PLAIN state machine (ServerConnection) is only started by its blocking connect(); start it
            # here the same way: CAP LS goes out first (see _factory), then NICK/USER, and the machine takes over.
            conn.sasl_login = self.sasl_username
            conn._sasl_step = conn._sasl_cap_ls
            for event in ("cap", "authenticate", "saslsuccess", "saslfail"):
                reactor.add_global_handler(event, conn._sasl_state_machine, -42)
        await conn.connect(
            self.host,
            self.port,
            self.nick,
            password=self.password,
            username=self.username,
            ircname=self.realname,
            connect_factory=self._factory(send_cap=use_sasl),
        )
        if use_sasl:
            conn.password = self.sasl_password  # read by the SASL machine (not sent as PASS: that went already)
        self._last_rx = time.monotonic()
        try:
            await self._registered  # raises if registration failed; the supervisor's timeout bounds the wait
        except ConnectionError as exc:
            if not self.tls and self._rx_lines == 0 and str(exc) == "disconnected":
                raise ConnectionError(
                    f"{self.host}:{self.port} closed the connection before saying anything "
                    "(server speaks only TLS? set tls: true)"
                ) from None
            raise
        self._mismatch_logged = False
        for channel in self.channels():
            self.join(channel)

    def _factory(self, *, send_cap: bool) -> Callable[..., Any]:
        context: ssl.SSLContext | None = None
        if self.tls:
            context = ssl.create_default_context()
            if not self.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        base = irc_connection.AioFactory()

        async def connect(protocol: Any, address: tuple[str, int]) -> tuple[Any, Any]:
            if context is None:
                transport, proto = await base(protocol, address)
            else:
                transport, proto = await self._open_tls(protocol, address, context)
            if send_cap:
                transport.write(b"CAP LS\r\n")
            return transport, proto

        return connect

    async def _open_tls(self, protocol: Any, address: tuple[str, int], context: ssl.SSLContext) -> tuple[Any, Any]:
        """Open the TLS connection; name a plain-text server instead of waiting for its timeout (module docstring)."""
        loop = asyncio.get_running_loop()
        host, port = address
        attempt = asyncio.ensure_future(loop.create_connection(
            lambda: protocol, host, port, ssl=context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
        ))
        try:
            done, _ = await asyncio.wait({attempt}, timeout=TLS_PROBE_AFTER)
            if not done and await probe_plain_irc(host, port):
                raise self._mismatch()
            return await attempt
        except ssl.SSLCertVerificationError as exc:
            log.error("%s: the certificate of %s:%s does not check out (%s); if the server has a self-signed "
                      "certificate you trust, set tls_verify: false", self.network, host, port, exc.verify_message)
            raise
        except (ssl.SSLError, ConnectionResetError, EOFError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if await probe_plain_irc(host, port):
                raise self._mismatch() from exc
            raise
        finally:
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt

    def _mismatch(self) -> TlsMismatchError:
        hint = "server does not speak TLS? set tls: false (or use its TLS port, often 6697)"
        if not self._mismatch_logged:
            self._mismatch_logged = True
            log.error("%s: TLS handshake with %s:%s failed: the server answers in plain text; %s",
                      self.network, self.host, self.port, hint)
        return TlsMismatchError(f"TLS handshake with {self.host}:{self.port} failed: plain-text IRC there; {hint}")

    async def run(self) -> None:
        interval = max(1.0, self.ping_interval)
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), interval / 2)
            if self._closed.is_set():
                break
            idle = time.monotonic() - self._last_rx
            if idle > interval * 2:
                raise ConnectionError(f"no data from the server for {idle:.0f}s")
            if idle > interval and self.connected and self._conn is not None:
                self._conn.ping(self.host)

    async def send(self, item: RemoteSend) -> str | None:
        conn = self._conn
        if conn is None or not self.connected:
            raise ConnectionError("not connected")
        text = clean_outgoing(item.text)
        if item.kind == "notice":
            conn.notice(item.channel, text)
        elif item.kind == "action" and item.payload and item.payload.get("ctcp_action"):
            conn.action(item.channel, text)
        else:
            conn.privmsg(item.channel, text)
        return None

    async def close(self) -> None:
        conn, reactor = self._conn, self._reactor
        self._conn = self._reactor = None
        if conn is not None:
            with contextlib.suppress(Exception):
                if conn.connected:
                    conn.disconnect("Ratchet bridge stopping")
            with contextlib.suppress(Exception):
                conn.transport.close()
        if reactor is not None:
            with contextlib.suppress(Exception):
                reactor.connections.clear()
        self._closed.set()
        if self._registered is not None and not self._registered.done():
            self._registered.set_exception(ConnectionError("closed"))
            self._registered.exception()

    # -- channels ----------------------------------------------------------------------------------------------------

    def join(self, channel: str) -> None:
        if self._conn is not None and self.connected:
            self._conn.join(channel)

    def part(self, channel: str, reason: str = "unlinked from Matrix") -> None:
        if self._conn is not None and self.connected:
            self._conn.part(channel, reason)

    def is_op(self, channel: str) -> bool:
        """True if the bridge may kick and ban in ``channel`` (it is an operator or half-operator there)."""
        return irc_lower(channel) in self.ops

    def kick(self, channel: str, nick: str, reason: str = "") -> bool:
        """``KICK channel nick :reason``; False when not connected."""
        if self._conn is None or not self.connected:
            return False
        self._conn.kick(channel, nick, clean_outgoing(reason)[:200])
        return True

    def ban(self, channel: str, mask: str) -> bool:
        """``MODE channel +b mask``; False when not connected."""
        if self._conn is None or not self.connected:
            return False
        self._conn.mode(channel, f"+b {mask}")
        return True

    # -- events --------------------------------------------------------------------------------------------------------

    def _handlers(self) -> dict[str, Callable[[Any, Event], Any]]:
        return {
            "all_raw_messages": self._on_raw,
            "welcome": self._on_welcome,
            "nicknameinuse": self._on_nick_taken,
            "nickcollision": self._on_nick_taken,
            "unavailresource": self._on_nick_taken,
            "erroneusnickname": self._on_bad_nick,
            "login_failed": self._on_login_failed,
            "passwdmismatch": self._on_login_failed,
            "error": self._on_error,
            "disconnect": self._on_disconnect,
            "namreply": self._on_names,
            "endofnames": self._on_end_of_names,
            "mode": self._on_mode,
            "join": self._on_join,
            "part": self._on_part,
            "kick": self._on_kick,
            "quit": self._on_quit,
            "nick": self._on_nick,
            "pubmsg": self._on_pubmsg,
            "pubnotice": self._on_pubnotice,
            "action": self._on_action,
            "privmsg": self._on_privmsg,
        }

    def _fail_registration(self, reason: str) -> None:
        if self._registered is not None and not self._registered.done():
            self._registered.set_exception(ConnectionError(reason))

    def _on_raw(self, _conn: Any, _event: Event) -> None:
        self._last_rx = time.monotonic()
        self._rx_lines += 1

    def _on_welcome(self, conn: Any, event: Event) -> None:
        self.nick = conn.get_nickname() or (event.target or self.nick)
        log.info("%s: registered as %s", self.network, self.nick)
        if self._registered is not None and not self._registered.done():
            self._registered.set_result(None)

    def _on_nick_taken(self, conn: Any, event: Event) -> None:
        if self._registered is not None and self._registered.done():
            return  # a nick change later on; we keep the nick we have
        self._nick_attempts += 1
        if self._nick_attempts > MAX_NICK_ATTEMPTS:
            self._fail_registration("no free nick")
            return
        self.nick = next_nick(self.wanted_nick, self._nick_attempts)
        log.info("%s: nick taken, trying %s", self.network, self.nick)
        conn.nick(self.nick)

    def _on_bad_nick(self, conn: Any, event: Event) -> None:
        if self._registered is not None and not self._registered.done():
            self._fail_registration(f"the server refuses the nick {self.nick!r}")

    def _on_login_failed(self, _conn: Any, event: Event) -> None:
        reason = " ".join(str(a) for a in event.arguments) or event.type
        log.error("%s: login failed: %s", self.network, reason)
        self._fail_registration(f"login failed: {reason}")
        with contextlib.suppress(Exception):
            self._conn.disconnect("login failed")  # type: ignore[union-attr]

    def _on_error(self, _conn: Any, event: Event) -> None:
        reason = " ".join(str(a) for a in event.arguments) or "ERROR"
        self._fail_registration(reason)
        self._closed.set()

    def _on_disconnect(self, _conn: Any, _event: Event) -> None:
        self._fail_registration("disconnected")
        self._closed.set()

    def _on_names(self, _conn: Any, event: Event) -> None:
        # arguments: [type, channel, "nick1 @nick2 +nick3"]
        if len(event.arguments) < 3:
            return
        channel = irc_lower(event.arguments[1])
        raw = event.arguments[2].split()
        names = {irc_lower(n.lstrip("~&@%+")) for n in raw}
        self.members.setdefault(channel, set()).update(names)
        for entry in raw:
            nick = entry.lstrip("~&@%+")
            if self.is_own(nick):
                if entry[: len(entry) - len(nick)].strip("+"):  # ~ & @ %: may kick
                    self.ops.add(channel)
            else:
                self._names.setdefault(channel, []).append(nick)

    def _on_end_of_names(self, _conn: Any, event: Event) -> None:
        # arguments: [channel, "End of NAMES list"]
        channel = event.arguments[0] if event.arguments else ""
        names = self._names.pop(irc_lower(channel), [])
        if self.ghost_members and channel:
            self.deliver(RemoteMessage(self.network, channel, "", "", kind="members", anonymous=True,
                                       extra={"members": names}))

    def _on_mode(self, _conn: Any, event: Event) -> None:
        channel = event.target
        if not is_channel(channel):
            return
        try:
            changes = irc_modes.parse_channel_modes(" ".join(event.arguments))
        except Exception:  # a mode string the library cannot read: nothing we act on
            return
        by = NickMask(event.source).nick
        for sign, mode, param in changes:
            if mode in "oqah" and param and self.is_own(param):
                (self.ops.add if sign == "+" else self.ops.discard)(irc_lower(channel))
            elif mode == "b" and sign == "+" and param and self.ghost_members:
                for nick in self._banned(channel, param):
                    self.deliver(RemoteMessage(
                        self.network, channel, nick, nick, f"{nick} was banned from {channel} by {by}", kind="kick",
                        msgtype="m.notice", extra={"ban": True, "by": by, "reason": f"ban {param}"},
                    ))

    def _banned(self, channel: str, mask: str) -> list[str]:
        """The members of ``channel`` whose ``nick!user@host`` (as far as known) matches the ban ``mask``."""
        pattern = irc_lower(mask)
        found = []
        for folded in sorted(self.members.get(irc_lower(channel), ())):
            if self.is_own(folded):
                continue
            full = self.masks.get(folded)
            if full is None:
                # user@host unknown (seen in NAMES only): only a mask that matches any user@host counts
                matches = all(fnmatch.fnmatchcase(f"{folded}!{probe}", pattern) for probe in ("x@x", "y@y"))
            else:
                matches = fnmatch.fnmatchcase(irc_lower(full), pattern)
            if matches:
                found.append(NickMask(full).nick if full else folded)
        return found

    def _on_join(self, _conn: Any, event: Event) -> None:
        source = NickMask(event.source)
        channel = event.target
        if self.is_own(source.nick):
            self.own_user, self.own_host = source.user, source.host
            self.joined.add(irc_lower(channel))
            self.members.setdefault(irc_lower(channel), set()).add(irc_lower(source.nick))
            return
        self.members.setdefault(irc_lower(channel), set()).add(irc_lower(source.nick))
        self.masks[irc_lower(source.nick)] = str(event.source)
        if self.relay_membership or self.ghost_members:
            self._member_event(channel, source.nick, "join", f"{source.nick} joined {channel}")

    def _on_part(self, _conn: Any, event: Event) -> None:
        source = NickMask(event.source)
        channel = event.target
        if self.is_own(source.nick):
            self.joined.discard(irc_lower(channel))
            self.members.pop(irc_lower(channel), None)
            self.ops.discard(irc_lower(channel))
            return
        self.members.get(irc_lower(channel), set()).discard(irc_lower(source.nick))
        self.sender_gone(source.nick, channel)
        if self.relay_membership or self.ghost_members:
            said = event.arguments[0] if event.arguments and event.arguments[0] else ""
            reason = f" ({said})" if said else ""
            self._member_event(channel, source.nick, "part", f"{source.nick} left {channel}{reason}",
                               reason=said or f"left {channel}")

    def _on_kick(self, _conn: Any, event: Event) -> None:
        channel, kicked = event.target, event.arguments[0] if event.arguments else ""
        if self.is_own(kicked):
            self.joined.discard(irc_lower(channel))
            self.ops.discard(irc_lower(channel))
            log.warning("%s: kicked from %s; rejoining", self.network, channel)
            self.join(channel)
            return
        self.members.get(irc_lower(channel), set()).discard(irc_lower(kicked))
        self.sender_gone(kicked, channel)
        if self.relay_membership or self.ghost_members:
            by = NickMask(event.source).nick
            said = event.arguments[1] if len(event.arguments) > 1 else ""
            self._member_event(channel, kicked, "kick", f"{kicked} was kicked from {channel} by {by}",
                               by=by, reason=said if said and irc_lower(said) != irc_lower(by) else "")

    def _on_quit(self, _conn: Any, event: Event) -> None:
        nick = NickMask(event.source).nick
        folded = irc_lower(nick)
        reason = f" ({event.arguments[0]})" if event.arguments and event.arguments[0] else ""
        self.sender_gone(nick)  # in every channel: whoever takes the nick next must not edit their messages
        self.masks.pop(folded, None)
        gone = [channel for channel, names in self.members.items() if folded in names]
        for i, channel in enumerate(gone):
            self.members[channel].discard(folded)
            if self.relay_membership or self.ghost_members:
                said = event.arguments[0] if event.arguments and event.arguments[0] else ""
                self._member_event(channel, nick, "quit", f"{nick} quit{reason}", reason=said or "quit",
                                   last=i == len(gone) - 1)

    def _on_nick(self, _conn: Any, event: Event) -> None:
        old, new = NickMask(event.source).nick, event.target
        if self.is_own(old):
            self.nick = new
            return
        self.sender_gone(old)  # the old nick is free for anyone now
        mask = self.masks.pop(irc_lower(old), None)
        if mask is not None:
            self.masks[irc_lower(new)] = new + mask[len(NickMask(mask).nick):]
        for channel, names in self.members.items():
            if irc_lower(old) in names:
                names.discard(irc_lower(old))
                names.add(irc_lower(new))
                if self.relay_membership or self.ghost_members:
                    self._member_event(channel, old, "nick", f"{old} is now known as {new}", new_name=new)

    def _member_event(self, channel: str, nick: str, kind: Any, text: str, **extra: Any) -> None:
        self.deliver(RemoteMessage(self.network, channel, nick, nick, text, kind=kind, msgtype="m.notice",
                                   extra=extra))

    def _message(self, event: Event, kind: Any, *, msgtype: Any = "m.text") -> None:
        source = NickMask(event.source)
        if not event.source or "!" not in str(event.source):
            return  # from the server itself
        text = event.arguments[0] if event.arguments else ""
        target = event.target
        private = not is_channel(target)
        self.masks[irc_lower(source.nick)] = str(event.source)
        self.deliver(
            RemoteMessage(
                self.network,
                source.nick if private else target,
                source.nick,
                source.nick,
                text,
                kind=kind,
                msgtype=msgtype,
                extra={"private": private, "raw": True},
            )
        )

    def _on_pubmsg(self, _conn: Any, event: Event) -> None:
        self._message(event, "message")

    def _on_pubnotice(self, _conn: Any, event: Event) -> None:
        self._message(event, "message", msgtype="m.notice")

    def _on_action(self, _conn: Any, event: Event) -> None:
        self._message(event, "action")

    def _on_privmsg(self, _conn: Any, event: Event) -> None:
        self._message(event, "message")
