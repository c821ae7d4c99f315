"""The appservice's HTTP side: what the homeserver calls (aiohttp, on a listener of its own).

* ``PUT /_matrix/app/v1/transactions/{txnId}``: events pushed by the homeserver, handed to the
  :class:`~bot.appservice.source.TransactionSource`; answered 200 ``{}`` once handled (or if handled before), 503
  ``M_UNKNOWN`` when it must come again (the bot is stopping, storage failed);
* ``GET /_matrix/app/v1/users/{userId}`` and ``GET /_matrix/app/v1/rooms/{roomAlias}``: does this ghost / alias exist?
  Answered by hooks (:attr:`AppserviceServer.user_query`, :attr:`AppserviceServer.alias_query`) that create it and
  return True; without a hook, or when it returns False, 404 ``M_NOT_FOUND``;
* ``POST /_matrix/app/v1/ping``: 200 ``{}`` (Synapse calls it when someone calls its
  ``/_matrix/client/v1/appservice/{id}/ping``; the bot does so at start).

Every request must carry the ``hs_token`` (:func:`~bot.appservice.transactions.check_auth`): missing 401, wrong
403. Malformed bodies are 400 (``M_NOT_JSON``, ``M_BAD_JSON``). Each refusal is logged in one line (method, path
without the query, status, errcode, reason) and has no other effect. Synapse 1.163 calls only these ``/v1`` paths
(the unprefixed legacy paths are gone from it), so only these are served; anything else under ``/_matrix/app/`` is 404
``M_UNRECOGNIZED``.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.appservice.source import TransactionSource
from bot.appservice.transactions import TransactionError, check_auth, parse_transaction
from bot.http_listener import HttpListener

__all__ = ["PREFIX", "AppserviceServer", "Query"]

log = logging.getLogger("ratchet.appservice")

#: Where the homeserver's requests arrive.
PREFIX = "/_matrix/app/"
#: Largest transaction body accepted (100 events of at most 64 KiB each, plus ephemeral and to-device events).
MAX_TRANSACTION = 32 * 1024 * 1024

#: ``query(user_id_or_alias) -> exists``: creates the ghost or the room and returns True, or returns False.
Query = Callable[[str], Awaitable[bool]]


class AppserviceServer:
    """The homeserver-facing endpoints, on ``listener`` (the appservice's own)."""

    def __init__(self, listener: HttpListener, hs_token: str, source: TransactionSource) -> None:
        self.listener = listener
        self._hs_token = hs_token
        self.source = source
        #: Answers ``GET /users/{userId}`` (a bridge creating ghosts on demand); None: every user is 404.
        self.user_query: Query | None = None
        #: Answers ``GET /rooms/{alias}`` (a bridge creating portal rooms on demand); None: every alias is 404.
        self.alias_query: Query | None = None
        #: How many pings from the homeserver arrived (the start-up self-test waits for one).
        self.pings = 0
        self._unmount: Callable[[], None] | None = None

    async def start(self) -> None:
        """Mount the endpoints and start listening (raises ListenerError when the port cannot be bound)."""
        if self._unmount is None:
            self._unmount = self.listener.mount(PREFIX, self._handle)
        await self.listener.start()

    async def close(self) -> None:
        """Answer waiting transactions "try again" and stop listening."""
        self.source.close()
        await self.listener.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parts = [urllib.parse.unquote(p) for p in request.raw_path.split("?", 1)[0].split("/")]
        # ['', '_matrix', 'app', 'v1', <endpoint>, <arg>...]
        endpoint = parts[4] if len(parts) > 4 and parts[3] == "v1" else None
        arg = "/".join(parts[5:]) if len(parts) > 5 else None
        try:
            check_auth(request.headers.get("Authorization"), request.query.get("access_token"), self._hs_token)
            if endpoint == "transactions" and arg:
                if request.method != "PUT":
                    raise TransactionError(405, "M_UNRECOGNIZED", "transactions are PUT")
                return await self._transaction(request, arg)
            if endpoint in ("users", "rooms") and arg and request.method == "GET":
                return await self._query(endpoint, arg)
            if endpoint == "ping" and arg is None and request.method == "POST":
                self.pings += 1
                log.info("ping from the homeserver")
                return web.json_response({})
            raise TransactionError(404, "M_UNRECOGNIZED", "unknown appservice endpoint")
        except TransactionError as err:
            log.warning(
                "appservice request refused: %s %s -> %d %s (%s)",
                request.method, request.path, err.status, err.errcode, err.message,
            )
            return web.json_response(err.body(), status=err.status)

    async def _transaction(self, request: web.Request, txn_id: str) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_TRANSACTION:
            raise TransactionError(413, "M_TOO_LARGE", "the transaction is too large")
        try:
            # the whole body, however many pieces it arrives in (aiohttp stops at client_max_size = MAX_TRANSACTION)
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise TransactionError(413, "M_TOO_LARGE", "the transaction is too large") from None
        if len(body) > MAX_TRANSACTION:
            raise TransactionError(413, "M_TOO_LARGE", "the transaction is too large")
        txn = parse_transaction(txn_id, body)
        log.debug("transaction %s: %d events", txn_id, len(txn.events))
        if await self.source.submit(txn):
            return web.json_response({})
        return web.json_response(
            {"errcode": "M_UNKNOWN", "error": "not handled completely; send it again"}, status=503
        )

    async def _query(self, endpoint: str, name: str) -> web.StreamResponse:
        hook = self.user_query if endpoint == "users" else self.alias_query
        exists = False
        if hook is not None:
            try:
                exists = await hook(name)
            except Exception as exc:
                log.warning("the %s query hook failed for %s: %s", endpoint, name, exc)
                return web.json_response({"errcode": "M_UNKNOWN", "error": "the query failed"}, status=500)
        if exists:
            return web.json_response({})
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no such user or room here"}, status=404)
