"""IRC bridge: IRC channels <-> Matrix rooms, encrypted rooms included (a relay: the bot speaks on both sides).

Configure networks and their channel links; admins can add links at run time with ``!bridge link #channel``::

    plugins:
      irc_bridge:
        networks:
          libera:
            host: irc.libera.chat
            port: 6697                 # 6697: TLS; a plain-text server (port 6667) needs tls: false
            tls: true
            tls_verify: true           # false only for a self-signed certificate you trust
            nick: ratchet-relay
            username: ratchet          # ident; default: from the nick
            realname: Ratchet Matrix bridge
            password: ${IRC_SERVER_PASSWORD}   # server password (PASS), if any
            sasl_username: ratchet-relay
            sasl_password: ${LIBERA_PASSWORD}
            ping_interval: 120         # seconds of silence before a PING; twice that: reconnect
            channels:
              "#ratchet": "#ratchet:example.org"    # a room id or alias
        relay_joins_parts: false
        private_messages: admin_dm                  # or ignore
        max_lines: 10                               # 0: no limit

Every option is described in ``docs/bridges.md`` (and, commented, in ``config.example.yaml``). An empty ``networks``
or ``channels`` is a config error; a room alias that does not exist yet is retried until it does.

In Matrix, IRC messages appear from the bot as ``**nick**: text``; on IRC, Matrix messages appear as
``<Display Name> text`` (formatting converted to IRC codes, long messages split into lines). Edits become
``s/old/new/`` or ``* corrected: ...``, replies quote the original, files become ``sent a file: name (size)``. An IRC
user's ``s/old/new/`` edits their last message in Matrix.

When the bot runs as an appservice (docs/appservice.md), each IRC user is a ghost instead (``@irc_alice:server``, the
nick as display name, ``ghost_localpart``): it posts their messages, joins and leaves the room as they join, part and
quit, is renamed when they change nick (the same Matrix user, a new display name), and is kicked or banned by the bot
when they are on IRC (where the bot has the power in the room). A Matrix kick or ban of a ghost becomes a KICK (and a
``+b nick!*@*``) on IRC when the bridge is a channel operator, else a notice in the room says it could not. A Matrix
reply to a ghost's message reaches IRC addressed to that nick (``<alice> bob: sure``). Matrix users are still relayed
by the bridge's own IRC connection.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Literal

from bot import mask_secret
from bot.bridge import (
    Bridge,
    BridgeConfig,
    MatrixMessage,
    Portal,
    RemoteMessage,
    RemoteSend,
    check_template,
    escape_localpart,
    sanitize_name,
)

from .connection import IrcConnection, clean_outgoing, irc_lower
from .formatting import html_to_irc, link_irc_mentions, render_remote_lines, strip_irc_formatting

__all__ = ["IrcBridge", "Network"]


class _LinkedByCommand(dict):  # type: ignore[type-arg]
    """The value of ``channels`` when the key is left out: no config links, channels linked with ``!bridge link``.
    (An explicit ``channels: {}`` is a mistake and refused; ``channels:`` with nothing is null, refused too.)"""


@dataclass(frozen=True)
class Network:
    """One IRC network the bridge connects to (every option: ``docs/bridges.md#the-irc-bridge``)."""

    #: The server's host name or address.
    host: str
    #: The server's port: 6697 is the usual TLS port, 6667 the plain-text one.
    port: int = 6697
    #: Speak TLS to the server. A plain-text server is recognised and named ("server does not speak TLS?").
    tls: bool = True
    #: Check the server's certificate (turn off only for a server with a self-signed one you trust).
    tls_verify: bool = True
    #: The bridge's nick; taken, it tries ``nick_``, ``nick__``, then ``nick1``, ``nick2``...
    nick: str = "ratchet"
    #: The user name (ident) sent at registration. Default: the nick's letters and digits, at most 10.
    username: str | None = None
    #: The "real name" others see in WHOIS.
    realname: str = "Ratchet Matrix bridge"
    #: Server password (PASS), if the server wants one.
    password: str | None = field(default=None, repr=False)
    #: SASL PLAIN account (both or neither).
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    #: IRC channel -> Matrix room id or alias. Left out: no links from the config, only ``!bridge link`` ones.
    channels: dict[str, str] = field(default_factory=_LinkedByCommand)
    #: Seconds of silence before the bridge pings the server (twice that without an answer: reconnect).
    ping_interval: float = 120.0

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"host: {self.host!r} is not a host name")
        if not self.channels and not isinstance(self.channels, _LinkedByCommand):
            raise ValueError(
                'channels is empty: link at least one channel ("#channel": "#room:example.org"), or leave the '
                "key out to link channels only with !bridge link"
            )
        for channel, room in self.channels.items():
            if not channel or channel[0] not in "#&+!" or " " in channel or "," in channel:
                raise ValueError(f"channels: {channel!r} is not an IRC channel name (it starts with #)")
            is_id = room.startswith("!") and len(room) > 1  # (room version 12 ids have no ":server")
            is_alias = room.startswith("#") and ":" in room[2:]
            if not (is_id or is_alias) or any(c.isspace() for c in room):
                raise ValueError(
                    f"channels.{channel}: {room!r} is neither a room id (!id) nor an alias (#name:server)"
                )
        if bool(self.sasl_username) != bool(self.sasl_password):
            raise ValueError("set both sasl_username and sasl_password, or neither")
        if not self.nick or " " in self.nick:
            raise ValueError(f"nick: {self.nick!r} is not a valid nick")
        if self.username is not None and (not self.username or any(c.isspace() or c == "@" for c in self.username)):
            raise ValueError(f"username: {self.username!r} is not a valid user name")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is out of range")
        if not self.ping_interval > 0:
            raise ValueError("ping_interval must be more than 0 seconds")


