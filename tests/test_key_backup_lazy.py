"""Key backup on Ratchet's lazy session store (issue 20): a sync after start-up loads no session that is backed up
already; new room keys are uploaded, and so are stored ones that never were."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import vodozemac
from nio.crypto import InboundGroupSession, OlmAccount

from bot.crypto.megolm_backup import BackupKey
from bot.e2ee import key_backup
from bot.e2ee.key_backup import KeyBackup
from bot.matrix.store import LazyGroupSessionStore, LazySqliteStore

USER = "@bot:example.org"
DEVICE = "BOTDEVICE"
PICKLE_KEY = "key-backup-lazy-test"
ROOMS = ["!a:example.org", "!b:example.org", "!c:example.org"]
SENDER = vodozemac.Account()


def _session(room: str) -> InboundGroupSession:
    return InboundGroupSession(
        vodozemac.GroupSession().session_key.to_base64(),
        SENDER.ed25519_key.to_base64(),
        SENDER.curve25519_key.to_base64(),
        room,
    )


def _open(path: Path) -> tuple[LazySqliteStore, LazyGroupSessionStore]:
    return _open_on(LazySqliteStore, path)


def _client(store: LazySqliteStore, sessions: LazyGroupSessionStore) -> Any:
    return SimpleNamespace(olm=SimpleNamespace(inbound_group_store=sessions))


def _receive(store: LazySqliteStore, sessions: LazyGroupSessionStore, room: str) -> InboundGroupSession:
    """What nio does with a new room key: add it to the store and save it."""
    session = _session(room)
    assert sessions.add(session)
    store.save_inbound_group_session(session)
    return session


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []

    async def fake_request(_client: Any, method: str, path: str, body: Any = None) -> dict:
        assert method == "PUT" and "/room_keys/keys" in path
        for room_id, room in body["rooms"].items():
            sent.extend((room_id, session_id) for session_id in room["sessions"])
        return {"count": len(sent), "etag": "1"}

    monkeypatch.setattr(key_backup, "request_json", fake_request)
    return sent


async def test_sync_after_restart_loads_no_backed_up_session(tmp_path: Path, uploads: list) -> None:
    key = BackupKey.generate()
    store, sessions = _open(tmp_path / "store")
    first = [_receive(store, sessions, ROOMS[i % len(ROOMS)]) for i in range(30)]
    backup = KeyBackup(_client(store, sessions), key, "1", tmp_path / "kb.db")
    assert await backup.upload_new() == 30
    assert sorted(uploads) == sorted((s.room_id, s.id) for s in first)

    # Restart: a fresh lazy store on the same file, the same tracker. Syncs back up nothing and load nothing.
    store, sessions = _open(tmp_path / "store")
    backup = KeyBackup(_client(store, sessions), key, "1", tmp_path / "kb.db")
    uploads.clear()
    for _sync in range(3):
        assert await backup.upload_new() == 0
    assert uploads == []
    assert sessions.loaded_from_db == 0 and sessions.in_memory == 0, "key backup loaded backed-up sessions"

    # A room key arrives: only it is uploaded, still nothing read from the database.
    new = _receive(store, sessions, ROOMS[1])
    assert await backup.upload_new() == 1 and uploads == [(ROOMS[1], new.id)]
    assert await backup.upload_new() == 0
    assert sessions.loaded_from_db == 0 and sessions.in_memory == 1


async def test_stored_sessions_missing_from_the_backup_are_uploaded_after_a_restart(
    tmp_path: Path, uploads: list
) -> None:
    key = BackupKey.generate()
    store, sessions = _open(tmp_path / "store")
    old = [_receive(store, sessions, room) for room in ROOMS]  # received while key backup was off
    store, sessions = _open(tmp_path / "store")
    backup = KeyBackup(_client(store, sessions), key, "1", tmp_path / "kb.db")
    assert await backup.upload_new() == 3
    assert sorted(uploads) == sorted((s.room_id, s.id) for s in old)
    assert sessions.loaded_from_db == 3  # just those
    assert await backup.upload_new() == 0


def test_session_keys_are_read_in_batches_without_loading(tmp_path: Path) -> None:
    store, sessions = _open(tmp_path / "store")
    made = [_receive(store, sessions, ROOMS[i % len(ROOMS)]) for i in range(17)]
    store, sessions = _open(tmp_path / "store")
    expected = [(s.room_id, s.sender_key, s.id) for s in made]
    assert list(store.iter_inbound_group_session_keys(batch=5)) == expected  # 4 batches, the last one short
    assert sorted(sessions.session_keys()) == sorted(expected)
    assert sessions.in_memory == 0


# -- the tracker in the database, backlogs uploaded a batch at a time (issue 20, target 5: 500,000 sessions) --------


@pytest.fixture(params=["sqlite", "postgresql"])
def places(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """(crypto store class, store path, tracker place) on one engine: files, or a PostgreSQL database for both."""
    if request.param == "sqlite":
        return LazySqliteStore, tmp_path / "store", tmp_path / "kb.db"
    from bot.matrix.pg_store import postgres_crypto_store
    from bot.storage.pg_connection import STATE_SCHEMA, SqlConnection, connect

    url = request.getfixturevalue("postgres_dsn")
    return postgres_crypto_store(url), tmp_path / "store", lambda: SqlConnection(connect(url, schema=STATE_SCHEMA))


def _open_on(cls: type, path: Path) -> tuple[Any, LazyGroupSessionStore]:
    path.mkdir(parents=True, exist_ok=True)
    store = cls(USER, DEVICE, str(path), PICKLE_KEY)
    if store.load_account() is None:
        store.save_account(OlmAccount())
    sessions = store.load_inbound_group_sessions()
    assert isinstance(sessions, LazyGroupSessionStore)
    return store, sessions


def test_tracker_answers_from_the_database(places: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_backup, "PROBE_BATCH", 3)  # several queries per question
    _cls, _path, place = places
    tracker = key_backup.UploadTracker(place, "1")
    keys = [(ROOMS[i % 3], f"s{i}") for i in range(10)]
    tracker.add_many(keys[:6] + keys[:2])  # duplicates are recorded once
    assert len(tracker) == 6
    asked = [*keys[4:], keys[5], ("!other:x", "s0"), (ROOMS[0], "s-none")]
    assert tracker.missing(asked) == [*keys[6:], ("!other:x", "s0"), (ROOMS[0], "s-none")]  # in order, each once
    assert keys[0] in tracker and ("!other:x", "s0") not in tracker
    assert key_backup.UploadTracker(place, "2").missing(keys[:2]) == keys[:2]  # per version
    tracker.add_many(keys)
    assert len(tracker) == 10 and tracker.missing(keys) == []
    fresh = key_backup.UploadTracker(place, "1")
    assert len(fresh) == 10 and len(key_backup.UploadTracker(place, "2")) == 0
    assert not hasattr(fresh, "_loaded"), "the tracker keeps no copy of its table in memory"


async def test_a_backlog_is_uploaded_a_batch_at_a_time_exactly_once(
    places: Any, uploads: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.matrix import store as store_module

    monkeypatch.setattr(key_backup, "UPLOAD_BATCH", 5)
    monkeypatch.setattr(key_backup, "SCAN_SLICE", 7)
    monkeypatch.setattr(key_backup, "PROBE_BATCH", 3)
    monkeypatch.setattr(store_module, "_ID_BATCH", 2)
    cls, path, place = places
    key = BackupKey.generate()
    store, sessions = _open_on(cls, path)
    old = [_receive(store, sessions, ROOMS[i % len(ROOMS)]) for i in range(40)]  # received while key backup was off
    store, sessions = _open_on(cls, path)  # restart: nothing in memory
    backed = key_backup.UploadTracker(place, "1")
    backed.add_many([(s.room_id, s.id) for s in old[:9]])  # some were backed up
    again = sessions.get(old[20].room_id, old[20].sender_key, old[20].id)  # in memory and in the database
    newer = _receive(store, sessions, ROOMS[2])  # arrived after the restart: in memory and in the database too
    requests: list[int] = []
    in_memory: list[int] = []

    async def counting(client: Any, method: str, path_: str, body: Any = None) -> dict:
        requests.append(sum(len(room["sessions"]) for room in body["rooms"].values()))
        in_memory.append(sessions.in_memory)
        return await fake(client, method, path_, body)

    fake = key_backup.request_json
    monkeypatch.setattr(key_backup, "request_json", counting)
    backup = KeyBackup(_client(store, sessions), key, "1", place)
    assert await backup.upload_new() == 32
    assert sorted(uploads) == sorted({(s.room_id, s.id) for s in [*old[9:], newer]}), "each missing one, once"
    assert max(requests) <= 5 and sum(requests) == 32
    assert set(in_memory) == {2}, "the backlog was read without being kept in memory"
    assert sessions.loaded_from_db == 1 + 30  # the one get() above, then the backlog but not again/newer
    assert len(backup.tracker) == 41 and backup.tracker.missing((s.room_id, s.id) for s in old) == []
    assert again is sessions.get(again.room_id, again.sender_key, again.id)
    uploads.clear()
    assert await backup.upload_new() == 0 and uploads == []


def _fail_requests(monkeypatch: pytest.MonkeyPatch, fails: Any, status: int, body: dict) -> list[int]:
    """Make the n-th request to the homeserver fail with ``status``/``body`` when ``fails(n)``; returns the calls."""
    fake = key_backup.request_json
    calls: list[int] = []

    async def failing(client: Any, method: str, path: str, body_: Any = None) -> dict:
        calls.append(len(calls) + 1)
        if fails(len(calls)):
            raise key_backup.MatrixRequestError(method, path, status, body)
        return await fake(client, method, path, body_)

    monkeypatch.setattr(key_backup, "request_json", failing)
    return calls


async def test_a_failed_batch_leaves_the_rest_for_the_next_sync(
    tmp_path: Path, uploads: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_backup, "UPLOAD_BATCH", 4)
    monkeypatch.setattr(key_backup, "SCAN_SLICE", 5)
    key = BackupKey.generate()
    store, sessions = _open(tmp_path / "store")
    old = [_receive(store, sessions, ROOMS[i % len(ROOMS)]) for i in range(18)]
    store, sessions = _open(tmp_path / "store")
    _fail_requests(monkeypatch, lambda n: n == 3, 502, {"errcode": "M_UNKNOWN", "error": "bad gateway"})
    backup = KeyBackup(_client(store, sessions), key, "1", tmp_path / "kb.db")
    with pytest.raises(key_backup.MatrixRequestError):
        await backup.upload_new()
    assert len(uploads) == 8 and backup._added_mark is None, "the store is not counted as looked at"
    assert await backup.upload_new() == 10  # the next sync: the rest, nothing twice
    assert sorted(uploads) == sorted((s.room_id, s.id) for s in old)
    assert await backup.upload_new() == 0


async def test_a_replaced_version_stops_the_backlog(tmp_path: Path, uploads: list, monkeypatch) -> None:
    monkeypatch.setattr(key_backup, "UPLOAD_BATCH", 3)
    store, sessions = _open(tmp_path / "store")
    for i in range(10):
        _receive(store, sessions, ROOMS[i % len(ROOMS)])
    store, sessions = _open(tmp_path / "store")
    calls = _fail_requests(monkeypatch, lambda n: n > 2, 403, {"errcode": "M_WRONG_ROOM_KEYS_VERSION"})
    backup = KeyBackup(_client(store, sessions), BackupKey.generate(), "1", tmp_path / "kb.db")
    assert await backup.upload_new() == 6 and len(calls) == 3
    assert backup.disabled_reason and await backup.upload_new() == 0 and len(calls) == 3
    assert len(key_backup.UploadTracker(tmp_path / "kb.db", "1")) == 6
