"""What an inbound webhook posts: pure functions from a request (headers, body) to a message, or a clear error.

* :func:`verify_bearer` / :func:`verify_signature`: the hook's secret as ``Authorization: Bearer ...`` or an
  HMAC-SHA256 of the body (GitHub's ``X-Hub-Signature-256: sha256=...``, Gitea's ``X-Gitea-Signature``, Forgejo's
  ``X-Forgejo-Signature``), compared in constant time; with an ``X-Ratchet-Timestamp: <unix seconds>`` header the
  HMAC covers ``<timestamp>.<body>`` (as Slack and Stripe sign), so the timestamp cannot be changed;
* :func:`redact_url`: a URL fit for logs and ``!webhooks status`` (no query string, no token-like path segment);
* :func:`render_generic` (``{"text": ...}``), :func:`render_alertmanager` (firing/resolved alerts summarised) and
  :func:`render_push` (a GitHub/Gitea/Forgejo push event) return a :class:`Rendered` message or raise
  :class:`TemplateError` (answered with 400 and nothing posted).
"""

from __future__ import annotations

import hashlib
import hmac
import html as htmllib
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TEMPLATES",
    "Rendered",
    "TemplateError",
    "forge_event",
    "matching_signature",
    "redact_url",
    "render_alertmanager",
    "render_generic",
    "render_push",
    "url_secrets",
    "verify_bearer",
    "verify_signature",
]

#: Most alerts or commits listed in one message (the rest are counted).
MAX_ITEMS = 10


class TemplateError(ValueError):
    """The payload does not fit the hook's template; the message says what is wrong (sent back with a 400)."""


@dataclass(frozen=True)
class Rendered:
    """The message a payload becomes: plain text, optional HTML, optional sender name (``None``: no prefix)."""

    text: str
    html: str | None = None
    sender: str | None = None
    msgtype: str | None = None


# ----------------------------------------------------------------------------------------------------- secrets


def verify_bearer(secret: str, authorization: str | None) -> bool:
    """True if the ``Authorization`` header is ``Bearer <secret>``."""
    if not authorization or not secret:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), secret.encode())


#: Signature headers, and the prefix their value starts with.
SIGNATURE_HEADERS = (("X-Hub-Signature-256", "sha256="), ("X-Gitea-Signature", ""), ("X-Forgejo-Signature", ""))
#: The header of a signed timestamp (unix seconds): the signature is then the HMAC of ``<timestamp>.<body>``.
TIMESTAMP_HEADER = "X-Ratchet-Timestamp"


def matching_signature(
    secret: str, body: bytes, headers: Mapping[str, str], *, timestamp: str | None = None
) -> str | None:
    """The signature (lower-case hex) of the first known signature header holding the HMAC-SHA256 of ``body`` (of
    ``<timestamp>.<body>`` if ``timestamp`` is given) with ``secret``; None if none does."""
    if not secret:
        return None
    signed = f"{timestamp}.".encode() + body if timestamp is not None else body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    for name, prefix in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        value = value.strip()
        if prefix and not value.lower().startswith(prefix):
            continue
        if hmac.compare_digest(value[len(prefix) :].lower().encode(), expected.encode()):
            return expected
    return None


def verify_signature(secret: str, body: bytes, headers: Mapping[str, str], *, timestamp: str | None = None) -> bool:
    """True if one of the known signature headers holds the HMAC-SHA256 of ``body`` (of ``<timestamp>.<body>`` if
    ``timestamp`` is given) with ``secret``."""
    return matching_signature(secret, body, headers, timestamp=timestamp) is not None


# ----------------------------------------------------------------------------------------------------- URLs

#: What stands for the parts of a URL that may be credentials.
HIDDEN = "[redacted]"
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_\-.~+=%:]+$")


