"""Issue 20, target 2 (an event loop that never stalls): the heavy paths moved off the loop give the same results.

* attachments are encrypted a piece at a time (``AttachmentEncryptor``), in a worker thread: byte for byte what nio's
  one-shot ``encrypt_attachment`` gives for the same key and IV, also when an upload is retried;
* a key-backup restore parses the answer key by key (``backup_entries``), decrypts in a worker thread and stores in
  short transactions: the same sessions, counts, order and log lines as the one-pass restore;
* the upload tracker is read in a worker thread and the first scan after start-up lets the loop run: same answers.

No timings are asserted here; the figures are ``python -m bench --only looplag`` (docs/performance.md, "Loop lag").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from nio.crypto import attachments as nio_attachments
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment
from nio.crypto.memorystores import GroupSessionStore
from nio.crypto.sessions import InboundGroupSession, OlmAccount, OutboundGroupSession

from bot.content.media import ATTACHMENT_CHUNK, AttachmentEncryptor, encrypted_file
from bot.crypto.megolm_backup import BackupKey
from bot.e2ee import key_backup
from bot.e2ee.key_backup import KeyBackup, UploadTracker, backup_entries, backup_entry
from bot.errors import MatrixError
from bot.matrix import actions as actions_mod
from bot.matrix.actions import MatrixActions, _encrypted_stream

# -- attachments ---------------------------------------------------------------------------------------------------


def _nio_one_shot(data: bytes, key: bytes, iv: bytes) -> tuple[bytes, dict[str, Any]]:
    with mock.patch.object(nio_attachments.Random, "new") as rnd:
        rnd.return_value.read.side_effect = [key, iv]
        return encrypt_attachment(data)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, ATTACHMENT_CHUNK - 1, ATTACHMENT_CHUNK, 3 * ATTACHMENT_CHUNK + 5])
def test_chunked_encryption_is_byte_identical_to_nio_one_shot(size):
    data = os.urandom(size)
    key, iv = os.urandom(32), os.urandom(8)
    ciphertext, keys = _nio_one_shot(data, key, iv)
    enc = AttachmentEncryptor(key, iv)
    pieces = [enc.update(data[i : i + ATTACHMENT_CHUNK]) for i in range(0, len(data), ATTACHMENT_CHUNK)]
    assert b"".join(pieces) == ciphertext
    assert enc.keys() == keys and enc.size == size
    assert decrypt_attachment(b"".join(pieces), keys["key"]["k"], keys["hashes"]["sha256"], keys["iv"]) == data


def test_uneven_pieces_give_the_same_ciphertext():
    data = os.urandom(100_003)
    key, iv = os.urandom(32), os.urandom(8)
    ciphertext, keys = _nio_one_shot(data, key, iv)
    enc = AttachmentEncryptor(key, iv)
    rng = random.Random(7)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 5000)
        out.append(enc.update(memoryview(data)[i : i + n]))
        i += n
    assert b"".join(out) == ciphertext and enc.keys() == keys


def test_new_encryptors_get_fresh_keys():
    a, b = AttachmentEncryptor(), AttachmentEncryptor()
    assert a.key != b.key and len(a.key) == 32 and len(a.iv) == 8
    with pytest.raises(ValueError):
        AttachmentEncryptor(b"short", b"12345678")


@pytest.mark.parametrize("threaded", [False, True])
async def test_encrypted_stream_of_a_file_and_of_bytes(tmp_path, threaded):
    data = os.urandom(2 * ATTACHMENT_CHUNK + 77)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    key, iv = os.urandom(32), os.urandom(8)
    ciphertext, keys = _nio_one_shot(data, key, iv)
    for source in (path, data):
        enc = AttachmentEncryptor(key, iv)
        got = [piece async for piece in _encrypted_stream(source, enc, threaded=threaded)]
        assert b"".join(got) == ciphertext and enc.keys() == keys
        assert all(len(p) <= ATTACHMENT_CHUNK for p in got)


class _UploadClient:
    """Just what ``MatrixActions._upload`` / ``send_file`` touch; ``upload`` consumes the data provider like nio."""

    def __init__(self, *, attempts: int = 1) -> None:
        self.attempts = attempts
        self.uploaded: list[bytes] = []
        self.rooms = {"!r:x": SimpleNamespace(encrypted=True)}
        self.sent: list[dict[str, Any]] = []

    async def upload(self, data_provider, content_type="application/octet-stream", filename=None, filesize=None):
        from nio import UploadResponse

        for attempt in range(self.attempts):  # a retried upload calls the provider again and starts over
            data = data_provider(0, attempt)
            if isinstance(data, Path):
                body = data.read_bytes()
            elif isinstance(data, bytes):
                body = data
            else:
                body = b"".join([piece async for piece in data])
            assert filesize == len(body)
            self.uploaded.append(body)
        return UploadResponse("mxc://x/abc"), None


@pytest.mark.parametrize("size", [10, 3 * ATTACHMENT_CHUNK + 1])
async def test_upload_retried_gives_the_same_ciphertext_and_keys_that_decrypt(tmp_path, size):
    client = _UploadClient(attempts=2)
    actions = MatrixActions(client)  # type: ignore[arg-type]
    data = os.urandom(size)
    path = tmp_path / "a.bin"
    path.write_bytes(data)
    for source in (data, path):
        client.uploaded.clear()
        url, file = await actions._upload(source, size, "application/pdf", "a.pdf", encrypt=True)
        first, second = client.uploaded
        assert first == second, "a retry re-encrypts with the same key and IV"
        assert url == "mxc://x/abc" and file is not None and file["url"] == url
        assert decrypt_attachment(first, file["key"]["k"], file["hashes"]["sha256"], file["iv"]) == data
        assert set(file) == set(encrypted_file(url, AttachmentEncryptor().keys()))


async def test_unencrypted_upload_of_a_file_streams_the_path(tmp_path):
    client = _UploadClient()
    actions = MatrixActions(client)  # type: ignore[arg-type]
    path = tmp_path / "b.txt"
    path.write_bytes(b"x" * 5000)
    url, file = await actions._upload(path, 5000, "text/plain", "b.txt", encrypt=False)
    assert url == "mxc://x/abc" and file is None and client.uploaded == [b"x" * 5000]


async def test_send_file_streams_a_large_file_into_an_encrypted_room(tmp_path, monkeypatch):
    client = _UploadClient()
    actions = MatrixActions(client)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def send(room_id, content, *args, **kwargs):
        sent.append(content)
        return "$event"

    async def limit():
        return None

    monkeypatch.setattr(actions, "send", send)
    monkeypatch.setattr(actions, "upload_limit", limit)
    monkeypatch.setattr(actions, "room_encrypted", lambda room: True)
    data = os.urandom(actions_mod._THREAD_CRYPTO_BYTES + 12345)
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    assert await actions.send_file("!r:x", path) == "$event"
    (content,) = sent
    assert content["msgtype"] == "m.file" and content["body"] == "report.pdf"
    assert content["info"] == {"mimetype": "application/pdf", "size": len(data)}
    file = content["file"]
    assert decrypt_attachment(client.uploaded[0], file["key"]["k"], file["hashes"]["sha256"], file["iv"]) == data
    with pytest.raises(MatrixError, match="not in that room"):
        await actions.send_file("!other:x", path)


# -- key backup restore ----------------------------------------------------------------------------------------------


class _Response:
    def __init__(self, body: bytes) -> None:
        self.status = 200
        self._raw = body
        self.headers: dict[str, str] = {}

    async def read(self) -> bytes:
        return self._raw

    def release(self) -> None:
        pass


class _BackupClient:
    """A client whose homeserver answers ``GET /room_keys/keys`` with ``body``; nio's in-memory session store."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.access_token = "tok"
        self.saved: list[InboundGroupSession] = []
        self.olm = SimpleNamespace(account=OlmAccount(), inbound_group_store=GroupSessionStore(),
                                   save_inbound_group_session=self.saved.append)

    async def send(self, method, path, data=None, headers=None):
        assert method == "GET" and "/room_keys/keys" in path
        return _Response(self.body)


