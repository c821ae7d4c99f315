"""Handled-event records: the SQLite journal (one append per record, one transaction per event-loop turn) and the
per-batch lookup (``prefetch_handled``), issue 20 target 1.

The journal must keep the guarantee a commit per record gave: once ``mark_handled`` returns, a ``kill -9`` of the
process cannot lose the record. The crash test below kills a real process at that point.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.storage.state import HANDLED_JOURNAL, PREFETCH_CHUNK, StateError, StateStore


def rows(path: Path) -> set[tuple[str, str]]:
    """The ``handled`` rows of ``state.db`` as another process sees them (no journal)."""
    db = sqlite3.connect(path)
    try:
        return {(r[0], r[1]) for r in db.execute("SELECT event_id, plugin FROM handled")}
    finally:
        db.close()


def open_store(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateStore:
    if engine == "sqlite":
        return StateStore.open(tmp_path / "state.db")
    return StateStore.open_postgres(request.getfixturevalue("postgres_dsn"))


async def test_records_reach_the_database_in_one_transaction_per_loop_turn(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.db")
    journal = tmp_path / HANDLED_JOURNAL
    try:
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        for n in range(50):
            state.mark_handled(f"$e{n}", "ping")
        # appended to the journal at once, not yet in state.db; is_handled sees them already
        assert len(journal.read_bytes().splitlines()) == 50
        assert rows(tmp_path / "state.db") == set()
        assert state.is_handled("$e7", "ping") and not state.is_handled("$e7", "other")
        await asyncio.sleep(0)  # the end of this loop turn
        assert rows(tmp_path / "state.db") == {(f"$e{n}", "ping") for n in range(50)}
        assert journal.read_bytes() == b"", "emptied once the rows are in state.db"
        assert state.is_handled("$e7", "ping")
    finally:
        state.close()


def test_without_an_event_loop_a_record_is_written_at_once(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.db")
    try:
        state.mark_handled("$a", "ping")
        assert rows(tmp_path / "state.db") == {("$a", "ping")}
    finally:
        state.close()


async def test_the_sync_token_is_saved_after_the_records_before_it(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.db")
    try:
        state.mark_handled("$a", "ping")
        state.save_sync_token("s1", 1)
        assert rows(tmp_path / "state.db") == {("$a", "ping")}
    finally:
        state.close()


CRASH = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from bot.storage.state import StateStore

    async def main():
        state = StateStore.open(Path(sys.argv[1]))
        for n in range(20):
            state.mark_handled(f"$crash{n}", "ledger")
        os.kill(os.getpid(), signal.SIGKILL)  # before the loop turn ends: nothing is in state.db yet

    asyncio.run(main())
    """
)


def test_kill_9_right_after_mark_handled_loses_no_record(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(db)], capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert rows(db) == set(), "killed before the transaction: the records are only in the journal"
    assert len((tmp_path / HANDLED_JOURNAL).read_bytes().splitlines()) == 20
    state = StateStore.open(db)  # folds the journal in before anything reads the table
    try:
        assert all(state.is_handled(f"$crash{n}", "ledger") for n in range(20))
        assert rows(db) == {(f"$crash{n}", "ledger") for n in range(20)}
        assert (tmp_path / HANDLED_JOURNAL).read_bytes() == b""
    finally:
        state.close()


def test_odd_event_ids_and_a_cut_line_in_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    StateStore.open(db).close()
    odd = "$tab\there\nnewline"
    (tmp_path / HANDLED_JOURNAL).write_bytes(
        b"1760000000\tping\t$plain:example.org\n"
        + b'["' + odd.replace("\t", "\\t").replace("\n", "\\n").encode() + b'", "ping", 1760000001]\n'
        + b"garbage without tabs\n"
        + b"17600"  # a line cut short (a power loss): dropped
    )
    state = StateStore.open(db)
    try:
        assert rows(db) == {("$plain:example.org", "ping"), (odd, "ping")}
    finally:
        state.close()


async def test_an_odd_event_id_round_trips_through_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    odd = "$a\tb\nc"
    state = StateStore.open(db)
    state.mark_handled(odd, "ping")
    state._unflushed, state._unflushed_keys = [], set()  # in the journal only, as after a crash
    state.close()
    assert rows(db) == set()
    reopened = StateStore.open(db)
    try:
        assert reopened.is_handled(odd, "ping")
    finally:
        reopened.close()


def test_a_journal_that_cannot_be_written_is_a_state_error(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.db")
    seen: list[StateError] = []
    state.on_write_error = seen.append
    os.close(state._journal_fd)
    state._journal_fd = os.open(os.devnull, os.O_RDONLY)  # writes fail with EBADF
    try:
        with pytest.raises(StateError, match="cannot write"):
            state.mark_handled("$a", "ping")
        assert len(seen) == 1
    finally:
        state.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_prefetch_answers_a_batch_with_one_lookup(engine: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    state = open_store(engine, tmp_path, request)
    try:
        state.mark_handled("$old1", "ping")
        state.mark_handled("$old2", "karma")
        state.flush()
        batch = ["$old1", "$old2", "$new"] + [f"$x{n}" for n in range(PREFETCH_CHUNK + 10)]  # more than one chunk
        state.prefetch_handled(batch)
        queries: list[str] = []
        real = state._db
        if engine == "sqlite":
            real.set_trace_callback(queries.append)
        assert state.is_handled("$old1", "ping") and not state.is_handled("$old1", "karma")
        assert state.is_handled("$old2", "karma") and not state.is_handled("$new", "ping")
        assert not state.is_handled(f"$x{PREFETCH_CHUNK + 5}", "ping")
        if engine == "sqlite":
            assert not [q for q in queries if q.startswith("SELECT")], "answered from the prefetched records"
        # written after the prefetch: seen, on both engines
        state.mark_handled("$new", "ping")
        assert state.is_handled("$new", "ping")
        await asyncio.sleep(0)
        assert state.is_handled("$new", "ping")
        # an id outside the batch is still looked up
        assert state.is_handled("$old2", "karma")
        state.prefetch_handled(["$other"])
        assert state.is_handled("$old1", "ping") and not state.is_handled("$unknown", "ping")
    finally:
        state.close()


def test_prefetch_ignores_events_without_an_id(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.db")
    try:
        state.prefetch_handled(["$a", None, 3])  # type: ignore[list-item]
        assert not state.is_handled("$a", "ping")
    finally:
        state.close()
