"""Logging set-up: human-readable or JSON lines, with secrets masked and event content kept out.

Decrypted message bodies are only ever logged at DEBUG by Ratchet's own code. Two filters hold the rest back:

* :class:`SecretFilter` masks every secret the runtime and plugins register (access token, password, pickle key,
  recovery key, an IRC network's password...) wherever it appears: in the message, in a traceback (``exc_info``) and in
  ``stack_info``, so a stray ``repr`` of a request or an exception's text cannot leak one;
* :class:`LibraryContentFilter`, installed on matrix-nio's loggers as soon as this module is imported, rewrites
  nio's records that carry event content (its schema validation errors print the whole event, decrypted body and
  all, over dozens of lines) to one line without it, at every level above DEBUG, whoever handles the record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

__all__ = ["LibraryContentFilter", "SecretFilter", "add_secret", "mask", "setup_logging"]

_secrets: set[str] = set()

#: What replaces a secret.
REDACTED = "[redacted]"


def add_secret(value: str | None) -> None:
    """Register ``value`` to be masked in every log record from now on (short values are ignored)."""
    if value and len(value) >= 6:
        _secrets.add(value)


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]`` (longest first, so a secret that contains
    another is masked whole)."""
    if not _secrets or not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


_TRACEBACKS = logging.Formatter()


class SecretFilter(logging.Filter):
    """Replaces registered secrets with ``[redacted]`` in the formatted message, the traceback and the stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatted here, once: every formatter uses ``exc_text`` when it is set.
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


# -- event content in libraries' records --------------------------------------------------------------------------

#: What marks a record of matrix-nio as carrying event (or response) content: its schema validation errors
#: (``Error validating event: ...`` prints the event, ``On instance[...]: {...}``, decrypted body included), and its
#: HTTP/2 client's event dumps.
_CONTENT_MARKERS = ("Error validating", "On instance", "Handling Http2 event")
_FAILED_CHECK = re.compile(r"Failed validating '(?P<keyword>\w+)' in (?P<where>schema[^\n:]{0,200})")
#: matrix-nio's loggers (``logging.getLogger(__name__)`` in its modules); any other ``nio.*`` logger that exists when
#: the filter is installed gets it too, and Ratchet's own handler checks every ``nio`` record as well.
NIO_LOGGERS = (
    "nio",
    "nio.client.async_client",
    "nio.client.base_client",
    "nio.client.http_client",
    "nio.crypto.log",
    "nio.events.misc",
    "nio.events.presence",
    "nio.http",
    "nio.responses",
    "nio.rooms",
    "nio.store.log",
)


def withhold_content(message: str) -> str:
    """One line that says what went wrong without the event content ``message`` carries."""
    head = message.split("\n", 1)[0].split(": ", 1)[0].strip()[:200]
    found = _FAILED_CHECK.search(message)
    where = f": failed '{found['keyword']}' in {found['where'].strip()}" if found else ""
    return f"{head}{where} (event content withheld from the log)"


class LibraryContentFilter(logging.Filter):
    """Rewrites a library's log records that carry event content (above DEBUG) to one line without it.

    Put on a logger, it acts on that logger's own records before any handler sees them (pytest's ``caplog``
    included); put on a handler, on every record from a logger whose name starts with one of ``prefixes``.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("nio",)) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or getattr(record, "_content_withheld", False):
            return True
        if not any(record.name == p or record.name.startswith(p + ".") for p in self.prefixes):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record: say so without its arguments
            message = str(record.msg)
        if any(marker in message for marker in _CONTENT_MARKERS):
            record.msg, record.args = withhold_content(message), None
            record.exc_info = record.exc_text = None
            record._content_withheld = True  # once: the logger's filter and the handler's may both see it
        return True


_NIO_FILTER = LibraryContentFilter()


def protect_library_loggers() -> None:
    """Install :class:`LibraryContentFilter` on matrix-nio's loggers (idempotent; done when this module loads)."""
    names = set(NIO_LOGGERS)
    names.update(n for n in list(logging.root.manager.loggerDict) if n.startswith("nio."))
    for name in names:
        logger = logging.getLogger(name)
        if _NIO_FILTER not in logger.filters:
            logger.addFilter(_NIO_FILTER)


protect_library_loggers()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback and stack if any."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            data["traceback"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        if record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, ensure_ascii=False)


# Libraries that are chatty at INFO (or log request details) are held at WARNING.
_QUIET_LOGGERS: Iterable[str] = ("nio", "peewee", "aiohttp.access", "asyncio")


def setup_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """Configure the root logger once for the process (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ratchet", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._ratchet = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(_NIO_FILTER)  # nio loggers created after the import of this module
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(level)
    protect_library_loggers()
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