def _backup(key: BackupKey, rooms: int, per_room: int, *, bad: int = 0) -> tuple[bytes, dict[tuple[str, str], str]]:
    """A backup answer; also each entry's session key (to compare the imported sessions with)."""
    body: dict[str, Any] = {"rooms": {}}
    exported: dict[tuple[str, str], str] = {}
    sender = OlmAccount().identity_keys
    for r in range(rooms):
        room_id = f"!room{r}:x"
        sessions = body["rooms"].setdefault(room_id, {"sessions": {}})["sessions"]
        for _ in range(per_room):
            out = OutboundGroupSession()
            session = InboundGroupSession(out.session_key, sender["ed25519"], sender["curve25519"], room_id)
            sessions[session.id] = backup_entry(session, key)
            exported[(room_id, session.id)] = session.export_session(0)
    other = BackupKey.generate()
    for i in range(bad):  # entries another key encrypted: counted as failed, not fatal
        out = OutboundGroupSession()
        session = InboundGroupSession(out.session_key, sender["ed25519"], sender["curve25519"], "!room0:x")
        body["rooms"]["!room0:x"]["sessions"][f"bogus{i}"] = backup_entry(session, other)
    return json.dumps(body).encode(), exported


async def _one_pass_restore(client: Any, backup: KeyBackup) -> tuple[int, int, int]:
    """The restore as it was (one pass over ``json.loads`` of the answer): the reference."""
    from bot.e2ee.key_backup import BackupError, KeyBackupError, import_session, store_session

    own = client.olm.account.identity_keys["curve25519"]
    rooms = json.loads(client.body)["rooms"]
    imported = failed = total = 0
    for room_id, room in rooms.items():
        for session_id, entry in room["sessions"].items():
            total += 1
            try:
                data = backup.backup_key.decrypt_session(entry["session_data"])
                session = import_session(room_id, session_id, data, via=own)
            except (BackupError, KeyBackupError):
                failed += 1
                continue
            if store_session(client.olm, room_id, session):
                imported += 1
    return total, imported, failed


