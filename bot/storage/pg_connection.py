"""Connections to PostgreSQL: the driver, the schema layout, and SQLite-style statements on a PostgreSQL connection.

The driver is `psycopg 3 <https://www.psycopg.org/psycopg3/>`_ (``pip install 'matrix-ratchet[postgresql]'``). It
was chosen over asyncpg because Ratchet needs both kinds of connection: nio calls its crypto store synchronously from
inside decryption and key sharing, and the runtime's state (handled-event records, the sync token) is written
synchronously on the event loop in microseconds; plugins' storage is async. psycopg has one connection type for both,
one set of errors, and peewee (which nio's crypto store is written in) speaks it.

Everything one bot keeps lives in one database, in schemas of its own (the database may be shared with other
applications; two bots need two databases):

* ``ratchet``: runtime state (sync token, handled events, waiting events), the bot's private files (login,
  secrets) and the lease of the active/standby pair;
* ``ratchet_crypto``: nio's crypto store (Olm account, sessions, device keys);
* ``ratchet_plugin_<name>``: each plugin's own tables; the plugin's SQL runs with ``search_path`` set to it.

:class:`SqlConnection` lets code written for ``sqlite3`` run unchanged on PostgreSQL: ``?`` placeholders (and
``:name`` ones with a mapping) become psycopg's, ``%`` is escaped, and the cursor answers ``fetchone``,
``fetchall``, ``rowcount`` and iteration.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bot.errors import StorageError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CRYPTO_SCHEMA",
    "STATE_SCHEMA",
    "SqlConnection",
    "connect",
    "ensure_schema",
    "is_postgres_url",
    "plugin_schema",
    "redact_url",
    "sqlite_to_psycopg",
    "with_network_defaults",
]

#: Runtime state, private files and the lease.
STATE_SCHEMA = "ratchet"
#: nio's crypto store.
CRYPTO_SCHEMA = "ratchet_crypto"
#: Prefix of each plugin's schema.
PLUGIN_SCHEMA_PREFIX = "ratchet_plugin_"

_PLUGIN_NAME = re.compile(r"^[a-z0-9_]{1,40}$")


#: libpq parameters added to the URL unless it has them: a dead peer or a cut network is an error, not a hang.
NETWORK_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def with_network_defaults(url: str, overrides: Mapping[str, str] | None = None) -> str:
    """``url`` with :data:`NETWORK_DEFAULTS` (updated by ``overrides``) for each parameter it does not set itself."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {name for name, _ in query}
    wanted = {**NETWORK_DEFAULTS, **(overrides or {})}
    query += [(name, value) for name, value in wanted.items() if name not in present]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def is_postgres_url(value: str) -> bool:
    """True if ``value`` is a ``postgresql://`` (or ``postgres://``) URL."""
    return value.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def plugin_schema(plugin: str) -> str:
    """The schema of plugin ``plugin``'s tables: ``ratchet_plugin_<name>`` (lower case, ``-`` and ``.`` as ``_``)."""
    name = plugin.lower().replace("-", "_").replace(".", "_")
    if not _PLUGIN_NAME.match(name):
        raise ValueError(f"invalid plugin name for a database schema: {plugin!r}")
    return PLUGIN_SCHEMA_PREFIX + name


def _driver() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StorageError(
            "database: a postgresql:// URL needs the psycopg driver: pip install 'matrix-ratchet[postgresql]'"
        ) from exc
    return psycopg


def connect(
    url: str,
    *,
    schema: str | None = None,
    settings: Mapping[str, str] | None = None,
    autocommit: bool = True,
    application_name: str = "ratchet",
    network: Mapping[str, str] | None = None,
    connect_timeout: int = 10,
) -> psycopg.Connection:
    """A new connection to ``url``; ``schema`` (created if missing) becomes the ``search_path``.

    ``settings`` are session settings applied at once (``SET name = value``), e.g. the lease epoch that fences writes
    (see :mod:`bot.storage.lease`). TCP keepalives and a user timeout are set (:func:`with_network_defaults`,
    ``network`` overriding them) unless the URL sets them. A server that cannot be reached is a
    :class:`~bot.errors.StorageError` naming the URL without its password.
    """
    psycopg = _driver()
    try:
        conn = psycopg.connect(
            with_network_defaults(url, network),
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=connect_timeout,
        )
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to {redact_url(url)}: {str(exc).strip()}") from exc
    try:
        with conn.transaction() if not autocommit else _nullcontext():
            if schema is not None:
                # only when missing: a role without CREATE on the database can use schemas made for it
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
                    ensure_schema(conn, schema)
                conn.execute(f'SET search_path TO "{schema}"')
            for name, value in (settings or {}).items():
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    except psycopg.Error as exc:
        conn.close()
        raise StorageError(f"cannot prepare {redact_url(url)}: {str(exc).strip()}") from exc
    return conn


