"""nio's crypto store on PostgreSQL: nio's own tables and code, in schema ``ratchet_crypto``, through psycopg 3.

nio's :class:`~nio.store.SqliteStore` is peewee models bound to a ``SqliteDatabase``; here the same models are bound
to :class:`CryptoDatabase` (peewee's ``Psycopg3Database``), so every line of nio's store code runs unchanged and
keeps its guarantees: the Olm account and every Olm and Megolm session are pickled by nio under the pickle key before
they reach the database, one-time keys are saved before upload (:class:`~bot.matrix.olm.RatchetOlm`), device trust
lives in nio's ``devicetruststate`` table. :class:`PostgresCryptoStore` adds what ``LazySqliteStore`` adds on SQLite
(the shared :class:`~bot.matrix.store.LazyStoreMixin`): Megolm sessions loaded on first use, cached trust answers,
encrypted rooms saved once.

What SQLite accepts and PostgreSQL does not, and how it is handled:

* ``INSERT OR REPLACE`` (nio's ``Model.replace`` and ``replace_many``: Olm sessions, forwarding chains, device keys,
  trust states, sync tokens) becomes ``INSERT ... ON CONFLICT (<key>) DO UPDATE SET <every other column> =
  EXCLUDED.<column>``, the key being the model's primary key unless that is an auto-increment id, else its one
  ``UNIQUE`` constraint (see :func:`replace_target`). The row ends up as REPLACE leaves it, except that an
  auto-increment id is kept instead of renumbered.
* ``SqliteStore._get_device_ids`` is raw SQLite SQL (``==``, ``?``): replaced by the same query in peewee.
* The lazy store pages through sessions by SQLite's ``rowid``; here by ``session_id`` (the primary key).
* Column types come from peewee's PostgreSQL mapping: nio's ``ByteField`` is ``BYTEA`` (vodozemac pickles are
  bytes), its ``DateField`` stays ``TEXT`` in nio's own format, booleans are ``BOOLEAN``. SQLite's pragmas
  (``foreign_keys``, ``secure_delete``) have no counterpart to set: PostgreSQL always enforces foreign keys.

One schema can hold several accounts (devices) of the bot, e.g. after a deliberate new login; nio keys every row by
its account, and every read here goes through this store's own ``(user_id, device_id)`` account row. nio's Megolm
table has ``session_id`` alone as its primary key (on SQLite each device has a file of its own, so rows never meet):
when a newer device receives a session an older one had, the row becomes the newer device's
(:meth:`PostgresNioStore.save_inbound_group_session`), where nio would silently keep it under the old account and
the new device would not find it after a restart.

Connections: one per store, opened with :func:`bot.storage.pg_connection.connect` (``search_path`` set to
``ratchet_crypto``, the ``settings`` mapping applied, e.g. the lease epoch that fences writes), reopened the same way
whenever peewee needs a new one. nio calls its store synchronously from the event loop's thread (peewee would give
another thread a connection of its own, opened the same way). A connection the server dropped (restart, crash,
terminated backend) is noticed by psycopg; the next statement outside a transaction opens a new connection, and a
statement that failed because the connection broke under it is run once more on the new one (nio's writes are all
idempotent: upserts, INSERT-or-ignore, UPDATEs and DELETEs by key). Inside a transaction the error propagates.
TCP keepalives and ``tcp_user_timeout`` are added to the URL (unless it sets them) so a network cut ends in an error
within about a minute instead of a blocked event loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from nio.crypto import InboundGroupSession, OlmDevice
from nio.store import SqliteStore
from nio.store.database import use_database
from nio.store.models import DeviceKeys, ForwardedChains, MegolmInboundSessions
from peewee import (
    EXCLUDED,
    SQL,
    AutoField,
    CompositeKey,
    EnclosedNodeList,
    Entity,
    Field,
    Model,
    NodeList,
    OnConflict,
    Tuple,
)
from playhouse.psycopg3_ext import Psycopg3Database

from bot.matrix.store import LazyStoreMixin
from bot.storage.pg_connection import CRYPTO_SCHEMA, connect, redact_url

__all__ = [
    "CryptoDatabase",
    "PostgresCryptoStore",
    "PostgresNioStore",
    "postgres_crypto_store",
    "replace_target",
]

log = logging.getLogger(__name__)

_UNIQUE = re.compile(r"^\s*UNIQUE\s*\(([^)]*)\)\s*$", re.IGNORECASE)


# -- REPLACE -> INSERT ... ON CONFLICT DO UPDATE -----------------------------------------------------------------


def _unique_keys(model: type[Model]) -> list[tuple[str, ...]]:
    """The column tuples ``model`` declares unique: primary key (unless an auto-increment id), ``UNIQUE(...)``
    table constraints, unique indexes, unique fields."""
    meta = model._meta
    keys: list[tuple[str, ...]] = []
    pk = meta.primary_key
    if isinstance(pk, CompositeKey):
        keys.append(tuple(meta.fields[name].column_name for name in pk.field_names))
    elif pk is not None and pk is not False and not isinstance(pk, AutoField):
        keys.append((pk.column_name,))
    for constraint in meta.constraints or ():
        text = getattr(constraint, "sql", None)
        match = _UNIQUE.match(text) if isinstance(text, str) else None
        if match:
            keys.append(tuple(column.strip().strip('"') for column in match.group(1).split(",")))
    for fields, unique in meta.indexes or ():
        if unique:
            keys.append(tuple(meta.fields[f].column_name if f in meta.fields else f for f in fields))
    keys += [(field.column_name,) for field in meta.sorted_fields if field.unique]
    return keys


_TARGETS: dict[type[Model], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def replace_target(model: type[Model]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(conflict key, columns to overwrite) that make an INSERT on ``model`` behave as SQLite's REPLACE.

    The key is the model's one unique key (see :func:`_unique_keys`); a model with none, or with several (REPLACE
    removes rows conflicting on any of them, ON CONFLICT handles one), is refused rather than half translated. The
    columns are all the others but an auto-increment id: a REPLACE writes a whole new row.
    """
    cached = _TARGETS.get(model)
    if cached is not None:
        return cached
    keys = list(dict.fromkeys(_unique_keys(model)))
    if len(keys) != 1:
        raise ValueError(
            f"cannot translate REPLACE on {model.__name__} to PostgreSQL: it has {len(keys)} unique keys "
            f"({keys or 'none'}), ON CONFLICT needs exactly one"
        )
    key = keys[0]
    others = tuple(
        field.column_name
        for field in model._meta.sorted_fields
        if field.column_name not in key and not isinstance(field, AutoField)
    )
    _TARGETS[model] = (key, others)
    return key, others


