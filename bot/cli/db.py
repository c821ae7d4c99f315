"""``ratchet db migrate``: move a stopped bot from SQLite files (``data_dir``) to PostgreSQL, nothing lost.

What is copied, from ``--from DATA_DIR`` to ``--to postgresql://...``:

* ``crypto/<user_id>_<device_id>.db``, nio's crypto store, every table of it (the Olm account, Olm and Megolm sessions,
  device keys and trust, outgoing key requests, encrypted rooms, sync token) through nio's own models, primary keys
  kept (:mod:`bot.matrix.store_copy`), into schema ``ratchet_crypto``;
* ``state.db`` (sync token and trust pins in ``kv``, ``handled``, ``pending_utd`` in arrival order, ``room_state``,
  ``appservice_txn``) and
  ``key_backup.db`` (``uploaded``) into schema ``ratchet``; ``secrets.json`` as it is (its secrets are encrypted);
* ``plugins/<name>.db`` of every plugin in the config: the plugin's migrations are run on PostgreSQL as the bot
  would run them (``ratchet_plugin_<name>``), then every table's rows are copied (the key-value table
  ``ratchet_kv`` too) and identity sequences set past the largest id. A plugin database whose plugin is not in the
  config is refused unless ``--skip-plugin NAME``;
* ``credentials.json`` last, encrypted under the pickle key: until it is written, a bot started on a half-copied
  target refuses to start (a crypto store without a login), instead of running on part of the data.

Then every table is counted on both sides, and the login and secrets are read back. Nothing in ``data_dir`` is
changed: the SQLite deployment stays as it was, to go back to.

Refused (nothing written): a source whose bot is running (its control socket answers), a target whose lease another
process holds (a bot running on it), a target that holds data (unless ``--force``: the target's crypto and plugin
schemas are dropped and the tables of schema ``ratchet`` emptied, the lease kept). Exit codes as the other commands:
2 for what the operator must change (arguments, config, a non-empty target, an unknown plugin database), 1 for
failures (database unreachable, a bot running, a copy or a check failing), 0 once everything is copied and verified.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bot.e2ee.control import CONTROL_SOCKET, control_socket_alive
from bot.errors import PluginLoadError, SessionError, StorageError
from bot.storage.backend import BACKUP_TRACKER_FILE, SqliteStorage
from bot.storage.credentials import Credentials
from bot.storage.pg_connection import (
    CRYPTO_SCHEMA,
    PLUGIN_SCHEMA_PREFIX,
    STATE_SCHEMA,
    connect,
    is_postgres_url,
    plugin_schema,
    redact_url,
)
from bot.storage.plugin_storage import Migration, plugin_db_path
from bot.storage.state import StateStore

if TYPE_CHECKING:  # nio's models are imported when a migration runs, not by every ratchet command
    from bot.config import Config
    from bot.matrix.store_copy import TableCopy

__all__ = ["MigrateError", "ProgressLine", "add_parsers", "migrate", "run"]

EXIT_CONFIG = 2
EXIT_FAILURE = 1

#: Files of schema ``ratchet.files`` and what they are called under data_dir.
SECRETS_FILE = "secrets.json"
CREDENTIALS_FILE = "credentials.json"

#: The runtime state's tables (schema ``ratchet`` / ``state.db``): (table, columns, order of the rows).
_STATE_TABLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("kv", ("key", "value"), "key"),
    ("handled", ("event_id", "plugin", "ts"), "ts, event_id, plugin"),
    # arrival order: PostgreSQL numbers the rows (seq) in the order they are copied, as SQLite's rowid did
    ("pending_utd", ("event_id", "room_id", "session_id", "source", "received_ts"), "rowid"),
    ("room_state", ("room_id", "type", "state_key", "event"), "room_id, type, state_key"),
    # appservice mode: the latest handled transaction ids (none is handled twice after the move), numbered by
    # PostgreSQL in the order they are copied, as SQLite numbered them
    ("appservice_txn", ("txn_id",), "seq"),
)
_TRACKER_TABLE = ("uploaded", ("version", "room_id", "session_id"), "version, room_id, session_id")

#: Tables of the target that never count as data: the lease, each plugin schema's migration version.
_NOT_DATA = {(STATE_SCHEMA, "lease")}
_VERSION_TABLE = "ratchet_schema_version"

HELP = "move a stopped bot from SQLite files to PostgreSQL (every key, session, state row and plugin table)"
DESCRIPTION = (
    "Copy a stopped SQLite deployment (--from DATA_DIR, default: data_dir of the config) into the PostgreSQL "
    "database --to URL (default: database of the config): the login (same device), nio's whole crypto store (Olm "
    "account and sessions, every Megolm session, device keys and trust, key requests, encrypted rooms), "
    "secrets.json, the key-backup tracker, the runtime state (sync token, handled events, events waiting for keys, "
    "trust pins, the rooms' state) and the data of every plugin in the config (its migrations are run on "
    "PostgreSQL first). Every table is counted on both sides afterwards. DATA_DIR is only read. Progress goes to "
    "stderr, the summary to stdout. Then set database: in the config and start the bot (data_dir may be empty on "
    "PostgreSQL)."
)
EPILOG = (
    "Refused: a bot running on DATA_DIR (its control socket answers) or on the target (it holds the lease), exit 1; "
    "a target holding data (rows in schema ratchet, ratchet_crypto or ratchet_plugin_*), exit 2 unless --force; "
    "a plugin database in DATA_DIR/plugins whose plugin is not in the config, exit 2 unless --skip-plugin NAME. "
    "--force DROPS the schemas ratchet_crypto and ratchet_plugin_* and EMPTIES the tables of schema ratchet (the "
    "lease is kept) before copying; that is also how to re-run after a failed migration, which leaves the target "
    "as it is (the login is copied last, so a bot refuses to start on a half-copied target). "
    "Exit 0: copied and verified; 1: failed; 2: usage, config or a refusal to fix first."
)


def add_parsers(sub: Any) -> None:
    """Add ``db migrate`` to the ``ratchet`` subcommands."""
    db = sub.add_parser("db", help="the bot's database: migrate from SQLite to PostgreSQL", description=HELP)
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    mig = actions.add_parser("migrate", help=HELP, description=DESCRIPTION, epilog=EPILOG)
    mig.add_argument("-c", "--config", required=True, type=Path, help="path to the YAML config (pickle_key, plugins)")
    mig.add_argument(
        "--from", dest="source", type=Path, metavar="DATA_DIR", help="the SQLite data_dir (default: the config's)"
    )
    mig.add_argument(
        "--to", dest="target", metavar="URL", help="postgresql://user:password@host:port/database (default: the "
        "config's database)"
    )
    mig.add_argument(
        "--force", action="store_true", help="empty a target that holds data first (drops schemas ratchet_crypto "
        "and ratchet_plugin_*, empties the tables of schema ratchet)"
    )
    mig.add_argument(
        "--skip-plugin", action="append", default=[], metavar="NAME", help="leave this plugin's database in "
        "DATA_DIR/plugins behind (its plugin is not in the config); repeatable"
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """``ratchet db ACTION`` with the loaded ``config``; returns the exit code."""
    source = args.source if args.source is not None else config.data_dir
    target = args.target if args.target is not None else config.database
    if not target:
        print("ratchet: db migrate: no target: give --to postgresql://... (or set database: in the config)",
              file=sys.stderr)
        return EXIT_CONFIG
    if not is_postgres_url(target):
        print(f"ratchet: db migrate: --to must be a postgresql:// URL, got {redact_url(target)!r}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        migrate(config, Path(source), target, force=args.force, skip_plugins=args.skip_plugin)
    except MigrateError as err:
        print(f"ratchet: db migrate: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"ratchet: db migrate: interrupted; {_LEFT_AS_IS}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


_LEFT_AS_IS = (
    "the target is left as it is (incomplete: a bot refuses to start on it until the login is copied, which is done "
    "last); fix the cause and run again with --force, which empties the target first"
)


class MigrateError(Exception):
    """The migration was refused (``code`` 2) or failed (``code`` 1); the message says why and what to do."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# ============================================================================================ progress


