"""The lazy crypto store behaves like nio's own store on the same engine: same sessions found (or not), same
decryption, key import and export, key requests, restarts on the same store in both directions, same device trust
answers. Every test runs on SQLite (LazySqliteStore against nio's SqliteStore, files) and on PostgreSQL
(bot.matrix.pg_store's lazy store against nio's eager code on the same database, a real server)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import vodozemac
from nio import AsyncClient, AsyncClientConfig, EncryptionError, MegolmEvent, RoomKeyRequest
from nio.crypto import InboundGroupSession, OlmAccount, OlmDevice
from nio.crypto.olm_machine import KeyShareError
from nio.store import SqliteStore

from bot.matrix.store import LazyGroupSessionStore, LazySqliteStore, LazyStoreMixin

USER = "@bot:example.org"
DEVICE = "BOTDEVICE"
KEY = "lazy-store-test-pickle-key"
ROOMS = ["!a:example.org", "!b:example.org", "!c:example.org"]


def _senders(n: int = 4) -> list[tuple[str, str, str, vodozemac.Account]]:
    out = []
    for i in range(n):
        acc = vodozemac.Account()
        out.append((f"@s{i}:example.org", f"DEV{i}", acc.curve25519_key.to_base64(), acc))
    return out


SENDERS = _senders()


@dataclass
class Place:
    """One crypto store: where nio is told it lives and the two classes that open it."""

    path: Path  # nio's store_path (the SQLite file's folder; ignored on PostgreSQL)
    plain: type  # nio's own store on this engine: the reference
    lazy: type  # Ratchet's lazy store on this engine


@dataclass
class Engine:
    """Makes places on one engine and closes every store and client opened on them after the test."""

    name: str
    tmp_path: Path
    request: pytest.FixtureRequest
    opened: list[Any] = field(default_factory=list)

    def place(self, name: str) -> Place:
        path = self.tmp_path / name
        path.mkdir(parents=True, exist_ok=True)
        if self.name == "sqlite":
            return Place(path, SqliteStore, LazySqliteStore)
        from bot.matrix.pg_store import postgres_crypto_store

        url = self.request.getfixturevalue("postgres").create_database(f"t_{uuid.uuid4().hex[:16]}")
        return Place(path, postgres_crypto_store(url, lazy=False), postgres_crypto_store(url))

    def open(self, cls: type, place: Place) -> SqliteStore:
        store = cls(USER, DEVICE, str(place.path), KEY)
        self.opened.append(store)
        return store

    def client(self, cls: type, place: Place) -> AsyncClient:
        client = AsyncClient(
            "http://127.0.0.1:9", USER, device_id=DEVICE, store_path=str(place.path),
            config=AsyncClientConfig(store=cls, encryption_enabled=True, pickle_key=KEY),
        )
        client.restore_login(USER, DEVICE, "token")
        self.opened.append(client)
        return client

    def close(self) -> None:
        for thing in self.opened:
            store = thing.store if isinstance(thing, AsyncClient) else thing
            if store is not None:
                store.database.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    made = Engine(request.param, tmp_path, request)
    try:
        yield made
    finally:
        made.close()


def _fill(*stores: SqliteStore, count: int = 24) -> dict[str, tuple[str, str, vodozemac.GroupSession]]:
    """Save ``count`` inbound sessions (some with forwarding chains) in each of ``stores``; returns session id ->
    (room, sender key, the outbound session that can encrypt for it)."""
    made = {}
    for i in range(count):
        room = ROOMS[i % len(ROOMS)]
        _user, _dev, curve, acc = SENDERS[i % len(SENDERS)]
        outbound = vodozemac.GroupSession()
        chain = [SENDERS[(i + 1) % len(SENDERS)][2]] if i % 5 == 0 else None
        session = InboundGroupSession(
            outbound.session_key.to_base64(), acc.ed25519_key.to_base64(), curve, room, forwarding_chain=chain
        )
        for store in stores:
            store.save_inbound_group_session(session)
        made[session.id] = (room, curve, outbound)
    return made


def _new_store(engine: Engine, cls: type, place: Place, account: OlmAccount | None = None) -> SqliteStore:
    store = engine.open(cls, place)
    if store.load_account() is None:
        store.save_account(account or OlmAccount())
    return store


def _twins(engine: Engine) -> tuple[Place, Place, SqliteStore, SqliteStore]:
    """Two places with the same account (what copying a store folder gave): for plain nio and the lazy store."""
    account = OlmAccount()
    plain, lazy = engine.place("plain"), engine.place("lazy")
    return plain, lazy, _new_store(engine, plain.plain, plain, account), _new_store(engine, lazy.plain, lazy, account)


def _describe(session: InboundGroupSession | None) -> tuple | None:
    if session is None:
        return None
    return (session.id, session.room_id, session.sender_key, session.ed25519, tuple(session.forwarding_chain),
            session.first_known_index)


def _layout(store) -> dict:
    return {room: {sender: sorted(ids) for sender, ids in senders.items() if ids}
            for room, senders in store._entries.items() if any(senders.values())}


def test_lookups_answer_like_nio(engine: Engine) -> None:
    place = engine.place("store")
    made = _fill(_new_store(engine, place.plain, place))
    eager = engine.open(place.plain, place).load_inbound_group_sessions()
    lazy_store = engine.open(place.lazy, place)
    assert isinstance(lazy_store, LazyStoreMixin)
    lazy = lazy_store.load_inbound_group_sessions()
    assert isinstance(lazy, LazyGroupSessionStore)
    assert lazy.in_memory == 0  # nothing read at start-up
    for session_id, (room, sender, outbound) in made.items():
        ours = lazy.get(room, sender, session_id)
        assert _describe(ours) == _describe(eager.get(room, sender, session_id))
        message = outbound.encrypt(b'{"hello": 1}').to_base64()
        assert ours.decrypt(message) == eager.get(room, sender, session_id).decrypt(message)
        # the same session asked for under another room or sender key is not found, as with nio
        assert lazy.get(ROOMS[0] if room != ROOMS[0] else ROOMS[1], sender, session_id) is None
        assert eager.get(ROOMS[0] if room != ROOMS[0] else ROOMS[1], sender, session_id) is None
        assert lazy.get(room, "other-sender-key", session_id) is eager.get(room, "other-sender-key", session_id)
    assert lazy.get(ROOMS[0], SENDERS[0][2], "no-such-session") is None
    assert lazy.in_memory == len(made)
    assert lazy.loaded_from_db == len(made)


def test_room_access_iteration_and_entries_are_complete(engine: Engine) -> None:
    place = engine.place("store")
    _fill(_new_store(engine, place.plain, place))
    eager = engine.open(place.plain, place).load_inbound_group_sessions()
    lazy = engine.open(place.lazy, place).load_inbound_group_sessions()
    room = ROOMS[1]
    assert {s: sorted(ids) for s, ids in lazy[room].items()} == {s: sorted(ids) for s, ids in eager[room].items()}
    assert lazy.in_memory == sum(len(ids) for ids in eager[room].values())  # only that room was read
    assert sorted(map(_describe, lazy)) == sorted(map(_describe, eager))
    assert _layout(lazy) == _layout(eager)


def test_memory_wins_over_the_database_and_add_follows_nio(engine: Engine) -> None:
    place = engine.place("store")
    made = _fill(_new_store(engine, place.plain, place), count=6)
    lazy = engine.open(place.lazy, place).load_inbound_group_sessions()
    eager = engine.open(place.plain, place).load_inbound_group_sessions()
    session_id, (room, sender, _outbound) = next(iter(made.items()))
    loaded = lazy.get(room, sender, session_id)
    assert lazy.add(loaded) is False and eager.add(eager.get(room, sender, session_id)) is False
    # a different object for the same session replaces it, in both
    copy_ours = InboundGroupSession.from_pickle(loaded.pickle(KEY), loaded.ed25519, sender, room, KEY)
    copy_theirs = InboundGroupSession.from_pickle(loaded.pickle(KEY), loaded.ed25519, sender, room, KEY)
    assert lazy.add(copy_ours) is True and eager.add(copy_theirs) is True
    assert lazy.get(room, sender, session_id) is copy_ours
    # key backup's restore pops and re-adds through store[room]; the popped session stays gone until re-added
    lazy[room][sender].pop(session_id)
    eager[room][sender].pop(session_id)
    assert lazy.get(room, sender, session_id) is None and eager.get(room, sender, session_id) is None


def test_a_better_copy_replaces_a_session_without_reading_its_room(engine: Engine) -> None:
    """A room key from an earlier index (key backup, a forward) replaces the stored copy: only that session is read,
    not every session of its room (thousands in a busy room)."""
    from bot.matrix.room_keys import store_session

    place = engine.place("store")
    store = _new_store(engine, place.lazy, place)
    _fill(store)
    _user, _dev, curve, acc = SENDERS[0]
    outbound = vodozemac.GroupSession()
    full = InboundGroupSession(outbound.session_key.to_base64(), acc.ed25519_key.to_base64(), curve, ROOMS[0])
    later = InboundGroupSession.import_session(full.export_session(5), acc.ed25519_key.to_base64(), curve, ROOMS[0])
    store.save_inbound_group_session(later)
    lazy = store.load_inbound_group_sessions()
    olm = SimpleNamespace(inbound_group_store=lazy, save_inbound_group_session=store.save_inbound_group_session)
    assert store_session(olm, ROOMS[0], full) is True
    assert lazy.in_memory == 1, "only the replaced session is read"
    assert lazy.get(ROOMS[0], curve, full.id).first_known_index == 0
    assert store_session(olm, ROOMS[0], later) is False  # a worse copy changes nothing
    reopened = engine.open(place.lazy, place).load_inbound_group_sessions()
    assert reopened.get(ROOMS[0], curve, full.id).first_known_index == 0

def _megolm_event(room: str, sender_idx: int, outbound: vodozemac.GroupSession, body: str) -> MegolmEvent:
    user, dev, curve, _acc = SENDERS[sender_idx]
    payload = json.dumps({"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}, "room_id": room})
    event = MegolmEvent.from_dict({
        "type": "m.room.encrypted", "sender": user, "event_id": f"$e{body}", "origin_server_ts": 1,
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": curve, "device_id": dev,
                    "session_id": outbound.session_id, "ciphertext": outbound.encrypt(payload.encode()).to_base64()},
    })
    event.room_id = room
    return event


def test_decryption_is_the_same(engine: Engine) -> None:
    plain_place, lazy_place, *stores = _twins(engine)
    made = _fill(*stores, count=8)
    plain, lazy = engine.client(plain_place.plain, plain_place), engine.client(lazy_place.lazy, lazy_place)
    assert isinstance(lazy.store, LazyStoreMixin)
    for n, (_sid, (room, sender, outbound)) in enumerate(made.items()):
        idx = next(i for i, s in enumerate(SENDERS) if s[2] == sender)
        event = _megolm_event(room, idx, outbound, f"msg{n}")
        ours, theirs = lazy.decrypt_event(event), plain.decrypt_event(event)
        assert (type(ours), ours.body, ours.source, ours.verified) == (
            type(theirs), theirs.body, theirs.source, theirs.verified
        )
    stranger = _megolm_event(ROOMS[0], 0, vodozemac.GroupSession(), "unknown")
    for client in (plain, lazy):
        with pytest.raises(EncryptionError, match="no session found"):
            client.decrypt_event(stranger)


async def test_key_export_import_and_restarts(engine: Engine) -> None:
    source_place, target_place = engine.place("source"), engine.place("target")
    made = _fill(_new_store(engine, source_place.plain, source_place), count=10)
    source = engine.client(source_place.lazy, source_place)
    export = engine.tmp_path / "keys.txt"
    await source.export_keys(str(export), "passphrase", count=1000)  # iterates the lazy store (all of it)
    target = engine.client(target_place.lazy, target_place)
    await target.import_keys(str(export), "passphrase")
    for session_id, (room, sender, _outbound) in made.items():
        assert target.olm.inbound_group_store.get(room, sender, session_id) is not None
    await target.close()
    # restart: the lazy store and plain nio both read what the lazy store wrote, and the other way round
    for cls in (target_place.lazy, target_place.plain):
        again = engine.client(cls, target_place)
        for session_id, (room, sender, outbound) in made.items():
            found = again.olm.inbound_group_store.get(room, sender, session_id)
            assert found is not None and found.id == session_id
            idx = next(i for i, s in enumerate(SENDERS) if s[2] == sender)
            assert again.decrypt_event(_megolm_event(room, idx, outbound, "after-restart")).body == "after-restart"
        await again.close()


async def test_room_keys_received_at_run_time_survive_restarts(engine: Engine) -> None:
    place = engine.place("store")
    _new_store(engine, place.plain, place)
    client = engine.client(place.lazy, place)
    outbound = vodozemac.GroupSession()
    _user, _dev, curve, acc = SENDERS[2]
    client.olm.create_group_session(curve, acc.ed25519_key.to_base64(), ROOMS[2], outbound.session_id,
                                    outbound.session_key.to_base64())
    assert client.olm.inbound_group_store.get(ROOMS[2], curve, outbound.session_id) is not None
    await client.close()
    for cls in (place.lazy, place.plain):
        again = engine.client(cls, place)
        assert again.decrypt_event(_megolm_event(ROOMS[2], 2, outbound, "late")).body == "late"
        await again.close()


def _key_request(session_id: str, room: str, sender_key: str) -> RoomKeyRequest:
    return RoomKeyRequest.from_dict({
        "type": "m.room_key_request", "sender": USER,
        "content": {"action": "request", "requesting_device_id": "OTHERDEVICE", "request_id": "req1",
                    "body": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room, "sender_key": sender_key,
                             "session_id": session_id}},
    })


def test_key_requests_find_the_same_sessions(engine: Engine) -> None:
    plain_place, lazy_place, *stores = _twins(engine)
    made = _fill(*stores, count=4)
    plain, lazy = engine.client(plain_place.plain, plain_place), engine.client(lazy_place.lazy, lazy_place)
    session_id, (room, sender, _outbound) = next(iter(made.items()))
    for sid in (session_id, "missing-session"):
        messages = []
        for client in (plain, lazy):
            with pytest.raises(KeyShareError) as info:
                client.olm.share_with_ourselves(_key_request(sid, room, sender))
            messages.append(str(info.value))
        assert messages[0] == messages[1]
        assert ("No session found" in messages[0]) == (sid == "missing-session")


def _sender_devices() -> dict[str, dict[str, OlmDevice]]:
    """The senders' devices, as nio's key query saves them (user id -> device id -> device)."""
    return {
        user: {dev: OlmDevice(user, dev, {"ed25519": acc.ed25519_key.to_base64(), "curve25519": curve})}
        for user, dev, curve, acc in SENDERS
    }


def test_device_trust_answers_follow_every_change(engine: Engine) -> None:
    place = engine.place("store")
    lazy = _new_store(engine, place.lazy, place)
    devices = _sender_devices()
    unknown = OlmDevice("@nobody:example.org", "NODEV", {"ed25519": "x", "curve25519": "y"})

    def check() -> None:
        fresh = engine.open(place.plain, place)
        for device in [*(d for devs in devices.values() for d in devs.values()), unknown]:
            for method in ("is_device_verified", "is_device_blacklisted", "is_device_ignored"):
                assert getattr(lazy, method)(device) == getattr(fresh, method)(device), (method, device.id)
        fresh.database.close()

    check()  # no rows yet: all False (and cached as such)
    lazy.save_device_keys(devices)
    check()
    first, second = (devices[SENDERS[0][0]][SENDERS[0][1]], devices[SENDERS[1][0]][SENDERS[1][1]])
    for step in (lambda: lazy.verify_device(first), lambda: lazy.blacklist_device(second), check,
                 lambda: lazy.unverify_device(first), lambda: lazy.ignore_device(first), check,
                 lambda: lazy.unignore_device(first), lambda: lazy.unblacklist_device(second),
                 lambda: lazy.ignore_devices([first, second]), check, lambda: lazy.verify_device(second)):
        step()
        check()


def test_a_key_query_forgets_only_the_trust_answers_of_the_devices_it_saved(engine: Engine) -> None:
    place = engine.place("store")
    lazy = _new_store(engine, place.lazy, place)
    devices = _sender_devices()
    lazy.save_device_keys(devices)
    (first_user, first_dev, *_), (second_user, second_dev, *_) = SENDERS[:2]
    first, second = devices[first_user][first_dev], devices[second_user][second_dev]
    lazy.verify_device(first)
    reads: list[str] = []
    read = lazy._read_trust_state

    def counting(device: OlmDevice) -> Any:
        reads.append(device.id)
        return read(device)

    lazy._read_trust_state = counting
    assert lazy.is_device_verified(first) and not lazy.is_device_verified(second)
    assert reads == [first_dev, second_dev]
    lazy.save_device_keys({})  # nio saves what a key query changed: mostly nothing
    lazy.save_device_keys({second_user: {second_dev: second}})
    assert lazy.is_device_verified(first) and not lazy.is_device_verified(second)
    assert reads == [first_dev, second_dev, second_dev], "only the saved device is read again"
    lazy.save_device_keys({first_user: {first_dev: first}})
    fresh = engine.open(place.plain, place)
    assert lazy.is_device_verified(first) == fresh.is_device_verified(first)
    assert reads[-1] == first_dev
    fresh.database.close()


def test_libolm_pickles_are_upgraded_on_first_use(engine: Engine) -> None:
    olm = pytest.importorskip("olm")
    from nio.store.models import MegolmInboundSessions

    place = engine.place("store")
    store = _new_store(engine, place.plain, place)
    outbound = olm.OutboundGroupSession()
    legacy = olm.InboundGroupSession(outbound.session_key)
    _user, _dev, curve, acc = SENDERS[0]
    with store.database.bind_ctx(store.models):
        MegolmInboundSessions.insert(
            sender_key=curve, account=store._get_account().id, fp_key=acc.ed25519_key.to_base64(),
            room_id=ROOMS[0], session=legacy.pickle(KEY), session_id=legacy.id,
        ).execute()
    lazy = engine.open(place.lazy, place).load_inbound_group_sessions()
    found = lazy.get(ROOMS[0], curve, legacy.id)
    assert found is not None and found.id == legacy.id
    # nio now reads a vodozemac pickle for it (the upgrade was written back)
    again = engine.open(place.plain, place).load_inbound_group_sessions().get(ROOMS[0], curve, legacy.id)
    assert again is not None and again.upgrade_pickle is False


def test_encrypted_rooms_are_saved_like_nio(engine: Engine) -> None:
    place = engine.place("store")
    lazy = _new_store(engine, place.lazy, place)
    assert lazy.load_encrypted_rooms() == set()
    lazy.save_encrypted_rooms(set())
    lazy.save_encrypted_rooms({ROOMS[0], ROOMS[1]})
    lazy.save_encrypted_rooms({ROOMS[1]})  # already saved: nothing to write
    lazy.delete_encrypted_room(ROOMS[0])
    lazy.save_encrypted_rooms({ROOMS[0], ROOMS[2]})  # saved again after the delete
    plain = engine.open(place.plain, place)
    assert plain.load_encrypted_rooms() == set(ROOMS) == lazy.load_encrypted_rooms()


def test_peek_many_reads_like_get_without_keeping(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key backup reads a backlog with peek_many: the same sessions get() would give (memory wins), one query per
    few ids, none of them kept in memory."""
    import bot.matrix.store as store_module

    monkeypatch.setattr(store_module, "_ID_BATCH", 4)
    place = engine.place("store")
    made = _fill(_new_store(engine, place.plain, place), count=13)
    eager = engine.open(place.plain, place).load_inbound_group_sessions()
    lazy = engine.open(place.lazy, place).load_inbound_group_sessions()
    keys = [(room, sender, session_id) for session_id, (room, sender, _o) in made.items()]
    in_memory = lazy.get(*keys[3])
    wrong = [(ROOMS[0] if keys[0][0] != ROOMS[0] else ROOMS[1], keys[0][1], keys[0][2]),  # another room
             (keys[1][0], "other-sender-key", keys[1][2]), (ROOMS[0], SENDERS[0][2], "no-such-session")]
    asked = [*keys[:6], *wrong, *keys[6:]]
    got = lazy.peek_many(asked)
    assert [_describe(s) for s in got] == [_describe(eager.get(*key)) for key in keys]  # in order, wrong ones out
    assert got[3] is in_memory
    assert lazy.in_memory == 1 and lazy.loaded_from_db == 1 + 12
    assert lazy.peek_many([]) == []