class CryptoDatabase(Psycopg3Database):
    """peewee's psycopg 3 database for nio's models: connections through :func:`~bot.storage.pg_connection.connect`
    (schema ``ratchet_crypto``, ``settings`` applied), REPLACE translated, broken connections reopened."""

    def __init__(self, url: str, settings: Mapping[str, str] | None = None) -> None:
        super().__init__(url)
        self.url = url
        self.settings = dict(settings or {})

    def __repr__(self) -> str:
        return f"CryptoDatabase({redact_url(self.url)!r})"

    def _connect(self) -> Any:
        conn = connect(  # with keepalives and a TCP user timeout (pg_connection.NETWORK_DEFAULTS)
            self.url,
            schema=CRYPTO_SCHEMA,
            settings=self.settings,
            autocommit=True,  # peewee runs BEGIN/COMMIT itself
            application_name="ratchet crypto store",
        )
        if self._isolation_level is not None:
            conn.isolation_level = self._isolation_level
        return conn

    # -- REPLACE -----------------------------------------------------------------------------------------------

    def conflict_update(self, oc: OnConflict, query: Any) -> Any:
        """PostgreSQL's ON CONFLICT clause; SQLite's REPLACE (nio's ``replace``/``replace_many``) becomes an upsert
        on the model's unique key that overwrites every other column (see :func:`replace_target`)."""
        if (oc._action or "").upper() != "REPLACE":
            return super().conflict_update(oc, query)
        key, others = replace_target(query.table)
        target = EnclosedNodeList([Entity(column) for column in key])
        if not others:
            return NodeList((SQL("ON CONFLICT"), target, SQL("DO NOTHING")))
        return self._build_on_conflict_update(OnConflict(conflict_target=list(key), preserve=list(others)), query)

    # -- broken connections ------------------------------------------------------------------------------------

    def _broken(self) -> bool:
        conn = self._state.conn
        return conn is not None and (conn.closed or conn.broken)

    def _reopen(self) -> None:
        log.warning("crypto store: the connection to %s was lost; reconnecting", redact_url(self.url))
        try:
            self._state.conn.close()
        except Exception:  # already gone
            pass
        self._state.reset()
        self.connect()

    def cursor(self, commit: Any = None, named_cursor: Any = None) -> Any:
        """A cursor; outside a transaction, on a new connection if the server dropped the last one."""
        if not self._state.closed and not self.in_transaction() and self._broken():
            self._reopen()
        return super().cursor(commit, named_cursor)

    def execute_sql(self, sql: str, params: Any = None, commit: Any = None) -> Any:
        """Run one statement; outside a transaction, once more on a new connection if the connection broke under it
        (every statement nio's store runs outside a transaction is idempotent)."""
        try:
            return super().execute_sql(sql, params)
        except Exception:
            if self.in_transaction() or not self._broken():
                raise
        self._reopen()
        return super().execute_sql(sql, params)

    def rollback(self) -> None:
        """ROLLBACK, unless the connection is gone (the server rolled back already): the error that broke the
        transaction is the one worth seeing."""
        if self._broken():
            return
        super().rollback()