class IrcBridge(Bridge):
    """Relays between IRC channels and Matrix rooms."""

    command_aliases = ("irc",)

    @dataclass(frozen=True)
    class Config(BridgeConfig):
        networks: dict[str, Network] = field(default_factory=dict)
        #: Show IRC joins, parts, quits, kicks and nick changes in the room (as notices).
        relay_joins_parts: bool = False
        #: What to do with private messages to the bridge's nick: drop them, or forward them to the bot's admins.
        private_messages: Literal["ignore", "admin_dm"] = "ignore"
        #: A Matrix message longer than this many IRC lines is cut (its last line says how many were left out); 0: no
        #: limit (a long paste goes out whole, paced by ``rate_limit``).
        max_lines: int = 10
        #: Ghost mode: the ghost's localpart after the appservice's ``ghost_prefix``: ``{nick}`` (the nick, folded to
        #: lower case and escaped) and ``{network}``; with several networks it must contain ``{network}``. Default:
        #: ``{nick}`` with one network, ``{network}_{nick}`` with several.
        ghost_localpart: str | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.networks:
                raise ValueError("networks is empty: configure at least one IRC network under irc_bridge.networks")
            if self.max_lines < 0:
                raise ValueError("max_lines must be 0 (no limit) or more")
            if self.ghost_localpart is None:
                return
            check_template(self.ghost_localpart, ("nick", "network"), required=("nick",))
            literal = self.ghost_localpart.format(nick="x", network="x")
            if not re.fullmatch(r"[a-z0-9._=/-]+", literal):
                raise ValueError(f"ghost_localpart: {self.ghost_localpart!r} makes invalid localparts (lower-case "
                                 "letters, digits and ._=-/ only)")
            if len(self.networks) > 1 and "{network}" not in self.ghost_localpart:
                raise ValueError("ghost_localpart must contain {network} with several networks (the same nick on two "
                                 "networks is two people), e.g. '{network}_{nick}'")

    config: Config

    async def start(self) -> None:
        await super().start()
        self.irc: dict[str, IrcConnection] = {}
        for name, net in self.config.networks.items():
            mask_secret(net.password)  # masked in every log line (the irc library logs raw lines at DEBUG)
            mask_secret(net.sasl_password)
            if net.sasl_username and net.sasl_password:  # SASL PLAIN sends it base64-encoded
                mask_secret(base64.b64encode(f"\0{net.sasl_username}\0{net.sasl_password}".encode()).decode())
            await self.sync_config_portals(name, net.channels)
            if not net.channels and not self.portals_for_network(name):
                self.log.warning("%s: no channel is linked yet; link one with !%s link %s #channel in its room",
                                 name, self.command_name, name)
            connection = IrcConnection(
                name,
                host=net.host,
                port=net.port,
                nick=net.nick,
                tls=net.tls,
                tls_verify=net.tls_verify,
                username=net.username,
                realname=net.realname,
                password=net.password,
                sasl_username=net.sasl_username,
                sasl_password=net.sasl_password,
                ping_interval=net.ping_interval,
                channels=lambda name=name: [p.channel for p in self.portals_for_network(name)],
                relay_membership=self.config.relay_joins_parts,
                ghost_members=self.matrix is not None and self.matrix.ghosts,
            )
            self.irc[name] = connection
            self.add_connection(connection)

    # -- portals ---------------------------------------------------------------------------------------------------

    def normalize_channel(self, network: str, channel: str) -> str:
        return irc_lower(channel)

    async def validate_link(self, network: str, channel: str) -> str | None:
        if not channel or channel[0] not in "#&+!" or " " in channel or "," in channel:
            return f"{channel!r} is not an IRC channel name (it starts with #)"
        return None

    async def on_portal_linked(self, portal: Portal) -> None:
        connection = getattr(self, "irc", {}).get(portal.network)
        if connection is not None:
            connection.join(portal.channel)

    async def on_portal_unlinked(self, portal: Portal) -> None:
        connection = getattr(self, "irc", {}).get(portal.network)
        if connection is not None:
            connection.part(portal.channel)

    # -- ghosts ----------------------------------------------------------------------------------------------------

    def sender_key(self, network: str, sender_id: str) -> str:
        return irc_lower(sender_id)

    def ghost_localpart(self, network: str, name: str) -> str:
        template = self.config.ghost_localpart or ("{nick}" if len(self.config.networks) == 1 else "{network}_{nick}")
        return template.format(nick=escape_localpart(name, irc_lower), network=escape_localpart(network))

    async def on_ghost_removed(self, portal: Portal, sender_id: str, by: str, reason: str | None,
                               *, ban: bool) -> None:
        """A Matrix member kicked or banned an IRC user's ghost: KICK (and ``+b nick!*@*``) them on IRC when the
        bridge is a channel operator there, else say in the room that it could not."""
        connection = getattr(self, "irc", {}).get(portal.network)
        if connection is None:
            return
        verb = "banned" if ban else "kicked"
        if connection.is_op(portal.channel) and connection.connected:
            if ban:
                connection.ban(portal.channel, f"{sender_id}!*@*")
            connection.kick(portal.channel, sender_id, f"{verb} on Matrix by {by}" + (f": {reason}" if reason else ""))
            self.log.info("%s %s: %s %s on Matrix by %s; done on IRC too", portal.network, portal.channel, sender_id,
                          verb, by)
            return
        why = "not connected" if not connection.connected else f"not an operator in {portal.channel}"
        self.log.info("%s %s: %s %s on Matrix by %s; the bridge is %s, so not on IRC", portal.network,
                      portal.channel, sender_id, verb, by, why)
        await self.bot.send_text(
            portal.room_id, f"⚠️ {sender_id} was {verb} here but not on IRC: the bridge is {why}.", notice=True
        )

    # -- Matrix -> IRC -----------------------------------------------------------------------------------------------

    def format_outgoing(self, portal: Portal, message: MatrixMessage, text: str, html: str | None,
                        kind: Literal["message", "action", "notice"]) -> list[RemoteSend]:
        connection = self.irc[portal.network]
        source = html_to_irc(html) if html else text
        template = self.config.remote_action_template if kind == "action" else self.config.remote_template
        name = sanitize_name(message.sender_name)
        lines = render_remote_lines(
            template, name, clean_outgoing(source), connection.line_budget(portal.channel),
            max_lines=self.config.max_lines,
        )
        return [
            RemoteSend(portal.channel, line, event_id=message.event_id, room_id=message.room_id,
                       sender=message.sender, sender_name=name, first=(i == 0))
            for i, line in enumerate(lines)
        ]

    # -- IRC -> Matrix -----------------------------------------------------------------------------------------------

    def prepare_inbound(self, portal: Portal, message: RemoteMessage) -> RemoteMessage:
        if message.kind not in ("message", "action") or self.matrix is None:
            return message
        raw = message.text
        members = self.matrix.members(portal.room_id)
        html, mentioned = link_irc_mentions(
            raw, members, exclude={self.matrix.user_id}, max_mentions=self.config.max_mentions
        )
        return RemoteMessage(
            message.network, message.channel, message.sender_id, message.sender_name, strip_irc_formatting(raw),
            html=html, kind=message.kind, msgtype=message.msgtype, mentions=tuple(mentioned),
        )

    async def on_unlinked_message(self, message: RemoteMessage) -> str | None:
        if not message.extra.get("private") or message.kind not in ("message", "action"):
            return None
        if self.config.private_messages != "admin_dm" or not self.bot.admins:
            self.log.debug("ignored a private message from %s on %s", message.sender_id, message.network)
            return None
        text = strip_irc_formatting(message.text)
        verb = "* " + message.sender_id if message.kind == "action" else message.sender_id + ":"
        event_id = None
        for admin in self.bot.admins:
            event_id = await self.bot.send_dm(
                admin, f"IRC private message on {message.network} from {verb} {text}", notice=True
            )
        return event_id