def test_session_keys_stream_every_row_without_loading(engine: Engine) -> None:
    place = engine.place("store")
    made = _fill(_new_store(engine, place.plain, place), count=11)
    store = engine.open(place.lazy, place)
    lazy = store.load_inbound_group_sessions()
    expected = sorted((room, sender, session_id) for session_id, (room, sender, _o) in made.items())
    assert sorted(store.iter_inbound_group_session_keys(batch=3)) == expected
    assert all(type(part) is str for key in store.iter_inbound_group_session_keys(batch=4) for part in key)
    assert sorted(lazy.session_keys()) == expected and lazy.in_memory == 0


def test_peek_many_reads_this_accounts_sessions_only(engine: Engine) -> None:
    """Another device's store in the same database (PostgreSQL keeps every account in the same tables): its sessions
    are not this account's, for peek_many as for get."""
    place = engine.place("store")
    mine = _fill(_new_store(engine, place.plain, place), count=3)
    other = engine.open(place.plain, place).__class__("@bot:example.org", "OTHERDEVICE", str(place.path), KEY)
    engine.opened.append(other)
    other.save_account(OlmAccount())
    theirs = _fill(other, count=3)
    lazy = engine.open(place.lazy, place).load_inbound_group_sessions()
    keys = [(room, sender, session_id) for session_id, (room, sender, _o) in [*mine.items(), *theirs.items()]]
    assert [s.id for s in lazy.peek_many(keys)] == list(mine)
    assert [lazy.get(*key) is not None for key in keys] == [True] * 3 + [False] * 3