class ProgressLine:
    """One line per table on ``stream``: updated in place (``\\r``) on a terminal, printed once it is done otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._table: str | None = None
        self._done = 0
        self._total = 0
        self._last_draw = 0.0

    def __call__(self, table: str, done: int, total: int) -> None:
        """``table`` has ``done`` of its ``total`` rows copied."""
        if table != self._table:
            self.finish()
            self._table = table
        self._done, self._total = done, total
        if self.tty:
            now = time.monotonic()
            if done in (0, total) or now - self._last_draw >= 0.1:
                self._last_draw = now
                self.stream.write(f"\r{self._text()}")
                self.stream.flush()

    def _text(self) -> str:
        percent = f"{100 * self._done // self._total:3d}%" if self._total else "100%"
        return f"  {self._table:<52} {self._done:>10,} / {self._total:,} rows {percent}"

    def finish(self) -> None:
        """End the current table's line."""
        if self._table is None:
            return
        if self.tty:
            self.stream.write(f"\r{self._text()}\n")
        else:
            self.stream.write(f"{self._text()}\n")
        self.stream.flush()
        self._table = None


# ============================================================================================ the source


@dataclass
class _Source:
    """What was found in the SQLite data_dir."""

    data_dir: Path
    credentials: Credentials
    crypto_file: Path
    other_crypto: list[str]
    secrets: str | None
    plugins: dict[str, Path]  # plugin -> its database (plugins in the config that have one)
    migrations: dict[str, Sequence[Migration]]  # every plugin in the config
    skipped: list[str] = field(default_factory=list)