def ensure_schema(conn: Any, schema: str) -> None:
    """``CREATE SCHEMA IF NOT EXISTS schema``, also when another session creates it at the same moment.

    PostgreSQL's ``IF NOT EXISTS`` is not atomic: two sessions that both find the schema missing both insert it, and
    the one that waited for the other's commit fails with a unique violation on ``pg_namespace`` (two processes of a
    bot, or two plugins' stores, opening at once). That error means the schema exists now, which is all the caller
    asked for. The statement runs in a savepoint (a transaction block under autocommit) so the failure does not abort
    the caller's transaction.
    """
    psycopg = _driver()
    try:
        with conn.transaction():
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
        pass


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_TOKEN = re.compile(
    r"""
      '(?:[^']|'')*'            # string literal
    | "(?:[^"]|"")*"            # quoted identifier
    | --[^\n]*                  # line comment
    | /\*.*?\*/                 # block comment
    | ::                        # a cast, not a named parameter
    | \?                        # positional parameter
    | :[A-Za-z_][A-Za-z0-9_]*   # named parameter
    | %                         # must be escaped for psycopg
    """,
    re.VERBOSE | re.DOTALL,
)


def sqlite_to_psycopg(sql: str, named: bool = False) -> str:
    """``sql`` written with sqlite3's placeholders, in psycopg's: ``?`` -> ``%s``, ``:name`` -> ``%(name)s`` (only
    when ``named``), ``%`` -> ``%%``; string literals, quoted identifiers, comments and ``::`` casts are left alone
    (``%`` inside them is still escaped, since psycopg reads the whole text)."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if token.startswith(":") and token != "::":
            return f"%({token[1:]})s" if named else token
        return token.replace("%", "%%")

    return _TOKEN.sub(replace, sql)


class SqlCursor:
    """What a statement run through :class:`SqlConnection` answers (the parts of ``sqlite3.Cursor`` code uses)."""

    def __init__(self, cursor: psycopg.Cursor) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        """Rows changed by an INSERT/UPDATE/DELETE (-1 if not applicable)."""
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        """Column descriptions of a query's result (``name`` first, as in sqlite3), or None."""
        return self._cursor.description

    def fetchone(self) -> tuple | None:
        """The next row, or None."""
        return self._cursor.fetchone() if self._cursor.description is not None else None

    def fetchall(self) -> list[tuple]:
        """The remaining rows."""
        return self._cursor.fetchall() if self._cursor.description is not None else []

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())


class SqlConnection:
    """A psycopg connection that runs statements written for ``sqlite3`` (see :func:`sqlite_to_psycopg`).

    ``execute`` and ``executemany`` take ``?`` placeholders with a sequence, or ``:name`` ones with a mapping.
    ``executescript`` runs several statements separated by ``;`` (no parameters). Errors are the driver's
    (``psycopg.Error``); :attr:`raw` is the psycopg connection itself.
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> SqlCursor:
        """Run one statement."""
        named = isinstance(params, Mapping)
        if not params and not named:  # without parameters psycopg reads no placeholders
            return SqlCursor(self.raw.execute(sql))
        return SqlCursor(self.raw.execute(sqlite_to_psycopg(sql, named=named), params))

    def executemany(self, sql: str, seq_of_params: Sequence[Sequence[Any] | Mapping[str, Any]]) -> SqlCursor:
        """Run one statement for each parameter set."""
        rows = list(seq_of_params)
        named = bool(rows) and isinstance(rows[0], Mapping)
        cursor = self.raw.cursor()
        with self.raw.transaction():  # one commit for all of them
            cursor.executemany(sqlite_to_psycopg(sql, named=named), rows)
        return SqlCursor(cursor)

    def executescript(self, script: str) -> None:
        """Run a script of statements (psycopg sends it as one simple query; no parameters)."""
        self.raw.execute(script.encode())

    def commit(self) -> None:
        """Nothing to do: statements commit as they run (autocommit), as sqlite3 code expects after ``commit()``."""

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()
