"""Requests the nio client has no method for: JSON in and out with the bot's access token, retried as a bot should.

:func:`request_json` uses nio's public low-level ``client.send`` with the bearer token, retrying 429s (honouring
``retry_after_ms`` or ``Retry-After``), 5xx answers and connection errors with jittered backoff; any other answer
that is not 2xx raises :class:`~bot.errors.MatrixRequestError`. :func:`post_with_password_auth` answers a
user-interactive auth challenge with the account password (cross-signing key uploads need it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from typing import Any

import aiohttp

from bot.errors import IdentityError, MatrixRequestError
from bot.matrix.client import backoff_delay

__all__ = ["api_path", "post_with_password_auth", "request_json"]

log = logging.getLogger(__name__)


#: 429 answers tolerated per request before giving up.
MAX_RATE_LIMITED = 10


#: Connection errors / 5xx answers tolerated per request before giving up.
MAX_TRANSIENT = 4


_V3 = "/_matrix/client/v3"


def api_path(*parts: str) -> str:
    """``/_matrix/client/v3/<part>/<part>...`` with each part percent-encoded."""
    return _V3 + "".join("/" + urllib.parse.quote(p, safe="") for p in parts)


async def request_json(client: Any, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
    """Send a JSON request with the client's access token; return the decoded JSON answer (with ``raw``: the
    undecoded bytes of a 2xx answer, for callers that parse a large answer off the event loop).

    429 answers are retried after ``retry_after_ms`` (or the ``Retry-After`` header), transport errors and 5xx answers
    with jittered backoff; any other non-2xx answer raises :class:`MatrixRequestError`.
    """
    want_raw = raw
    headers = {"Content-Type": "application/json"}
    if getattr(client, "access_token", None):
        headers["Authorization"] = f"Bearer {client.access_token}"
    data = json.dumps(body) if body is not None else None
    limited = transient = 0
    while True:
        try:
            resp = await client.send(method, path, data, headers)
            try:
                status = resp.status
                raw = await resp.read()
                retry_header = resp.headers.get("Retry-After") if getattr(resp, "headers", None) else None
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            transient += 1
            if transient > MAX_TRANSIENT:
                raise MatrixRequestError(method, path, 0, f"{exc.__class__.__name__}: {exc}") from exc
            await asyncio.sleep(backoff_delay(transient))
            continue
        if want_raw and 200 <= status < 300:
            return raw
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = raw.decode("utf-8", "replace")[:200]
        if 200 <= status < 300:
            return answer
        errcode = answer.get("errcode") if isinstance(answer, dict) else None
        if status == 429 or errcode == "M_LIMIT_EXCEEDED":
            limited += 1
            if limited > MAX_RATE_LIMITED:
                raise MatrixRequestError(method, path, status, answer)
            wait_ms = answer.get("retry_after_ms") if isinstance(answer, dict) else None
            if not isinstance(wait_ms, int | float) and retry_header and str(retry_header).isdigit():
                wait_ms = int(retry_header) * 1000
            delay = min(float(wait_ms) / 1000, 60.0) if isinstance(wait_ms, int | float) else backoff_delay(limited)
            log.warning("rate limited on %s %s; retrying in %.1fs", method, path.split("?", 1)[0], delay)
            await asyncio.sleep(delay)
            continue
        if status >= 500 and transient < MAX_TRANSIENT:
            transient += 1
            await asyncio.sleep(backoff_delay(transient))
            continue
        raise MatrixRequestError(method, path, status, answer)


async def post_with_password_auth(
    client: Any, path: str, body: dict[str, Any], *, user_id: str, password: str | None
) -> Any:
    """POST ``body``; if the server asks for user-interactive auth, answer with ``m.login.password``."""
    try:
        return await request_json(client, "POST", path, body)
    except MatrixRequestError as err:
        if err.status != 401 or "flows" not in err.body:
            raise
        challenge = err.body
    stages = {s for flow in challenge.get("flows") or [] for s in (flow.get("stages") or [])}
    if "m.login.password" not in stages:
        raise IdentityError(
            f"the homeserver wants user-interactive auth ({', '.join(sorted(stages)) or 'no stages'}) for {path}, "
            "and Ratchet can only answer with the password"
        )
    if not password:
        raise IdentityError(
            "the homeserver asks for the account password to change cross-signing keys; set `password` in the config"
        )
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    if challenge.get("session"):
        auth["session"] = challenge["session"]
    log.info("the homeserver asks for user-interactive auth for %s; answering with the account password", path)
    try:
        return await request_json(client, "POST", path, {**body, "auth": auth})
    except MatrixRequestError as err:
        if err.status == 401:
            raise IdentityError(f"the homeserver rejected the password for {user_id} ({err.errcode})") from None
        raise
