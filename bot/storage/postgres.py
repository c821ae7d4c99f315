"""PostgreSQL storage (``database: postgresql://...``): everything a bot keeps, in one database another machine can
reach, so that a standby process there is the same bot, the same device, with the same keys.

Layout (see :mod:`bot.storage.pg_connection`): schema ``ratchet`` holds the runtime state (the same tables as
``state.db``), ``files`` (the login, encrypted under a key derived from the pickle key, and ``secrets.json``, whose
secrets are encrypted already), ``uploaded`` (which room keys are in the server-side backup) and the lease;
``ratchet_crypto`` holds nio's crypto store; ``ratchet_plugin_<name>`` each plugin's tables.

Nothing is written before this process holds the lease (:meth:`PostgresStorage.acquire`): every connection opened
after that carries the lease's epoch, and every table is fenced (:mod:`bot.storage.lease`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from bot.crypto.ssss import decrypt_secret, encrypt_secret
from bot.errors import SecretStorageError, SessionError, StorageError
from bot.storage.credentials import Credentials
from bot.storage.lease import Lease, fence_schema, install_lease_schema
from bot.storage.pg_connection import (
    CRYPTO_SCHEMA,
    STATE_SCHEMA,
    SqlConnection,
    connect,
    plugin_schema,
    redact_url,
)
from bot.storage.plugin_storage import Migration
from bot.storage.private_files import DatabaseFile
from bot.storage.state import StateStore

__all__ = ["PostgresStorage", "crypto_store_accounts"]

_CREDENTIALS = "credentials.json"
_REPLACED_DEVICES = "crypto.replaced"
_SALT = b"ratchet credentials v1"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.files (
    name TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.uploaded (
    version TEXT NOT NULL, room_id TEXT NOT NULL, session_id TEXT NOT NULL,
    PRIMARY KEY (version, room_id, session_id)
);
CREATE SCHEMA IF NOT EXISTS {CRYPTO_SCHEMA};
"""


def crypto_store_accounts(url: str) -> list[tuple[str, str]]:
    """(user id, device id) of every Olm account in ``url``'s crypto store (nio's ``accounts`` table), oldest first;
    read only, nothing is created."""
    with connect(url, application_name="ratchet crypto store") as conn:
        if conn.execute("SELECT to_regclass(%s)", (f'"{CRYPTO_SCHEMA}".accounts',)).fetchone()[0] is None:
            return []
        query = f'SELECT user_id, device_id FROM "{CRYPTO_SCHEMA}".accounts ORDER BY id'
        return [(user_id, device_id) for user_id, device_id in conn.execute(query).fetchall()]


def _credentials_key(pickle_key: str) -> bytes:
    return HKDF(pickle_key.encode("utf-8"), 32, _SALT, SHA256, context=b"ratchet.credentials")


