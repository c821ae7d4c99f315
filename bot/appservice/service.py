"""Appservice mode, assembled: tokens, the bot's client on the as_token, ghosts, the transaction source and the
homeserver-facing server. The runtime (bot/runtime/runtime.py) opens one with :meth:`Appservice.open` when the config
has an ``appservice`` section and then pumps transactions instead of syncing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bot.appservice.device import open_bot_device
from bot.appservice.ghost_devices import GhostDevices
from bot.appservice.ghosts import Ghost, Ghosts
from bot.appservice.registration import AppserviceTokens, Namespaces, resolve_tokens
from bot.appservice.server import MAX_TRANSACTION, AppserviceServer, Query
from bot.appservice.source import TransactionSource
from bot.config import Config
from bot.errors import ConfigError, MatrixRequestError, SessionError
from bot.http_listener import HttpListener, ListenerError
from bot.log import add_secret
from bot.matrix.client import RatchetClient, make_appservice_client
from bot.matrix.requests import request_json
from bot.storage.backend import Storage
from bot.storage.state import StateStore

__all__ = ["Appservice"]

log = logging.getLogger("ratchet.appservice")


class Appservice:
    """One appservice: its bot's client (acting with the as_token), its ghosts and, once bound to the runtime's
    state, its transaction source and HTTP server. What bridges see of it is :meth:`ghost` and the query hooks."""

    def __init__(
        self, config: Config, tokens: AppserviceTokens, client: RatchetClient, storage: Storage | None = None
    ) -> None:
        assert config.appservice is not None
        self.config = config
        self.section = config.appservice
        self._tokens = tokens
        self.client = client
        self.namespaces = Namespaces.from_config(config)
        self.ghosts = Ghosts(client, self.namespaces)
        self.storage = storage
        if storage is not None and client.olm is not None and self.section.ghost_devices:
            self.ghosts.devices = GhostDevices(
                client, storage, as_token=tokens.as_token, pickle_key=config.pickle_key,
                device_name=config.device_name, is_ghost=self.namespaces.is_ghost, is_ours=self.namespaces.is_ours,
                limit=self.section.ghost_device_cache,
            )
        self.source: TransactionSource | None = None
        self.server: AppserviceServer | None = None
        self._ping_task: asyncio.Task[None] | None = None

    @property
    def encrypted(self) -> bool:
        """True when the bot has a device and encrypts (``appservice.encryption``)."""
        return self.client.olm is not None

    @classmethod
    async def open(cls, config: Config, storage: Storage | None = None) -> Appservice:
        """Read the tokens and check the as_token with the homeserver (``/account/whoami`` must name the bot); with
        ``appservice.encryption`` (and ``storage``), open the bot's device (bot/appservice/device.py).

        Raises :class:`~bot.errors.SessionError` saying what to do when the tokens are missing or not registered.
        """
        assert config.appservice is not None
        try:
            tokens = resolve_tokens(config, create=False)
        except ConfigError as exc:
            raise SessionError(str(exc)) from None
        if tokens is None:
            path = config.appservice.tokens_path(config.data_dir)
            raise SessionError(
                f"no appservice tokens: {path} does not exist and the config sets no appservice.as_token. Run "
                "`ratchet appservice registration -c CONFIG -o registration.yaml` and register the file with the "
                "homeserver (docs/appservice.md)"
            )
        add_secret(tokens.as_token)
        add_secret(tokens.hs_token)
        client = make_appservice_client(config.homeserver, config.user_id, tokens.as_token)
        try:
            who = await request_json(client, "GET", "/_matrix/client/v3/account/whoami")
        except MatrixRequestError as err:
            await client.close()
            if err.errcode in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
                raise SessionError(
                    "the homeserver does not know this appservice's as_token: add the registration file to "
                    "app_service_config_files in homeserver.yaml and restart the homeserver (docs/appservice.md)"
                ) from None
            raise SessionError(f"cannot check the as_token with the homeserver: {err}") from None
        user_id = who.get("user_id") if isinstance(who, dict) else None
        if user_id != config.user_id:
            await client.close()
            raise SessionError(
                f"the as_token belongs to {user_id}, but the config says user_id {config.user_id}: the registration's "
                "sender_localpart must be the bot's localpart"
            )
        log.info("appservice %s: acting as %s with the as_token", config.appservice.id, user_id)
        section = config.appservice
        if storage is not None and section.encryption and section.receive_ephemeral:
            await client.close()
            client = await open_bot_device(config, storage, tokens.as_token)
        elif section.encryption:
            log.warning("appservice %s: no encryption (receive_ephemeral is off): use unencrypted rooms", section.id)
        return cls(config, tokens, client, storage if client.olm is not None else None)

    def bind(self, state: StateStore, invite_allowed: Callable[[str], bool]) -> TransactionSource:
        """Create the transaction source on the runtime's ``state`` and the server; returns the source."""
        self.source = TransactionSource(self.client, state, self.ghosts, invite_allowed=invite_allowed)
        self.client.room_loader = self.source.ensure_room
        if self.encrypted:
            # The appservice's own users never get the bot's (or a ghost's) room keys: the bot reads, ghosts write.
            self.client.deviceless_user = self.ghosts.is_ghost  # so their joins need no new Megolm session
            self.client.key_share_skip = self.namespaces.is_ours
        if self.ghosts.devices is not None:
            self.ghosts.devices.bind(state)
        listener = HttpListener(self.section.host, self.section.port, max_body=MAX_TRANSACTION)
        self.server = AppserviceServer(listener, self._tokens.hs_token, self.source)
        return self.source

    # -- what bridges use --------------------------------------------------------------------------------------

    def ghost(self, name: str) -> Ghost:
        """The ghost ``name`` (``"alice"``, ``"irc_alice"`` or ``"@irc_alice:server"``); raises ValueError outside
        the namespace."""
        return self.ghosts.get(name)

    def on_user_query(self, hook: Query | None) -> None:
        """Answer the homeserver's "does this user exist?" with ``hook`` (create the ghost, return True)."""
        assert self.server is not None
        self.server.user_query = hook

    def on_alias_query(self, hook: Query | None) -> None:
        """Answer the homeserver's "does this room alias exist?" with ``hook`` (create the room, return True)."""
        assert self.server is not None
        self.server.alias_query = hook

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for the homeserver, then ping it in the background (checks that it reaches us, and makes it send
        at once what it kept while we were down). Raises SessionError when the port cannot be bound."""
        assert self.server is not None
        try:
            await self.server.start()
        except ListenerError as exc:
            raise SessionError(f"appservice: {exc}; the homeserver cannot deliver anything") from exc
        log.info("appservice %s listening on %s", self.section.id, self.server.listener.url)
        self._ping_task = asyncio.create_task(self.ping_homeserver())

    async def ping_homeserver(self) -> int | None:
        """``POST /_matrix/client/v1/appservice/{id}/ping``: the homeserver calls our ``/ping`` and, when that works,
        retries the transactions it holds for us at once. Returns the round trip in ms, or None (logged) on failure."""
        path = f"/_matrix/client/v1/appservice/{self.section.id}/ping"
        started = time.monotonic()
        try:
            answer = await request_json(self.client, "POST", path, {"transaction_id": f"ratchet-{int(started)}"})
        except MatrixRequestError as err:
            log.warning(
                "appservice self-test: the homeserver could not reach us at %s (%s); check appservice.url and that "
                "the registration file is loaded",
                self.server.listener.url if self.server else "?", err,
            )
            return None
        duration = answer.get("duration_ms") if isinstance(answer, dict) else None
        log.info("appservice self-test: the homeserver reached us (%s ms)", duration)
        return duration if isinstance(duration, int) else None

    async def close(self) -> None:
        """Stop taking transactions and close the server and the client."""
        if self._ping_task is not None:
            self._ping_task.cancel()
            with contextlib.suppress(BaseException):
                await self._ping_task
        if self.server is not None:
            await self.server.close()
        if self.ghosts.devices is not None:
            await self.ghosts.devices.close()