# -- the stores ----------------------------------------------------------------------------------------------


@dataclass
class PostgresNioStore(SqliteStore):
    """nio's ``SqliteStore`` (every method, trust state in the database) on PostgreSQL, eager like nio.

    Made by :func:`postgres_crypto_store` with the database's URL and session settings (class attributes);
    ``store_path`` and ``database_name`` are accepted and ignored.
    """

    database_url: ClassVar[str] = ""
    connection_settings: ClassVar[Mapping[str, str]] = {}

    def _create_database(self) -> CryptoDatabase:
        if not self.database_url:
            raise TypeError("use postgres_crypto_store(url) to make a store class bound to a database")
        return CryptoDatabase(self.database_url, self.connection_settings)

    def close(self) -> None:
        """Close this store's connection (a later call opens a new one)."""
        self.database.close()

    @use_database
    def save_inbound_group_session(self, session: InboundGroupSession) -> None:
        """nio's method (insert, or else overwrite the pickle) as one upsert that also makes the row this account's.

        nio's INSERT-or-ignore would leave a session that another device of this schema saved first under that
        device, where this one never finds it. As with nio, a row is only ever updated for its own session id; unlike
        nio, not when the copy claims another room or sender key (nio would overwrite the pickle of the room's real
        session with it).
        """
        account = self._get_account()
        assert account
        pickle = session.pickle(self.pickle_key)
        MegolmInboundSessions.insert(
            sender_key=session.sender_key,
            account=account,
            fp_key=session.ed25519,
            room_id=session.room_id,
            session=pickle,
            session_id=session.id,
        ).on_conflict(
            conflict_target=[MegolmInboundSessions.session_id],
            preserve=[MegolmInboundSessions.session, MegolmInboundSessions.account],
            where=(MegolmInboundSessions.room_id == EXCLUDED.room_id)
            & (MegolmInboundSessions.sender_key == EXCLUDED.sender_key),
        ).execute()
        for chain in session.forwarding_chain:
            ForwardedChains.replace(sender_key=chain, session=session.id).execute()

    def _get_device_ids(self, account: Any, devices: list[OlmDevice]) -> list[int]:
        """nio's lookup of device row ids (raw SQLite SQL there), in peewee: 300 devices per query."""
        ids: list[int] = []
        pairs = [(device.user_id, device.id) for device in devices]
        for start in range(0, len(pairs), 300):
            chunk = pairs[start : start + 300]
            query = DeviceKeys.select(DeviceKeys.id).where(
                (DeviceKeys.account == account.id) & Tuple(DeviceKeys.user_id, DeviceKeys.device_id).in_(chunk)
            )
            ids += [row[0] for row in query.tuples()]
        return ids


@dataclass
class PostgresCryptoStore(LazyStoreMixin, PostgresNioStore):
    """The bot's crypto store on PostgreSQL: :class:`PostgresNioStore` with what ``LazySqliteStore`` adds on
    SQLite (Megolm sessions loaded on first use, cached trust answers, encrypted rooms saved once)."""

    _session_order: ClassVar[Field] = MegolmInboundSessions.session_id  # the primary key: no rowid here
    _session_order_start: ClassVar[str] = ""


def postgres_crypto_store(url: str, settings: Mapping[str, str] | None = None, *, lazy: bool = True) -> type:
    """A store class for nio (``AsyncClientConfig(store=...)``) keeping the crypto store in ``url``'s database,
    schema ``ratchet_crypto``; every connection it opens applies ``settings`` (e.g. ``{"ratchet.epoch": "3"}``).

    Instances are made as nio makes them, ``cls(user_id, device_id, store_path, pickle_key, store_name)``;
    ``store_path`` and ``store_name`` are ignored. ``lazy=False`` gives nio's eager loading (for comparisons).
    """
    base = PostgresCryptoStore if lazy else PostgresNioStore
    return type(
        base.__name__,
        (base,),
        {"database_url": url, "connection_settings": dict(settings or {}), "__module__": __name__},
    )
