"""Webhooks bridge: HTTP into Matrix rooms (encrypted ones too), and Matrix rooms out to HTTP.

Inbound: ``POST http://127.0.0.1:8470/hooks/<name>`` with the hook's secret (``Authorization: Bearer <secret>``, or an
HMAC-SHA256 signature header like GitHub's ``X-Hub-Signature-256`` for ``auth: hmac``) posts the JSON payload into the
hook's room through its template: ``generic`` (``{"text": "..."}``), ``alertmanager`` (firing/resolved alerts
summarised) or ``push`` (a GitHub/Gitea/Forgejo push event). Bad requests are answered with a 4xx and a JSON body
saying why, and nothing is posted: 401 unknown hook or bad or missing credentials (the same answer for both, so hook
names cannot be probed), 413 body too large (refused from its Content-Length before it is read), 415 not JSON, 400
malformed JSON or fields the template does not know. Signed hooks refuse replays: a signature seen in the last
``max_age`` seconds (409), or one whose signed ``X-Ratchet-Timestamp`` is older (401). A hook sending too fast is
answered 429, and 503 when too many messages wait for Matrix.

Outbound: every message in an outbound hook's room is POSTed to its URL as JSON (sender, room, body, event id...),
retried with backoff while the URL fails::

    plugins:
      webhooks:
        port: 8470
        hooks:
          alerts: {room: "#ops:example.org", secret: "${ALERTS_TOKEN}", template: alertmanager}
          git:    {room: "#dev:example.org", secret: "${GIT_SECRET}", auth: hmac, template: push}
        outbound:
          archive: {room: "#ops:example.org", url: "https://archive.example.org/matrix", secret: "${ARCHIVE_KEY}"}

When the bot's own HTTP listener is on (the ``http`` config section, for metrics and health checks), the inbound
endpoint is served there, under ``path_prefix``, and ``host``/``port`` are not used: one server, one port.

In appservice mode (docs/appservice.md) a hook with ``ghost: <name>`` posts as that ghost (``@{ghost_prefix}<name>``,
display name ``display_name`` or the name, avatar ``avatar: mxc://...``), its text as is; hooks without one are posted
by the bot as in relay mode.

This plugin is the worked example of ``docs/bridges.md``: a bridge on :class:`bot.bridge.Bridge`, with its HTTP side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from bot import mask_secret
from bot.bridge import Bridge, BridgeConfig, GhostIdentity, MatrixMessage, Portal, RemoteMessage, RemoteSend

from .connection import HookServer, OutboundHook
from .templates import redact_url, url_secrets

__all__ = ["Hook", "Outbound", "Webhooks"]

#: The network name of the inbound endpoint (its channels are the hook names).
INBOUND = "http"


@dataclass(frozen=True)
class Hook:
    """An inbound hook: who may post (its secret) and how the payload is shown."""

    secret: str = field(repr=False)
    #: The room to post into (id or alias); without one, link it with ``!webhooks link <name>`` in the room.
    room: str | None = None
    #: ``bearer``: ``Authorization: Bearer <secret>``; ``hmac``: a signature of the body with the secret.
    auth: Literal["bearer", "hmac"] = "bearer"
    template: Literal["generic", "alertmanager", "push"] = "generic"
    msgtype: Literal["m.text", "m.notice"] = "m.text"
    #: Shown as the author (``**name**: text``); by default messages are posted as they are.
    display_name: str | None = None
    #: Signed hooks: seconds a signature is remembered (the same one again is a replay, refused) and, with a signed
    #: ``X-Ratchet-Timestamp``, how old that timestamp may be.
    max_age: float = 300.0
    #: Signed hooks: refuse requests without a signed ``X-Ratchet-Timestamp`` (GitHub, Gitea and Forgejo send none).
    require_timestamp: bool = False
    #: Appservice mode: post as this ghost (the localpart after the appservice's ``ghost_prefix``: lower-case letters,
    #: digits and ``._=-/``), named ``display_name`` (else this name); ignored in relay mode.
    ghost: str | None = None
    #: Appservice mode: the ghost's avatar, an ``mxc://`` URL.
    avatar: str | None = None

    def __post_init__(self) -> None:
        if self.ghost is not None and not re.fullmatch(r"[a-z0-9._=/-]+", self.ghost):
            raise ValueError(f"ghost: {self.ghost!r} is not a localpart (lower-case letters, digits and ._=-/ only)")
        if self.avatar is not None and not self.avatar.startswith("mxc://"):
            raise ValueError("avatar must be an mxc:// URL (upload the image to the homeserver first)")
        if len(self.secret) < 16:
            raise ValueError("a hook's secret must be at least 16 characters")
        if self.max_age <= 0:
            raise ValueError("max_age must be positive")
        if self.require_timestamp and self.auth != "hmac":
            raise ValueError("require_timestamp is for signed hooks (auth: hmac)")


@dataclass(frozen=True)
class Outbound:
    """An outbound hook: the messages of ``room`` are POSTed to ``url``."""

    room: str
    #: Shown as ``scheme://host/path`` in logs and ``!webhooks status``, token-like path segments and the query left
    #: out, and masked in every log line.
    url: str = field(repr=False)
    #: Signs each body: ``X-Ratchet-Signature-256: sha256=<HMAC-SHA256 hex>``.
    secret: str | None = field(default=None, repr=False)
    #: Attempts per message before it is dropped (with backoff between them).
    max_attempts: int = 5
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{redact_url(self.url)!r} is not an http(s) URL")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


class Webhooks(Bridge):
    """Posts HTTP webhooks into rooms and rooms' messages to HTTP endpoints."""

    command_name = "webhooks"
    command_aliases = ("hooks",)

    @dataclass(frozen=True)
    class Config(BridgeConfig):
        #: Where the inbound endpoint listens (keep it on loopback behind a reverse proxy for TLS).
        host: str = "127.0.0.1"
        port: int = 8470
        path_prefix: str = "/hooks/"
        #: Largest request body accepted (bytes).
        max_body_bytes: int = 65536
        hooks: dict[str, Hook] = field(default_factory=dict)
        outbound: dict[str, Outbound] = field(default_factory=dict)
        #: Reactions are not sent to outbound hooks by default.
        relay_reactions: bool = False
        #: Outbound hooks are rate limited like any remote network (requests per second).
        rate_limit: float = 5.0
        rate_burst: int = 10
        #: Requests per second one inbound hook may post (beyond it: 429), and the burst.
        sender_rate_limit: float = 2.0
        sender_rate_burst: int = 20

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0 <= self.port < 65536:
                raise ValueError(f"port {self.port} is out of range")
            if not self.path_prefix.startswith("/"):
                raise ValueError("path_prefix must start with /")
            if self.max_body_bytes < 1024:
                raise ValueError("max_body_bytes must be at least 1024")

    config: Config

    async def start(self) -> None:
        await super().start()
        cfg = self.config
        for hook in cfg.hooks.values():
            mask_secret(hook.secret)
        for out in cfg.outbound.values():
            mask_secret(out.secret)
            for part in url_secrets(out.url):
                mask_secret(part)
        await self.sync_config_portals(INBOUND, {n: h.room for n, h in cfg.hooks.items() if h.room})
        listener = self.bot.http  # the bot's HTTP listener (metrics, health): the hooks share it when it runs
        if listener is not None and cfg.path_prefix.strip("/") == "":
            raise ValueError("path_prefix '/' would take every path of the bot's HTTP listener (http: in the "
                             "config); use e.g. /hooks/")
        self.server = HookServer(
            INBOUND, host=cfg.host, port=cfg.port, prefix=cfg.path_prefix, max_body=cfg.max_body_bytes,
            hooks=cfg.hooks, linked=lambda name: (INBOUND, name) in self.portals, listener=listener,
        )
        self.add_connection(self.server)
        for name, out in cfg.outbound.items():
            network = f"out:{name}"
            await self.sync_config_portals(network, {name: out.room})
            self.add_connection(
                OutboundHook(network, url=out.url, secret=out.secret, timeout=out.timeout),
                max_attempts=out.max_attempts,
            )

    def ghost_identity(self, message: RemoteMessage) -> GhostIdentity | None:
        """Ghost mode: a hook with ``ghost`` posts as that ghost (keeping the ``**sender**:`` prefix when its payload
        names someone); other hooks' messages are posted by the bot, as in relay mode."""
        hook = self.config.hooks.get(message.channel) if message.network == INBOUND else None
        if hook is None or hook.ghost is None:
            return None
        return GhostIdentity(hook.ghost, hook.display_name or hook.ghost, hook.avatar,
                             relay_name=bool(message.extra.get("named")))

    def parse_remote_channel(self, text: str) -> tuple[str, str]:
        """``!webhooks link <hook>``: the name of an inbound hook."""
        name = text.strip()
        if not name or " " in name:
            raise ValueError(f"usage: {self.command_name} link <hook name>")
        return INBOUND, name

    async def validate_link(self, network: str, channel: str) -> str | None:
        if channel not in self.config.hooks:
            known = ", ".join(sorted(self.config.hooks)) or "none"
            return f"there is no hook called {channel!r} in the config (hooks: {known})"
        return None

    def format_outgoing(self, portal: Portal, message: MatrixMessage, text: str, html: str | None,
                        kind: Literal["message", "action", "notice"]) -> list[RemoteSend]:
        payload = {
            "event_id": message.event_id,
            "room": message.room_id,
            "sender": message.sender,
            "sender_name": message.sender_name,
            "msgtype": message.msgtype,
            "body": message.body or text,
            "timestamp": message.timestamp,
        }
        if message.html:
            payload["formatted_body"] = message.html
        if message.reply_to:
            payload["reply_to"] = message.reply_to
        if message.edit_of:
            payload["edit_of"] = message.edit_of
        if message.is_media:
            payload["file"] = {"name": message.media_name, "size": message.media_size,
                               "mimetype": message.media_mimetype}
        return [RemoteSend(portal.channel, text, event_id=message.event_id, room_id=message.room_id,
                           sender=message.sender, sender_name=message.sender_name, payload=payload)]
