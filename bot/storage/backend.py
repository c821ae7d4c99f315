"""Where a bot keeps what must survive a restart: the seam between the runtime and its storage engine.

:class:`Storage` is what the runtime, the plugin host and the session ask for: the login, the crypto store's place,
the runtime state (sync token, handled events, waiting events, trust pins), private documents (the encrypted
secrets), the key-backup tracker and each plugin's database (bridges keep their portals and message map there).
:class:`SqliteStorage` is the embedded default: files under ``data_dir``. :class:`~bot.storage.postgres.PostgresStorage`
(``database: postgresql://...``) implements the same interface in one database, with a lease for an active/standby
pair; plugins never see which one runs. :func:`open_storage` picks the engine from the config.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bot.config import Config

from bot.errors import SessionError
from bot.storage.credentials import Credentials
from bot.storage.plugin_storage import Migration, PluginStorage, plugin_db_path
from bot.storage.private_files import LocalFile, PrivateFile
from bot.storage.state import StateStore

__all__ = ["SqliteStorage", "Storage", "open_storage"]

#: The key-backup tracker's file under data_dir.
BACKUP_TRACKER_FILE = "key_backup.db"


class Storage(Protocol):
    """One bot's persistent storage."""

    @property
    def database_url(self) -> str | None:
        """The PostgreSQL database, or None for SQLite files."""

    @property
    def connection_settings(self) -> Mapping[str, str]:
        """Session settings each database connection must carry (the lease's epoch; empty for SQLite)."""

    def prepare(self) -> None:
        """Create what is missing and check it is writable; raises :class:`~bot.errors.SessionError` if not."""

    def acquire(self, stop: threading.Event | None = None, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait until this process may write (PostgreSQL: holds the lease; a standby waits here). Blocking."""

    def fence(self) -> None:
        """Protect the tables created since :meth:`prepare` against a process that lost the lease (PostgreSQL)."""

    def keep_lease(self, on_lost: Callable[[Exception], None]) -> None:
        """Keep the lease while running (PostgreSQL); ``on_lost`` is called from another thread if it is lost."""

    def release(self) -> None:
        """Let a standby take over at once (a clean stop). Never raises."""

    def private_file(self, name: str) -> PrivateFile:
        """A small private document (``secrets.json``)."""

    def open_backup_tracker(self) -> Any:
        """A sqlite3-style connection whose ``uploaded`` table records which room keys are backed up."""

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

    def move_aside(self) -> list[Any]:
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

    def __str__(self) -> str:
        return str(self.data_dir)

    @property
    def database_url(self) -> None:
        """None: files under ``data_dir``."""
        return None

    @property
    def connection_settings(self) -> Mapping[str, str]:
        """None needed."""
        return {}

    def acquire(self, stop: threading.Event | None = None, on_wait: Callable[[str], None] | None = None) -> None:
        """Nothing to wait for: one process per ``data_dir`` (the control socket refuses a second one)."""

    def fence(self) -> None:
        """Nothing to fence: SQLite files are not shared between machines."""

    def keep_lease(self, on_lost: Callable[[Exception], None]) -> None:
        """No lease."""

    def release(self) -> None:
        """Nothing to hand over."""

    def private_file(self, name: str) -> LocalFile:
        """``data_dir/<name>``, mode 0600."""
        return LocalFile(self.data_dir / name)

    def open_backup_tracker(self) -> sqlite3.Connection:
        """``data_dir/key_backup.db`` (mode 0600)."""
        path = self.data_dir / BACKUP_TRACKER_FILE
        fresh = not path.exists()
        db = sqlite3.connect(str(path))
        if fresh:
            path.chmod(0o600)
        return db

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


def open_storage(config: Config) -> Storage:
    """The storage the config asks for: PostgreSQL when ``database`` is set, else SQLite files under ``data_dir``."""
    if config.database is not None:
        from bot.storage.postgres import PostgresStorage

        return PostgresStorage(
            config.database,
            pickle_key=config.pickle_key,
            lease_ttl=config.database_lease_ttl,
            lease_poll=min(1.0, config.database_lease_ttl / 3),
            data_dir=config.data_dir,
        )
    return SqliteStorage(config.data_dir)