def _looks_like_token(segment: str) -> bool:
    """A path segment that may be a credential: long, of token characters, and not a plain word or number."""
    if len(segment) < 16 or not _TOKEN_CHARS.match(segment):
        return False
    classes = sum(bool(re.search(p, segment)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return len(segment) >= 32 or classes >= 2


def redact_url(url: str) -> str:
    """``url`` for logs and status lines: scheme, host and port, the path with any token-like segment replaced by
    ``[redacted]``, the query string and any user/password left out (``https://hooks.example/services/[redacted]?...``
    style: an outbound hook's URL often holds its credentials)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return HIDDEN
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    path = "/".join(HIDDEN if _looks_like_token(urllib.parse.unquote(seg)) or _looks_like_token(seg) else seg
                    for seg in parts.path.split("/"))
    query = f"?{HIDDEN}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{query}" if parts.scheme else HIDDEN


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` :func:`redact_url` hides (the whole URL first), to register for masking in logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return [url]
    found = [url]
    if parts.query:
        found.append(parts.query)
    if password:
        found.append(password)
    found += [seg for seg in parts.path.split("/") if _looks_like_token(seg) or _looks_like_token(
        urllib.parse.unquote(seg))]
    return found


def forge_event(headers: Mapping[str, str]) -> str | None:
    """The event type a Git forge says it sends (``push``, ``ping``...), if any."""
    for name in ("X-GitHub-Event", "X-Gitea-Event", "X-Forgejo-Event", "X-Gogs-Event"):
        value = headers.get(name)
        if value:
            return value.strip().lower()
    return None


# ----------------------------------------------------------------------------------------------------- generic

_GENERIC_FIELDS = {"text", "body", "html", "formatted_body", "username", "sender", "msgtype"}


def _str_field(payload: Mapping[str, Any], *names: str) -> str | None:
    found = [n for n in names if n in payload]
    if len(found) > 1:
        raise TemplateError(f"give {' or '.join(repr(n) for n in names)}, not both")
    if not found:
        return None
    value = payload[found[0]]
    if not isinstance(value, str):
        raise TemplateError(f"{found[0]!r} must be a string")
    return value


def render_generic(payload: Any) -> Rendered:
    """``{"text": "..."}`` (or ``"body"``), optionally ``"html"``/``"formatted_body"``, ``"username"``/``"sender"``
    (shown as the author) and ``"msgtype"`` (``m.text`` or ``m.notice``). Other fields are refused."""
    if not isinstance(payload, dict):
        raise TemplateError("the body must be a JSON object like {\"text\": \"...\"}")
    unknown = sorted(set(payload) - _GENERIC_FIELDS)
    if unknown:
        raise TemplateError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)}; "
            f"expected {', '.join(sorted(_GENERIC_FIELDS))}"
        )
    text = _str_field(payload, "text", "body")
    if text is None or not text.strip():
        raise TemplateError("'text' (or 'body') is required and must not be empty")
    html = _str_field(payload, "html", "formatted_body")
    sender = _str_field(payload, "username", "sender")
    msgtype = _str_field(payload, "msgtype")
    if msgtype is not None and msgtype not in ("m.text", "m.notice"):
        raise TemplateError("'msgtype' must be 'm.text' or 'm.notice'")
    return Rendered(text, html, sender or None, msgtype)


# ----------------------------------------------------------------------------------------------------- Alertmanager


def _alert_line(alert: Mapping[str, Any]) -> tuple[str, str]:
    labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
    annotations = alert.get("annotations") if isinstance(alert.get("annotations"), dict) else {}
    name = str(labels.get("alertname") or "alert")
    severity = labels.get("severity")
    where = labels.get("instance") or labels.get("job") or labels.get("service")
    summary = annotations.get("summary") or annotations.get("description") or annotations.get("message")
    text = name + (f" ({severity})" if severity else "") + (f" on {where}" if where else "")
    html = f"<strong>{htmllib.escape(name)}</strong>" + (f" ({htmllib.escape(str(severity))})" if severity else "")
    html += f" on {htmllib.escape(str(where))}" if where else ""
    if summary:
        text += f": {summary}"
        html += f": {htmllib.escape(str(summary))}"
    url = alert.get("generatorURL")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        html += f' (<a href="{htmllib.escape(url)}">source</a>)'
    return text, html


def render_alertmanager(payload: Any) -> Rendered:
    """An Alertmanager webhook (``version`` 4): firing alerts first, then resolved ones, one line each."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list) or not payload["alerts"]:
        raise TemplateError("an Alertmanager payload needs a non-empty 'alerts' list")
    alerts = payload["alerts"]
    if not all(isinstance(a, dict) and a.get("status") in ("firing", "resolved") for a in alerts):
        raise TemplateError("every alert needs a 'status' of 'firing' or 'resolved'")
    lines: list[str] = []
    items: list[str] = []
    for status, mark in (("firing", "🔥 FIRING"), ("resolved", "✅ RESOLVED")):
        group = [a for a in alerts if a["status"] == status]
        for alert in group[:MAX_ITEMS]:
            text, html = _alert_line(alert)
            lines.append(f"{mark}: {text}")
            items.append(f"<li>{mark}: {html}</li>")
        if len(group) > MAX_ITEMS:
            lines.append(f"… and {len(group) - MAX_ITEMS} more {status}")
            items.append(f"<li>… and {len(group) - MAX_ITEMS} more {status}</li>")
    firing = sum(1 for a in alerts if a["status"] == "firing")
    resolved = len(alerts) - firing
    head = " · ".join(part for part in (f"{firing} firing" if firing else "", f"{resolved} resolved" if resolved
                                        else "") if part)
    if len(alerts) == 1:
        return Rendered(lines[0], f"<p>{items[0][4:-5]}</p>")
    return Rendered(f"Alerts: {head}\n" + "\n".join(lines),
                    f"<p><strong>Alerts</strong>: {head}</p><ul>{''.join(items)}</ul>")


# ----------------------------------------------------------------------------------------------------- Git push


def _name(obj: Any, *keys: str) -> str | None:
    if not isinstance(obj, dict):
        return None
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def render_push(payload: Any) -> Rendered:
    """A push event from GitHub, Gitea or Forgejo: ``alice pushed 3 commits to org/repo/main:`` and the commits."""
    if not isinstance(payload, dict):
        raise TemplateError("a push event must be a JSON object")
    ref = payload.get("ref")
    repo = _name(payload.get("repository"), "full_name", "name")
    if not isinstance(ref, str) or repo is None:
        raise TemplateError("a push event needs 'ref' and 'repository.full_name'")
    commits = payload.get("commits") or []
    if not isinstance(commits, list) or not all(isinstance(c, dict) for c in commits):
        raise TemplateError("'commits' must be a list of objects")
    pusher = (
        _name(payload.get("pusher"), "name", "login", "username")
        or _name(payload.get("sender"), "login", "username", "name")
        or "someone"
    )
    compare = payload.get("compare_url") or payload.get("compare")
    compare = compare if isinstance(compare, str) and compare.startswith(("http://", "https://")) else None
    esc = htmllib.escape
    if ref.startswith("refs/tags/"):
        tag = ref.removeprefix("refs/tags/")
        verb = "deleted tag" if payload.get("deleted") else "pushed tag"
        text = f"{pusher} {verb} {tag} to {repo}"
        return Rendered(text, f"{esc(pusher)} {verb} <strong>{esc(tag)}</strong> to <strong>{esc(repo)}</strong>")
    branch = ref.removeprefix("refs/heads/")
    if payload.get("deleted"):
        text = f"{pusher} deleted branch {branch} of {repo}"
        return Rendered(text, f"{esc(pusher)} deleted branch <strong>{esc(branch)}</strong> of {esc(repo)}")
    total = payload.get("total_commits")
    count = total if isinstance(total, int) and total >= len(commits) else len(commits)
    verb = "force-pushed" if payload.get("forced") else "pushed"
    what = f"{count} commit{'s' if count != 1 else ''}"
    head = f"{pusher} {verb} {what} to {repo}/{branch}"
    where = f"{esc(repo)}/{esc(branch)}"
    head_html = f"{esc(pusher)} {verb} " + (f'<a href="{esc(compare)}">{what}</a>' if compare else what)
    head_html += f" to <strong>{where}</strong>"
    if not commits:
        return Rendered(head, head_html)
    lines, items = [], []
    for commit in commits[:MAX_ITEMS]:
        sha = str(commit.get("id") or commit.get("sha") or "")[:7]
        message = str(commit.get("message") or "").strip().splitlines()
        first = message[0] if message else ""
        author = _name(commit.get("author"), "username", "name", "login")
        suffix = f" ({author})" if author and author != pusher else ""
        lines.append(f"{sha} {first}{suffix}".strip())
        url = commit.get("url")
        code = f"<code>{esc(sha)}</code>"
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            code = f'<a href="{esc(url)}">{code}</a>'
        items.append(f"<li>{code} {esc(first)}{esc(suffix)}</li>")
    if len(commits) > MAX_ITEMS:
        lines.append(f"… and {len(commits) - MAX_ITEMS} more")
        items.append(f"<li>… and {len(commits) - MAX_ITEMS} more</li>")
    return Rendered(f"{head}:\n" + "\n".join(lines), f"<p>{head_html}:</p><ul>{''.join(items)}</ul>")


TEMPLATES = {"generic": render_generic, "alertmanager": render_alertmanager, "push": render_push}
