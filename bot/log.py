"""Logging set-up: human-readable or JSON lines, with secrets masked.

Decrypted message bodies are only ever logged at DEBUG by Ratchet's own code; on top of that, a filter masks every
secret the runtime registers (access token, password, pickle key) wherever it appears, so a stray ``repr`` of a
request cannot leak one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

__all__ = ["SecretFilter", "add_secret", "setup_logging"]

_secrets: set[str] = set()


def add_secret(value: str | None) -> None:
    """Register ``value`` to be masked in every log record from now on (short values are ignored)."""
    if value and len(value) >= 6:
        _secrets.add(value)


class SecretFilter(logging.Filter):
    """Replaces registered secrets in the formatted message with ``[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in _secrets:
            if secret in masked:
                masked = masked.replace(secret, "[redacted]")
        if masked is not message and masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
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
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