def _sqlite_version(path: Path) -> int:
    with closing(_read_only(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _read_only(path: Path) -> sqlite3.Connection:
    """``path`` opened read only (the source is never written)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _inspect_source(config: Config, data_dir: Path, skip: Sequence[str]) -> _Source:
    """Check the SQLite data_dir (read only); MigrateError with code 2 for what the operator must fix."""
    if not data_dir.is_dir():
        raise MigrateError(f"{data_dir} is not a folder (--from: the bot's SQLite data_dir)", EXIT_CONFIG)
    if control_socket_alive(data_dir / CONTROL_SOCKET):
        raise MigrateError(
            f"the bot is running on {data_dir} (its control socket {data_dir / CONTROL_SOCKET} answers): stop it "
            "first; a running bot keeps writing keys and state the copy would miss"
        )
    found = {p.stem: p for p in sorted((data_dir / "plugins").glob("*.db"))}
    unknown = sorted(set(found) - set(config.plugins) - set(skip))
    if unknown:
        listed = ", ".join(f"{name} ({found[name]})" for name in unknown)
        raise MigrateError(
            f"plugin databases in {data_dir / 'plugins'} whose plugins are not in the config: {listed}. Add the "
            f"plugins to the config (their migrations make the tables on PostgreSQL), or leave the data behind with "
            f"{' '.join(f'--skip-plugin {name}' for name in unknown)}",
            EXIT_CONFIG,
        )
    sqlite = SqliteStorage(data_dir)
    try:
        creds = sqlite.load_credentials()
    except SessionError as exc:
        raise MigrateError(str(exc), EXIT_CONFIG) from None
    if creds is None:
        raise MigrateError(
            f"no login in {sqlite.credentials_path}: nothing to migrate (is {data_dir} the bot's data_dir, and did "
            "the bot run there?)",
            EXIT_CONFIG,
        )
    if creds.user_id != config.user_id:
        raise MigrateError(
            f"{sqlite.credentials_path} is the login of {creds.user_id}, the config is for {config.user_id}",
            EXIT_CONFIG,
        )
    crypto_file = sqlite.crypto_store_file(creds.user_id, creds.device_id)
    from bot.matrix.store_copy import inspect_sqlite_crypto_store

    try:
        inspect_sqlite_crypto_store(crypto_file, creds.user_id, creds.device_id, config.pickle_key)
    except StorageError as exc:
        raise MigrateError(str(exc), EXIT_CONFIG) from None
    other = [name for name in sqlite.crypto_stores() if name != crypto_file.name]
    secrets_path = data_dir / SECRETS_FILE
    secrets = secrets_path.read_text() if secrets_path.exists() else None

    migrations: dict[str, Sequence[Migration]] = {}
    plugins: dict[str, Path] = {}
    for name in config.plugins:
        try:
            plugin_schema(name)
        except ValueError as exc:
            raise MigrateError(f"plugin {name}: {exc}", EXIT_CONFIG) from None
        try:
            from bot.plugin.loader import import_plugin

            migrations[name] = tuple(import_plugin(name, config.plugin_dirs).migrations)
        except PluginLoadError as exc:
            raise MigrateError(str(exc), EXIT_CONFIG) from None
        path = plugin_db_path(data_dir, name)
        if not path.exists():
            continue
        try:
            version = _sqlite_version(path)
        except sqlite3.Error as exc:
            raise MigrateError(f"plugin {name}: cannot read {path}: {exc}") from None
        if version != len(migrations[name]):
            raise MigrateError(
                f"plugin {name}: {path} is at version {version} but the plugin has {len(migrations[name])} "
                "migrations; start the bot once on SQLite with this version of the plugin (it migrates the "
                "database), stop it, then migrate",
                EXIT_CONFIG,
            )
        plugins[name] = path
    return _Source(
        data_dir, creds, crypto_file, other, secrets, plugins, migrations, sorted(set(found) & set(skip))
    )


# ============================================================================================ the target


def _data_tables(conn: Any) -> list[tuple[str, str]]:
    """The target's tables in Ratchet's schemas that hold the bot's data (not the lease, not version rows)."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND (n.nspname IN (%s, %s) OR starts_with(n.nspname, %s)) "
        "ORDER BY 1, 2",
        (STATE_SCHEMA, CRYPTO_SCHEMA, PLUGIN_SCHEMA_PREFIX),
    ).fetchall()
    return [(s, t) for s, t in rows if (s, t) not in _NOT_DATA and t != _VERSION_TABLE]


def _target_contents(url: str) -> dict[str, int]:
    """``schema.table`` -> rows, for the target's tables that hold data."""
    found: dict[str, int] = {}
    with connect(url, application_name="ratchet db migrate") as conn:
        for schema, table in _data_tables(conn):
            rows = conn.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]
            if rows:
                found[f"{schema}.{table}"] = rows
    return found


