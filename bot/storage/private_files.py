"""Small private documents the bot keeps (its login, its encrypted secrets): files under ``data_dir``, or rows of
``ratchet.files`` in PostgreSQL. Either way only the bot reads them: files are 0600 and written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from bot.storage.credentials import write_private

__all__ = ["DatabaseFile", "LocalFile", "PrivateFile"]


class PrivateFile(Protocol):
    """One private document."""

    def read_text(self) -> str | None:
        """Its text, or None if it does not exist."""

    def write_text(self, text: str) -> None:
        """Replace its text atomically (readable by the bot only)."""

    def __str__(self) -> str:
        """Where it is, for messages."""


class LocalFile:
    """A file under ``data_dir``, mode 0600, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def read_text(self) -> str | None:
        return self.path.read_text() if self.path.exists() else None

    def write_text(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path, text)


class DatabaseFile:
    """A row of ``ratchet.files`` (name, text), written in one statement (so atomically)."""

    def __init__(self, conn: Any, name: str, where: str) -> None:
        self._conn = conn
        self.name = name
        self._where = where

    def __str__(self) -> str:
        return f"{self._where} (ratchet.files: {self.name})"

    def read_text(self) -> str | None:
        row = self._conn().execute("SELECT data FROM ratchet.files WHERE name = %s", (self.name,)).fetchone()
        return row[0] if row else None

    def write_text(self, text: str) -> None:
        self._conn().execute(
            "INSERT INTO ratchet.files (name, data, updated_at) VALUES (%s, %s, clock_timestamp()) "
            "ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data, updated_at = EXCLUDED.updated_at",
            (self.name, text),
        )
