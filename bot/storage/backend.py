"""Where a bot keeps what must survive a restart: the seam between the runtime and its storage engine.

:class:`Storage` is what the runtime, the plugin host and the session ask for: the login, the crypto store's place,
the runtime state (sync token, handled events, waiting events, trust pins) and each plugin's database (bridges keep
their portals and message map there). :class:`SqliteStorage` is today's engine and the embedded default: files under
``data_dir``. A PostgreSQL engine implements the same interface; plugins never see which one runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from bot.errors import SessionError
from bot.storage.credentials import Credentials
from bot.storage.plugin_storage import Migration, PluginStorage, plugin_db_path
from bot.storage.state import StateStore

__all__ = ["SqliteStorage", "Storage"]


class Storage(Protocol):
    """One bot's persistent storage."""

    def prepare(self) -> None:
        """Create what is missing and check it is writable; raises :class:`~bot.errors.SessionError` if not."""

    def load_credentials(self) -> Credentials | None:
        """The saved login, or None before the first one."""

    def save_credentials(self, credentials: Credentials) -> None:
        """Keep the login (readable by the bot's user only)."""

    @property
    def crypto_path(self) -> Path:
        """Where nio's crypto store lives (its ``store_path``)."""

    def has_crypto_store(self, user_id: str, device_id: str) -> bool:
        """True if the crypto store of this device exists."""

    def crypto_stores(self) -> list[str]:
        """The names of the crypto stores present (to refuse starting over them by accident)."""

    def move_aside(self) -> list[Path]:
        """Move the login and the crypto stores aside (never deleted), to start as a new device on purpose."""

    def open_state(self) -> StateStore:
        """The runtime state: sync token, handled-event records, waiting events, trust pins."""

    async def open_plugin_storage(self, plugin: str, migrations: Sequence[Migration]) -> PluginStorage:
        """Plugin ``plugin``'s own database, its pending ``migrations`` applied."""


class SqliteStorage:
    """Files under ``data_dir``: ``credentials.json``, ``crypto/``, ``state.db`` and ``plugins/<name>.db``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def __repr__(self) -> str:
        return f"SqliteStorage({str(self.data_dir)!r})"

    @property
    def credentials_path(self) -> Path:
        """``data_dir/credentials.json``."""
        return self.data_dir / "credentials.json"

    @property
    def crypto_path(self) -> Path:
        """``data_dir/crypto``."""
        return self.data_dir / "crypto"

    def prepare(self) -> None:
        """Create ``data_dir`` and its ``crypto`` folder with mode 0700; fail clearly if not writable."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.crypto_path.mkdir(exist_ok=True, mode=0o700)
            probe = self.data_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise SessionError(f"data_dir {self.data_dir} is not usable: {exc.strerror or exc}") from exc

    def load_credentials(self) -> Credentials | None:
        """``credentials.json``, or None if there is none; a damaged file is a :class:`SessionError`."""
        return Credentials.load(self.credentials_path) if self.credentials_path.exists() else None

    def save_credentials(self, credentials: Credentials) -> None:
        """Write ``credentials.json`` atomically with mode 0600."""
        credentials.save(self.credentials_path)

    def crypto_store_file(self, user_id: str, device_id: str) -> Path:
        """nio's SqliteStore file for this device: ``<user_id>_<device_id>.db`` inside the crypto folder."""
        return self.crypto_path / f"{user_id}_{device_id}.db"

    def has_crypto_store(self, user_id: str, device_id: str) -> bool:
        """True if the device's crypto store file exists."""
        return self.crypto_store_file(user_id, device_id).exists()

    def crypto_stores(self) -> list[str]:
        """The crypto store files present."""
        return sorted(p.name for p in self.crypto_path.glob("*.db"))

    def move_aside(self) -> list[Path]:
        """Move ``credentials.json`` to ``credentials.json.replaced-<UTC timestamp>`` and the crypto store files to
        ``crypto/replaced-<timestamp>/``; returns where things went."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved: list[Path] = []
        if self.credentials_path.exists():
            target = self.data_dir / f"credentials.json.replaced-{stamp}"
            os.replace(self.credentials_path, target)
            moved.append(target)
        stores = sorted(p for p in self.crypto_path.iterdir() if p.is_file() and ".db" in p.name)
        if stores:
            aside = self.crypto_path / f"replaced-{stamp}"
            aside.mkdir(mode=0o700)
            for store in stores:
                os.replace(store, aside / store.name)
            moved.append(aside)
        return moved

    def open_state(self) -> StateStore:
        """``data_dir/state.db`` (``data_dir`` is created, mode 0700, if missing)."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return StateStore.open(self.data_dir / "state.db")

    async def open_plugin_storage(self, plugin: str, migrations: Sequence[Migration]) -> PluginStorage:
        """``data_dir/plugins/<plugin>.db``."""
        return await PluginStorage.open(plugin_db_path(self.data_dir, plugin), migrations=migrations, plugin=plugin)