def _empty_target(url: str, settings: dict[str, str]) -> None:
    """--force: drop the crypto and plugin schemas, empty the tables of schema ``ratchet`` (not the lease)."""
    with connect(url, settings=settings, application_name="ratchet db migrate") as conn, conn.transaction():
        schemas = [
            row[0]
            for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = %s OR starts_with(nspname, %s) ORDER BY 1",
                (CRYPTO_SCHEMA, PLUGIN_SCHEMA_PREFIX),
            ).fetchall()
        ]
        for schema in schemas:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        tables = [t for s, t in _data_tables(conn) if s == STATE_SCHEMA]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{STATE_SCHEMA}"."{t}"' for t in tables))


# ============================================================================================ copying rows


def _sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY name"
        )
    ]


def _sqlite_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


def _copy_rows(
    source: sqlite3.Connection,
    source_table: str,
    columns: Sequence[str],
    order: str,
    target: Any,
    schema: str,
    target_table: str,
    target_columns: Sequence[str],
    progress: ProgressLine,
) -> TableCopy:
    """COPY every row of ``source_table`` into ``schema.target_table`` (text format: PostgreSQL parses each value
    as its column's type, as SQLite's loose typing needs), in one transaction."""
    from bot.matrix.store_copy import TableCopy

    name = f"{schema}.{target_table}"
    total = source.execute(f'SELECT count(*) FROM "{source_table}"').fetchone()[0]
    copy = TableCopy(name, total)
    progress(name, 0, total)
    select = ", ".join(f'"{c}"' for c in columns)
    into = ", ".join(f'"{c}"' for c in target_columns)
    cursor = source.execute(f'SELECT {select} FROM "{source_table}" ORDER BY {order}')
    try:
        with target.transaction(), target.cursor().copy(
            f'COPY "{schema}"."{target_table}" ({into}) FROM STDIN'
        ) as out:
            _write_rows(out, cursor, copy, progress)
    except (sqlite3.Error, StorageError):
        raise
    except Exception as exc:  # psycopg's errors: a value SQLite accepted that the column's type refuses
        reason = " ".join(str(exc).split())
        raise StorageError(f"copying table {source_table} to {name} failed ({type(exc).__name__}: {reason})") from exc
    progress(name, copy.copied, total)
    return copy


def _write_rows(out: Any, rows: Any, copy: TableCopy, progress: ProgressLine) -> None:
    for row in rows:
        out.write_row(row)
        copy.copied += 1
        if copy.copied % 1000 == 0:
            progress(copy.table, copy.copied, copy.source)


def _reset_sequences(conn: Any, schema: str) -> None:
    """Set every serial or identity column's sequence in ``schema`` past the largest value copied."""
    rows = conn.execute(
        "SELECT c.relname, a.attname, pg_get_serial_sequence(format('%%I.%%I', n.nspname, c.relname), a.attname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
        (schema,),
    ).fetchall()
    for table, column, sequence in rows:
        if sequence is None:
            continue
        conn.execute(
            f'SELECT setval(%s, COALESCE(MAX("{column}"), 1), MAX("{column}") IS NOT NULL) FROM "{schema}"."{table}"',
            (sequence,),
        )


