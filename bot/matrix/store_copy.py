"""Copying nio's crypto store from its SQLite file to PostgreSQL (``ratchet db migrate``), with nio's own models.

A bot on SQLite keeps its crypto store in ``data_dir/crypto/<user_id>_<device_id>.db``: nio's peewee models on a
``SqliteDatabase``. On PostgreSQL the same models live in schema ``ratchet_crypto`` (:mod:`bot.matrix.pg_store`).
:func:`copy_crypto_store` reads every table of nio's store (the Olm account, Olm sessions, Megolm inbound sessions and
their forwarding chains, device keys and their trust state, outgoing key requests, encrypted rooms, the sync token,
the store's version) through nio's models bound to the SQLite file and writes the rows through the same models to
PostgreSQL (the database :mod:`bot.matrix.pg_store` opens, with the lease's connection settings), so every value
goes through nio's own conversions both ways; nothing is unpickled or re-encrypted: the pickles move as bytes.

Primary keys are kept (foreign keys stay valid), the tables are filled in foreign-key order, each in one transaction
per batch, and every auto-increment id's sequence is set past the largest id copied, so nio's next insert does not
collide. :func:`inspect_sqlite_crypto_store` checks the file first without writing anything: the store version nio
0.26 writes, no table nio's models do not know (it would be left behind), the device's Olm account present and
readable with the pickle key (a wrong key would make a store the bot cannot open).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nio.crypto import OlmAccount
from nio.store import SqliteStore
from nio.store.database import MatrixStore
from nio.store.models import Accounts, StoreVersion
from peewee import SQL, AutoField, Model, SqliteDatabase, fn, sort_models

from bot.errors import StorageError
from bot.matrix.pg_store import CryptoDatabase
from bot.storage.pg_connection import CRYPTO_SCHEMA, connect

__all__ = [
    "CRYPTO_MODELS",
    "CryptoStoreSummary",
    "Progress",
    "TableCopy",
    "copy_crypto_store",
    "count_crypto_tables",
    "inspect_sqlite_crypto_store",
]

#: nio's models of the crypto store, parents before children (the order rows are copied in).
CRYPTO_MODELS: list[type[Model]] = sort_models(SqliteStore.models)

#: Called as a table is copied: (table name, rows copied so far, rows in the source table).
Progress = Callable[[str, int, int], None]

#: Rows read and written per round trip.
BATCH = 1000


@dataclass
class TableCopy:
    """One table copied: its qualified name, the rows in the source, the rows written and, once verified, the rows
    in the target."""

    table: str
    source: int
    copied: int = 0
    target: int | None = None

    @property
    def verified(self) -> bool:
        """The target holds as many rows as the source."""
        return self.target == self.source


@dataclass(frozen=True)
class CryptoStoreSummary:
    """What :func:`inspect_sqlite_crypto_store` found: rows per table (nio's table names) and the account's keys."""

    rows: dict[str, int]
    identity_key: str
    megolm_sessions: int


def _open_source(path: Path) -> SqliteDatabase:
    if not path.is_file():
        raise StorageError(f"no crypto store at {path}")
    # Opened read-write (a WAL left by a killed bot is folded in as SQLite would on any open), never written to.
    db = SqliteDatabase(str(path), pragmas={"query_only": 1})
    try:
        db.connect()
    except Exception as exc:  # peewee wraps sqlite3's errors
        raise StorageError(f"cannot open the crypto store {path}: {exc}") from exc
    return db


def _table(model: type[Model]) -> str:
    return model._meta.table_name


def _count(db: Any, model: type[Model]) -> int:
    return int(model.select(fn.COUNT(SQL("*"))).scalar(db))


def inspect_sqlite_crypto_store(path: Path, user_id: str, device_id: str, pickle_key: str) -> CryptoStoreSummary:
    """Check nio's SQLite crypto store at ``path`` before it is copied (read only).

    Raises :class:`~bot.errors.StorageError` if the file is missing or unreadable, was written by another version of
    nio's store, has a table nio's models do not know that holds rows (it would not be copied), lacks the Olm account
    of ``user_id``'s device ``device_id``, or that account cannot be unpickled with ``pickle_key``.
    """
    db = _open_source(path)
    try:
        try:
            tables = set(db.get_tables())
        except Exception as exc:
            raise StorageError(f"cannot read the crypto store {path}: {exc}") from exc
        known = {_table(model) for model in CRYPTO_MODELS}
        missing = sorted(known - tables)
        if missing:
            raise StorageError(
                f"{path} is not a complete nio crypto store (missing tables: {', '.join(missing)}); start the bot "
                "once on SQLite so that nio creates them, then migrate"
            )
        unknown = {}
        for table in sorted(tables - known):
            if table.startswith("sqlite_"):
                continue
            rows = db.execute_sql(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if rows:
                unknown[table] = rows
        if unknown:
            listed = ", ".join(f"{name} ({rows} rows)" for name, rows in unknown.items())
            raise StorageError(
                f"{path} has tables nio's store (matrix-nio {_nio_version()}) does not know: {listed}; they would not "
                "be copied"
            )
        version = StoreVersion.select(StoreVersion.version).tuples().execute(db)
        versions = [row[0] for row in version]
        if versions != [MatrixStore.store_version]:
            raise StorageError(
                f"{path} is at store version {versions or 'none'}, this nio writes version "
                f"{MatrixStore.store_version}: start the bot once on SQLite so that nio upgrades it, then migrate"
            )
        row = (
            Accounts.select(Accounts.account, Accounts.shared)
            .where((Accounts.user_id == user_id) & (Accounts.device_id == device_id))
            .tuples()
            .execute(db)
        )
        found = list(row)
        if not found:
            raise StorageError(f"{path} holds no Olm account for {user_id}, device {device_id}")
        pickle, shared = found[0]
        try:
            account = OlmAccount.from_pickle(bytes(pickle), pickle_key, shared)
        except Exception as exc:  # vodozemac's and libolm's pickle errors
            raise StorageError(
                f"the Olm account in {path} cannot be unpickled with this pickle_key ({type(exc).__name__}); "
                "the config must have the pickle_key the bot ran with"
            ) from exc
        rows = {_table(model): _count(db, model) for model in CRYPTO_MODELS}
        return CryptoStoreSummary(
            rows=rows, identity_key=account.identity_keys["curve25519"], megolm_sessions=rows["megolminboundsessions"]
        )
    finally:
        db.close()


def _nio_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("matrix-nio")
    except PackageNotFoundError:  # pragma: no cover - a source checkout
        return "?"


def _qualified(model: type[Model]) -> str:
    return f"{CRYPTO_SCHEMA}.{_table(model)}"


def copy_crypto_store(
    path: Path,
    url: str,
    settings: Mapping[str, str],
    *,
    progress: Progress | None = None,
    batch: int = BATCH,
) -> list[TableCopy]:
    """Copy every row of nio's SQLite crypto store at ``path`` into schema ``ratchet_crypto`` of ``url``'s database.

    The target's tables are created if missing (as nio creates them) and must be empty (:class:`StorageError`
    otherwise: the caller empties the target first). ``settings`` are the connection's session settings (the lease's
    epoch: the tables are fenced). Rows keep their primary keys; sequences are set past the largest id. Returns one
    :class:`TableCopy` per table, in copy order (not yet verified: see :func:`count_crypto_tables`).
    """
    source = _open_source(path)
    target = CryptoDatabase(url, settings)
    copies: list[TableCopy] = []
    step = f"creating the tables of {CRYPTO_SCHEMA}"
    try:
        # Bound to the target for writing (peewee builds inserts for the bound database); reads name the source.
        with target.bind_ctx(CRYPTO_MODELS):
            target.create_tables(CRYPTO_MODELS)  # what nio's store does when it opens (IF NOT EXISTS)
            for model in CRYPTO_MODELS:
                step = f"copying {_qualified(model)}"
                copies.append(_copy_table(model, source, target, progress, batch))
            step = f"setting the sequences of {CRYPTO_SCHEMA}"
            _reset_sequences(target)
    except StorageError:
        raise
    except Exception as exc:  # peewee's, sqlite3's and psycopg's errors
        reason = " ".join(str(exc).split())
        raise StorageError(f"{step} failed ({type(exc).__name__}: {reason})") from exc
    finally:
        source.close()
        target.close()
    return copies


def _copy_table(
    model: type[Model], source: SqliteDatabase, target: CryptoDatabase, progress: Progress | None, batch: int
) -> TableCopy:
    name = _qualified(model)
    present = _count(target, model)
    if present:
        raise StorageError(f"{name} already holds {present} rows: the target crypto store must be empty")
    copy = TableCopy(name, _count(source, model))
    fields = list(model._meta.sorted_fields)  # every column, the primary key included
    order = model._meta.primary_key
    if progress is not None:
        progress(name, 0, copy.source)
    rows = model.select(*fields).order_by(order).tuples().execute(source)
    pending: list[tuple] = []

    def flush() -> None:
        with target.atomic():
            model.insert_many(pending, fields=fields).execute(target)
        copy.copied += len(pending)
        pending.clear()
        if progress is not None:
            progress(name, copy.copied, copy.source)

    for row in rows:
        pending.append(row)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return copy


def _reset_sequences(target: CryptoDatabase) -> None:
    """Set each auto-increment id's sequence past the largest id (or back to 1 for an empty table)."""
    for model in CRYPTO_MODELS:
        pk = model._meta.primary_key
        if not isinstance(pk, AutoField):
            continue
        table = f'"{CRYPTO_SCHEMA}"."{_table(model)}"'
        target.execute_sql(
            f"SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE(MAX({pk.column_name}), 1), "
            f"MAX({pk.column_name}) IS NOT NULL) FROM {table}",
            (table, pk.column_name),
        )


def count_crypto_tables(url: str) -> dict[str, int]:
    """Rows per table of schema ``ratchet_crypto`` for nio's models (qualified names; tables missing are absent)."""
    counts: dict[str, int] = {}
    with connect(url, application_name="ratchet db migrate") as conn:
        for model in CRYPTO_MODELS:
            name = _qualified(model)
            if conn.execute("SELECT to_regclass(%s)", (f'"{CRYPTO_SCHEMA}"."{_table(model)}"',)).fetchone()[0]:
                counts[name] = conn.execute(f'SELECT count(*) FROM "{CRYPTO_SCHEMA}"."{_table(model)}"').fetchone()[0]
    return counts
