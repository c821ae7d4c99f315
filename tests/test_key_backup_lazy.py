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
    path.mkdir(parents=True, exist_ok=True)
    store = LazySqliteStore(USER, DEVICE, str(path), PICKLE_KEY)
    if store.load_account() is None:
        store.save_account(OlmAccount())
    sessions = store.load_inbound_group_sessions()
    assert isinstance(sessions, LazyGroupSessionStore)
    return store, sessions


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