def _target_columns(conn: Any, schema: str) -> dict[str, list[str]]:
    """Table -> columns of ``schema`` in the target."""
    tables: dict[str, list[str]] = {}
    for table, column in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s "
        "ORDER BY table_name, ordinal_position",
        (schema,),
    ).fetchall():
        tables.setdefault(table, []).append(column)
    return tables


def _parents(conn: Any, schema: str) -> dict[str, set[str]]:
    """Table -> the tables of ``schema`` its foreign keys point at (itself left out)."""
    parents: dict[str, set[str]] = {}
    for child, parent in conn.execute(
        "SELECT child.relname, parent.relname FROM pg_constraint k "
        "JOIN pg_class child ON child.oid = k.conrelid JOIN pg_class parent ON parent.oid = k.confrelid "
        "JOIN pg_namespace n ON n.oid = child.relnamespace WHERE k.contype = 'f' AND n.nspname = %s",
        (schema,),
    ).fetchall():
        if child != parent:
            parents.setdefault(child, set()).add(parent)
    return parents


def _parents_first(tables: list[str], parents: dict[str, set[str]]) -> list[str]:
    """``tables`` ordered so that a table comes after the tables its foreign keys point at (a cycle keeps the
    remaining tables in their order: its rows can only be copied if they happen to fit)."""
    ordered: list[str] = []
    left = list(tables)
    while left:
        ready = [t for t in left if not (parents.get(t, set()) & set(left)) - {t}]
        for table in ready or left:
            ordered.append(table)
            left.remove(table)
    return ordered


def _match(name: str, names: Sequence[str]) -> str | None:
    """``name`` among ``names``: exactly, or as PostgreSQL folds an unquoted name (lower case)."""
    if name in names:
        return name
    return name.lower() if name.lower() in names else None


_Plan = list[tuple[str, str, list[str], list[str]]]


def _plan_plugin(name: str, path: Path, schema_tables: dict[str, list[str]], parents: dict[str, set[str]]) -> _Plan:
    """(source table, target table, source columns, target columns) for each table of plugin ``name``'s SQLite
    database, parents before children; MigrateError if the plugin's migrations made no such table or column on
    PostgreSQL."""
    plan: _Plan = []
    with closing(_read_only(path)) as conn:
        for table in _sqlite_tables(conn):
            target = _match(table, list(schema_tables))
            if target is None:
                raise MigrateError(
                    f"plugin {name}: table {table} of {path} has no counterpart in schema {plugin_schema(name)} "
                    "after the plugin's migrations (was it made outside them?); it would not be copied"
                )
            columns = _sqlite_columns(conn, table)
            mapped = [_match(column, schema_tables[target]) for column in columns]
            missing = [c for c, m in zip(columns, mapped, strict=True) if m is None]
            if missing:
                raise MigrateError(
                    f"plugin {name}: columns {', '.join(missing)} of table {table} in {path} have no counterpart "
                    f"in {plugin_schema(name)}.{target}; they would not be copied"
                )
            plan.append((table, target, columns, [m for m in mapped if m is not None]))
    order = _parents_first([target for _, target, _, _ in plan], parents)
    return sorted(plan, key=lambda step: order.index(step[1]))


# ============================================================================================ the migration


async def _run_plugin_migrations(storage: Any, migrations: dict[str, Sequence[Migration]]) -> None:
    """Open each plugin's storage on PostgreSQL as the bot does (migrations run, tables fenced), then close it."""
    for name, steps in migrations.items():
        opened = await storage.open_plugin_storage(name, steps)
        await opened.close()