class PostgresStorage:
    """One bot's storage in the PostgreSQL database at ``url``.

    Args:
        url: ``postgresql://user:password@host:port/database``.
        pickle_key: the bot's pickle key (the login is encrypted under a key derived from it).
        lease_ttl: seconds the lease lasts without renewal (the longest takeover after the active froze).
        lease_poll: seconds between a standby's attempts to take the lease.
        data_dir: where the local control socket lives (nothing else is kept there).
    """

    def __init__(
        self,
        url: str,
        *,
        pickle_key: str,
        lease_ttl: float = 10.0,
        lease_poll: float = 1.0,
        data_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._key = _credentials_key(pickle_key)
        self.lease = Lease(url, ttl=lease_ttl, poll=lease_poll)
        self._conn: Any = None
        self._fenced = False
        self._prepared = False

    def __repr__(self) -> str:
        return f"PostgresStorage({redact_url(self.url)!r})"

    def __str__(self) -> str:
        return redact_url(self.url)

    # -- the seam's engine-specific parts ----------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """The database (the crypto store connects to it too)."""
        return self.url

    @property
    def connection_settings(self) -> dict[str, str]:
        """Session settings every connection must carry: the lease's epoch (raises :class:`LeaseLost` before
        :meth:`acquire`)."""
        return self.lease.settings

    def prepare(self) -> None:
        """Create the schemas, tables, lease and fence if missing; a server that cannot be reached is a
        :class:`~bot.errors.SessionError` naming the URL without its password."""
        if self._prepared:
            return
        if self.data_dir is not None:  # only the local control socket lives there
            try:
                self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise SessionError(f"data_dir {self.data_dir} is not usable: {exc.strerror or exc}") from exc
        try:
            with connect(self.url) as conn:
                install_lease_schema(conn)
                conn.execute(_SCHEMA.encode())
                StateStore.open_postgres(self.url).close()  # the state tables
                fence_schema(conn, STATE_SCHEMA)
        except StorageError as exc:
            raise SessionError(str(exc)) from exc
        except Exception as exc:  # psycopg errors
            raise SessionError(f"cannot prepare {self}: {str(exc).strip()}") from exc
        self._prepared = True

    def acquire(self, stop: threading.Event | None = None, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait until this process holds the lease (blocking: run it in a thread). See :meth:`Lease.acquire`."""
        self.prepare()
        self.lease.acquire(stop=stop, on_wait=on_wait)

    def fence(self) -> None:
        """Fence the tables created since :meth:`prepare` (nio creates its crypto tables when the store opens)."""
        with connect(self.url) as conn:
            for schema in (STATE_SCHEMA, CRYPTO_SCHEMA):
                fence_schema(conn, schema)

    def keep_lease(self, on_lost: Callable[[Exception], None]) -> None:
        """Renew the lease on a thread of its own; ``on_lost`` is called from that thread once it is lost."""
        self.lease.start_renewing(on_lost)

    def release(self) -> None:
        """Hand the lease over at a clean stop, close connections. Never raises."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a connection already broken
                pass
            self._conn = None
        self.lease.release()

    def _connection(self) -> Any:
        """The connection for the login and private files: with the lease's epoch once it is held (before that,
        reads work and the fence refuses writes: a tool reading the login while the bot runs elsewhere)."""
        if self._conn is not None and not self._conn.closed:
            if self.lease.epoch is None or self._fenced:
                return self._conn
            self._conn.close()
        self._fenced = self.lease.epoch is not None
        settings = self.connection_settings if self._fenced else None
        self._conn = connect(self.url, schema=STATE_SCHEMA, settings=settings)
        return self._conn

    # -- the login ---------------------------------------------------------------------------------------------

    @property
    def crypto_path(self) -> Path:
        """Unused on PostgreSQL (nio is given a path it never writes to)."""
        return (self.data_dir or Path(".")) / "crypto"

    def load_credentials(self) -> Credentials | None:
        """The saved login, decrypted; a damaged or undecryptable one is a :class:`SessionError`."""
        text = self.private_file(_CREDENTIALS).read_text()
        if text is None:
            return None
        try:
            data = json.loads(decrypt_secret(self._key, _CREDENTIALS, json.loads(text)))
            return Credentials(
                homeserver=str(data["homeserver"]),
                user_id=str(data["user_id"]),
                device_id=str(data["device_id"]),
                access_token=str(data["access_token"]),
            )
        except SecretStorageError as exc:
            raise SessionError(
                f"{self}: cannot decrypt the stored login (is pickle_key the one it was saved with?)"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionError(f"{self}: unreadable stored login ({exc.__class__.__name__})") from exc

    def save_credentials(self, credentials: Credentials) -> None:
        """Keep the login, encrypted under a key derived from the pickle key."""
        plain = json.dumps(
            {
                "homeserver": credentials.homeserver,
                "user_id": credentials.user_id,
                "device_id": credentials.device_id,
                "access_token": credentials.access_token,
            }
        )
        self.private_file(_CREDENTIALS).write_text(json.dumps(encrypt_secret(self._key, _CREDENTIALS, plain)))

    def private_file(self, name: str) -> DatabaseFile:
        """A private document, a row of ``ratchet.files``."""
        return DatabaseFile(self._connection, name, str(self))

    # -- the crypto store --------------------------------------------------------------------------------------

    def _accounts(self) -> list[tuple[str, str]]:
        replaced = set(json.loads(self.private_file(_REPLACED_DEVICES).read_text() or "[]"))
        return [(u, d) for u, d in crypto_store_accounts(self.url) if f"{u} {d}" not in replaced]

    def has_crypto_store(self, user_id: str, device_id: str) -> bool:
        """True if the crypto store holds this device's Olm account."""
        return (user_id, device_id) in self._accounts()

    def crypto_stores(self) -> list[str]:
        """The devices whose accounts the crypto store holds (and were not moved aside)."""
        return [f"{u} {d}" for u, d in self._accounts()]

    def move_aside(self) -> list[str]:
        """Keep the login under a dated name and mark the crypto store's accounts as replaced (nothing deleted)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved: list[str] = []
        current = self.private_file(_CREDENTIALS).read_text()
        if current is not None:
            self.private_file(f"{_CREDENTIALS}.replaced-{stamp}").write_text(current)
            self._connection().execute(f"DELETE FROM {STATE_SCHEMA}.files WHERE name = %s", (_CREDENTIALS,))
            moved.append(f"{self} (ratchet.files: {_CREDENTIALS}.replaced-{stamp})")
        accounts = self.crypto_stores()
        if accounts:
            replaced = json.loads(self.private_file(_REPLACED_DEVICES).read_text() or "[]")
            self.private_file(_REPLACED_DEVICES).write_text(json.dumps(sorted({*replaced, *accounts})))
            moved.append(f"{self} (crypto store accounts marked replaced: {', '.join(accounts)})")
        return moved

    # -- state and plugins -------------------------------------------------------------------------------------

    def open_state(self) -> StateStore:
        """The runtime state in schema ``ratchet`` (fenced by the lease)."""
        return StateStore.open_postgres(self.url, self.connection_settings)

    def open_backup_tracker(self) -> SqlConnection:
        """A fenced connection on schema ``ratchet`` whose ``uploaded`` table records backed-up room keys."""
        return SqlConnection(connect(self.url, schema=STATE_SCHEMA, settings=self.connection_settings))

    async def open_plugin_storage(self, plugin: str, migrations: Sequence[Migration]) -> Any:
        """Plugin ``plugin``'s schema, its pending ``migrations`` applied, its tables fenced."""
        from bot.storage.pg_plugin_storage import PostgresPluginStorage

        def fence(conn: Any, schema: str) -> None:
            fence_schema(getattr(conn, "raw", conn), schema)

        plugin_schema(plugin)  # a clear error for a name PostgreSQL cannot hold
        return await PostgresPluginStorage.open(
            self.url, plugin=plugin, migrations=migrations, settings=self.connection_settings, after_migrations=fence
        )