async def test_restore_imports_the_same_sessions_as_one_pass(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(key_backup, "RESTORE_BATCH", 7)  # many worker batches, many store slices
    monkeypatch.setattr(key_backup, "RESTORE_SLICE_SECONDS", 0.0)
    key = BackupKey.generate()
    body, exported = _backup(key, rooms=6, per_room=9, bad=3)
    new = _BackupClient(body)
    with caplog.at_level(logging.INFO, "ratchet"):
        result = await KeyBackup(new, key, "1", tmp_path / "new.db").restore(progress_every=10)
    ref = _BackupClient(body)
    ref.olm.account = new.olm.account  # the same forwarding chain (the bot's own key) as the restore above
    expected = await _one_pass_restore(ref, KeyBackup(ref, key, "1", tmp_path / "ref.db"))
    assert (result.total, result.imported, result.failed) == expected == (57, 54, 3)
    assert [(s.room_id, s.id) for s in new.saved] == [(s.room_id, s.id) for s in ref.saved], "same order"
    for a, b in zip(new.saved, ref.saved, strict=True):
        assert a.export_session(0) == b.export_session(0) == exported[(a.room_id, a.id)]
        assert a.forwarding_chain == b.forwarding_chain and a.ed25519 == b.ed25519 and a.sender_key == b.sender_key
    assert len(list(new.olm.inbound_group_store)) == 54
    assert [r.getMessage() for r in caplog.records if "keys processed" in r.getMessage()] == [
        f"key backup restore: {n} of 57 keys processed" for n in range(10, 57, 10)
    ]
    assert len(UploadTracker(tmp_path / "new.db", "1")) == 54
    again = await KeyBackup(new, key, "1", tmp_path / "new.db").restore()
    assert (again.total, again.imported) == (57, 0)


async def test_restore_stops_at_a_malformed_entry_keeping_what_was_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(key_backup, "RESTORE_BATCH", 4)
    key = BackupKey.generate()
    body, _ = _backup(key, rooms=2, per_room=5)
    data = json.loads(body)
    room = data["rooms"]["!room1:x"]["sessions"]
    first = next(iter(room))
    room[first] = "not an object"  # the one-pass restore raised AttributeError here too
    client = _BackupClient(json.dumps(data).encode())
    with pytest.raises(AttributeError):
        await KeyBackup(client, key, "1", tmp_path / "t.db").restore()
    assert [s.room_id for s in client.saved] == ["!room0:x"] * 5


async def test_restore_of_an_answer_without_rooms_fails_as_before(tmp_path):
    for body in (b"", b"[]", b'{"rooms": []}', b"{not json", b'{"rooms": {}} trailing'):
        client = _BackupClient(body)
        with pytest.raises(key_backup.KeyBackupError, match="no 'rooms'"):
            await KeyBackup(client, BackupKey.generate(), "1", tmp_path / "t.db").restore()
    empty = await KeyBackup(_BackupClient(b'{"rooms": {}}'), BackupKey.generate(), "1", tmp_path / "t.db").restore()
    assert (empty.total, empty.imported, empty.failed) == (0, 0, 0)


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 6 if depth < 3 else 3)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.randint(-10**12, 10**12)
    if kind in (2, 3):
        return "".join(rng.choice('ab"\\}{],:\u00e9\n ') for _ in range(rng.randint(0, 8)))
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {"k" + str(rng.randint(0, 99)) + '"}': _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


@pytest.mark.parametrize("seed", range(30))
def test_backup_entries_match_json_loads(seed):
    rng = random.Random(seed)
    rooms: dict[str, Any] = {}
    for r in range(rng.randint(0, 5)):
        room: Any = {f"x{i}": _random_json(rng) for i in range(rng.randint(0, 2))}
        if rng.random() < 0.8:
            room["sessions"] = {f"s{i}" + "{": _random_json(rng) for i in range(rng.randint(0, 4))}
        elif rng.random() < 0.5:
            room = _random_json(rng)
        rooms[f"!r{r}:x"] = room
    doc = {"next": _random_json(rng), "rooms": rooms, "z": _random_json(rng)}
    text = json.dumps(doc, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
    expected = [
        (room_id, session_id, entry)
        for room_id, room in json.loads(text)["rooms"].items()
        if isinstance(room, dict) and isinstance(room.get("sessions"), dict)
        for session_id, entry in room["sessions"].items()
    ]
    assert backup_entries(text.encode()) == expected


# -- start-up: the tracker and the first scan ------------------------------------------------------------------------


async def test_tracker_is_read_in_a_thread_and_answers_as_before(tmp_path):
    UploadTracker(tmp_path / "t.db", "1").add_many([("!a", "s1"), ("!a", "s2")])
    lazy = UploadTracker(tmp_path / "t.db", "1")
    await lazy.ready()
    assert len(lazy) == 2 and ("!a", "s1") in lazy and ("!a", "s3") not in lazy
    direct = UploadTracker(tmp_path / "t.db", "1")  # used without ready(): read on first use
    assert ("!a", "s2") in direct and len(direct) == 2
    direct.add_many([("!a", "s3")])
    assert len(UploadTracker(tmp_path / "t.db", "1")) == 3


class _LazyStore:
    """What the first scan uses of ``LazyGroupSessionStore``: ``session_keys``, ``get``, ``added_since``."""

    def __init__(self, sessions: list[InboundGroupSession]) -> None:
        self.sessions = {(s.room_id, s.sender_key, s.id): s for s in sessions}
        self.added_count = 0
        self.gets = 0

    def session_keys(self):
        yield from self.sessions

    def get(self, room_id, sender_key, session_id):
        self.gets += 1
        return self.sessions.get((room_id, sender_key, session_id))

    def added_since(self, mark):
        return []


async def test_first_scan_after_start_up_finds_the_same_sessions(tmp_path, monkeypatch):
    monkeypatch.setattr(key_backup, "SCAN_SLICE", 3)
    sender = OlmAccount().identity_keys
    sessions = [InboundGroupSession(OutboundGroupSession().session_key, sender["ed25519"], sender["curve25519"],
                                    f"!r{i % 4}:x") for i in range(20)]
    UploadTracker(tmp_path / "t.db", "1").add_many([(s.room_id, s.id) for s in sessions[::2]])
    store = _LazyStore(sessions)
    client = SimpleNamespace(olm=SimpleNamespace(inbound_group_store=store))
    backup = KeyBackup(client, BackupKey.generate(), "1", tmp_path / "t.db")
    turns = 0

    async def count_turns():
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    uploaded: list[InboundGroupSession] = []

    async def upload(batch: list[InboundGroupSession]) -> int:  # the request itself is tested elsewhere
        uploaded.extend(batch)
        backup.tracker.add_many([(s.room_id, s.id) for s in batch])
        return len(batch)

    backup._upload_batch = upload  # type: ignore[method-assign]
    counter = asyncio.ensure_future(count_turns())
    assert await backup.upload_new() == 10
    counter.cancel()
    assert sorted(s.id for s in uploaded) == sorted(s.id for s in sessions[1::2])  # exactly those not backed up
    assert turns >= 20 // 3, "the loop ran between slices of the scan"
    assert backup._added_mark == 0


async def test_restore_into_ratchets_sqlite_store_persists_every_session(tmp_path, monkeypatch):
    """The real store (Ratchet's lazy SQLite store): sessions written in short transactions are all in the database,
    readable by a new client, and the database's own ``bind_ctx`` is back afterwards."""
    from bot.matrix.client import make_client

    monkeypatch.setattr(key_backup, "RESTORE_BATCH", 5)
    key = BackupKey.generate()
    body, exported = _backup(key, rooms=3, per_room=6, bad=1)
    (tmp_path / "crypto").mkdir()
    client = make_client("http://127.0.0.1:9", "@bot:x", tmp_path / "crypto", "pickle-key-0123456789", "DEV")
    client.restore_login("@bot:x", "DEV", "tok")

    async def send(method, path, data=None, headers=None):
        return _Response(body)

    monkeypatch.setattr(client, "send", send)
    database = client.store.database
    assert database.execute_sql("PRAGMA journal_mode").fetchone() == ("wal",)
    levels: list[int] = []
    save = client.store.save_inbound_group_session

    def watched(session):  # the level each restored key is written at
        levels.append(database.execute_sql("PRAGMA synchronous").fetchone()[0])
        return save(session)

    monkeypatch.setattr(client.store, "save_inbound_group_session", watched)
    result = await KeyBackup(client, key, "1", tmp_path / "kb.db").restore()
    assert (result.total, result.imported, result.failed) == (19, 18, 1)
    assert "bind_ctx" not in vars(database), "the database's bind_ctx is its class's again"
    assert levels == [1] * 18, "restored keys are committed without an fsync (synchronous=NORMAL)"
    assert database.execute_sql("PRAGMA synchronous").fetchone() == (2,), "and the store is back to FULL"
    await client.close()
    again = make_client("http://127.0.0.1:9", "@bot:x", tmp_path / "crypto", "pickle-key-0123456789", "DEV")
    again.restore_login("@bot:x", "DEV", "tok")
    store = again.olm.inbound_group_store
    for (room_id, session_id), session_key in exported.items():
        found = [s for s in store if s.id == session_id]
        assert len(found) == 1 and found[0].room_id == room_id and found[0].export_session(0) == session_key
    await again.close()