def migrate(
    config: Config,
    data_dir: Path,
    url: str,
    *,
    force: bool = False,
    skip_plugins: Sequence[str] = (),
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> list[TableCopy]:
    """Copy the SQLite deployment in ``data_dir`` into the PostgreSQL database at ``url`` and verify it (see the
    module's docstring); prints progress on ``err`` and the summary on ``out``. Returns the tables copied, verified.

    Raises:
        MigrateError: refused (``code`` 2: arguments, config, non-empty target) or failed (``code`` 1).
    """
    from bot.storage.postgres import PostgresStorage

    out = out or sys.stdout
    err = err or sys.stderr
    started = time.monotonic()
    source = _inspect_source(config, data_dir, skip_plugins)
    where = redact_url(url)
    storage = PostgresStorage(
        url,
        pickle_key=config.pickle_key,
        lease_ttl=config.database_lease_ttl,
        lease_poll=min(1.0, config.database_lease_ttl / 3),
    )
    try:
        storage.prepare()
    except SessionError as exc:
        raise MigrateError(str(exc)) from None
    try:
        if not storage.lease.try_acquire():
            raise MigrateError(
                f"another process holds the lease of {where} (a bot is running on it): stop it first"
            )
    except StorageError as exc:
        raise MigrateError(f"cannot take the lease of {where}: {exc}") from None
    lost: list[Exception] = []
    try:
        storage.keep_lease(lost.append)
        settings = dict(storage.connection_settings)
        contents = _target_contents(url)
        if contents and not force:
            listed = ", ".join(f"{table} ({rows})" for table, rows in list(contents.items())[:8])
            more = f" and {len(contents) - 8} more tables" if len(contents) > 8 else ""
            raise MigrateError(
                f"{where} is not empty: {listed}{more}. Migrating into it would mix two bots' data; use an empty "
                "database, or --force to drop its crypto and plugin schemas and empty schema ratchet first",
                EXIT_CONFIG,
            )
        err.write(f"migrating {data_dir} ({source.credentials.user_id}, device {source.credentials.device_id}) "
                  f"to {where}\n")
        if contents:
            err.write(f"--force: emptying {where} ({sum(contents.values()):,} rows in {len(contents)} tables)\n")
        try:
            copies = _copy_everything(storage, url, settings, source, contents, err)
        except MigrateError as exc:
            raise MigrateError(f"{exc}; {_LEFT_AS_IS}", exc.code) from None
        except (StorageError, SessionError) as exc:
            raise MigrateError(f"{exc}; {_LEFT_AS_IS}") from None
        except Exception as exc:  # psycopg's and sqlite3's errors
            if lost:
                raise MigrateError(f"lost the lease of {where} during the copy ({lost[0]}); {_LEFT_AS_IS}") from None
            raise MigrateError(f"{type(exc).__name__}: {str(exc).strip()}; {_LEFT_AS_IS}") from None
        _summary(out, data_dir, where, source, copies, time.monotonic() - started)
        bad = [c for c in copies if not c.verified]
        if bad:
            listed = ", ".join(f"{c.table} (source {c.source}, target {c.target})" for c in bad)
            raise MigrateError(f"verification failed: {listed}")
        return copies
    finally:
        storage.release()


def _copy_everything(
    storage: Any, url: str, settings: dict[str, str], source: _Source, contents: dict[str, int], err: TextIO
) -> list[TableCopy]:
    """The copy itself, in an order that keeps a half-copied target unusable: the login last."""
    from bot.matrix.store_copy import copy_crypto_store

    if contents:
        _empty_target(url, settings)
    progress = ProgressLine(err)
    try:
        # 1. the plugins' schemas, as the bot makes them: a table without a counterpart fails before any copy
        asyncio.run(_run_plugin_migrations(storage, source.migrations))
        plans: dict[str, _Plan] = {}
        with connect(url, application_name="ratchet db migrate") as conn:
            for name, path in source.plugins.items():
                schema = plugin_schema(name)
                plans[name] = _plan_plugin(name, path, _target_columns(conn, schema), _parents(conn, schema))

        # 2. nio's crypto store
        copies = copy_crypto_store(source.crypto_file, url, settings, progress=progress)
        storage.fence()  # the new crypto tables get the lease's write fence, as the runtime gives them

        with connect(url, settings=settings, application_name="ratchet db migrate") as target:
            # 3. the runtime state and the key-backup tracker
            state_db = source.data_dir / "state.db"
            tracker_db = source.data_dir / BACKUP_TRACKER_FILE
            if state_db.exists():  # folds in the handled records a crash left in its journal
                StateStore.open(state_db).close()
            for path, tables in ((state_db, _STATE_TABLES), (tracker_db, (_TRACKER_TABLE,))):
                copies += _copy_state(path, tables, target, progress)

            # 4. the plugins' rows
            for name, plan in plans.items():
                schema = plugin_schema(name)
                # rows the migrations inserted are in the source too: children first, then copy parents first
                with target.transaction():
                    for _table, target_table, _columns, _into in reversed(plan):
                        target.execute(f'DELETE FROM "{schema}"."{target_table}"')
                with closing(_read_only(source.plugins[name])) as conn:
                    for table, target_table, columns, target_columns in plan:
                        order = "rowid" if _has_rowid(conn, table) else ", ".join(f'"{c}"' for c in columns)
                        copies.append(
                            _copy_rows(conn, table, columns, order, target, schema, target_table, target_columns,
                                       progress)
                        )
                _reset_sequences(target, schema)
    finally:
        progress.finish()

    # 5. secrets, then the login: from here on the target is a complete bot
    if source.secrets is not None:
        storage.private_file(SECRETS_FILE).write_text(source.secrets)
    storage.save_credentials(source.credentials)

    _verify(url, storage, source, copies)
    return copies


def _has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    try:
        conn.execute(f'SELECT rowid FROM "{table}" LIMIT 1')
    except sqlite3.OperationalError:  # WITHOUT ROWID
        return False
    return True


def _copy_state(
    path: Path, tables: Sequence[tuple[str, tuple[str, ...], str]], target: Any, progress: ProgressLine
) -> list[TableCopy]:
    """Copy the runtime state's tables from ``path`` (absent file or table: nothing to copy, 0 rows)."""
    from bot.matrix.store_copy import TableCopy

    copies = []
    conn = _read_only(path) if path.exists() else None
    try:
        present = set(_sqlite_tables(conn)) if conn is not None else set()
        for table, columns, order in tables:
            if conn is None or table not in present:
                copies.append(TableCopy(f"{STATE_SCHEMA}.{table}", 0))
                continue
            copies.append(_copy_rows(conn, table, columns, order, target, STATE_SCHEMA, table, columns, progress))
    finally:
        if conn is not None:
            conn.close()
    return copies


def _verify(url: str, storage: Any, source: _Source, copies: list[TableCopy]) -> None:
    """Count every table in the target; read the login and the secrets back."""
    from bot.matrix.store_copy import count_crypto_tables

    crypto = count_crypto_tables(url)
    with connect(url, application_name="ratchet db migrate") as conn:
        for copy in copies:
            if copy.table in crypto:
                copy.target = crypto[copy.table]
                continue
            schema, table = copy.table.split(".", 1)
            copy.target = conn.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]
    login = storage.load_credentials()
    if login != source.credentials:
        raise MigrateError("verification failed: the login read back from the target differs from credentials.json")
    if source.secrets is not None and storage.private_file(SECRETS_FILE).read_text() != source.secrets:
        raise MigrateError("verification failed: secrets.json read back from the target differs")


def _summary(
    out: TextIO, data_dir: Path, where: str, source: _Source, copies: list[TableCopy], elapsed: float
) -> None:
    """The final report: rows per table, source and target, and whether they match."""
    width = max(len(c.table) for c in copies)
    out.write(f"{'table':<{width}}  {'source':>10}  {'target':>10}\n")
    for copy in copies:
        mark = "ok" if copy.verified else "MISMATCH"
        target = f"{copy.target:,}" if copy.target is not None else "-"
        out.write(f"{copy.table:<{width}}  {copy.source:>10,}  {target:>10}  {mark}\n")
    creds = source.credentials
    files = [f"{CREDENTIALS_FILE} ({creds.user_id}, device {creds.device_id})"]
    if source.secrets is not None:
        files.append(SECRETS_FILE)
    out.write(f"files: {', '.join(files)}: read back, identical\n")
    if source.other_crypto:
        out.write(f"not copied: {', '.join(source.other_crypto)} in {data_dir / 'crypto'} (not the stored login's "
                  "device)\n")
    if source.skipped:
        out.write(f"not copied (--skip-plugin): {', '.join(source.skipped)}\n")
    empty = [name for name in source.migrations if name not in source.plugins]
    if empty:
        out.write(f"no database in {data_dir / 'plugins'} (schema made, nothing to copy): {', '.join(empty)}\n")
    rows = sum(c.source for c in copies)
    verified = sum(1 for c in copies if c.verified)
    out.write(
        f"{'verified' if verified == len(copies) else 'NOT verified'}: {verified} of {len(copies)} tables, "
        f"{rows:,} rows, from {data_dir} to {where} in {elapsed:.1f} s\n"
    )
    out.flush()
