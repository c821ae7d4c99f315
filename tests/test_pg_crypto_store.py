"""The crypto store on PostgreSQL (bot.matrix.pg_store) on a real server: a bot on a real Synapse decrypts, restarts
as the same device and loads sessions lazily; nio's REPLACE keeps one row per key; pickles at rest are encrypted under
the pickle key; several devices share one schema; every connection carries the session settings (a write fence
refuses stale ones); a dropped connection or a restarted server is an error, then a new connection.

The lazy store's behaviour against nio's own code (lookups, key export/import, key requests, trust answers) is
tests/test_lazy_store.py, which runs on both engines."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import psycopg
import pytest
import vodozemac
from nio import AsyncClientConfig, LoginResponse, RoomMessagesResponse, RoomMessageText, SyncResponse
from nio.crypto import InboundGroupSession, OlmAccount, OlmDevice, OutgoingKeyRequest, TrustState
from nio.crypto.sessions import OutboundSession

from bot.errors import StorageError
from bot.matrix.client import RatchetClient, make_client
from bot.matrix.olm import RatchetOlm
from bot.matrix.pg_store import (
    PostgresCryptoStore,
    postgres_crypto_store,
    replace_target,
)
from bot.matrix.store import LazyGroupSessionStore
from bot.storage.pg_connection import CRYPTO_SCHEMA
from bot.storage.postgres import crypto_store_accounts
from bot.testing.member import Member
from bot.testing.postgres import PostgresCluster

USER = "@bot:example.org"
DEVICE = "BOTDEVICE"
KEY = "pg-crypto-store-test-pickle-key"
ROOM = "!room:example.org"


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Stores (and clients) to close after the test: each holds a connection to the session's server."""
    made: list[Any] = []
    yield made
    for thing in made:
        store = getattr(thing, "store", thing)
        if store is not None:
            store.close()


def _open(opened: list[Any], url: str, *, device: str = DEVICE, key: str = KEY, **kwargs: Any) -> PostgresCryptoStore:
    store = postgres_crypto_store(url, **kwargs)(USER, device, "/nonexistent", key, "ignored.db")
    opened.append(store)
    return store


def _with_account(store: PostgresCryptoStore) -> OlmAccount:
    account = store.load_account()
    if account is None:
        account = OlmAccount()
        store.save_account(account)
    return account


def _megolm(store: PostgresCryptoStore, room: str = ROOM) -> tuple[InboundGroupSession, vodozemac.GroupSession]:
    sender = vodozemac.Account()
    outbound = vodozemac.GroupSession()
    session = InboundGroupSession(
        outbound.session_key.to_base64(), sender.ed25519_key.to_base64(), sender.curve25519_key.to_base64(), room
    )
    store.save_inbound_group_session(session)
    return session, outbound


def _olm_session(account: OlmAccount) -> tuple[OutboundSession, str]:
    other = OlmAccount()
    other.generate_one_time_keys(1)
    one_time_key = next(iter(other.one_time_keys["curve25519"].values()))
    curve = other.identity_keys["curve25519"]
    return OutboundSession(account, curve, one_time_key), curve


def _rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on a connection of the test's own; its rows (none for a statement without)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []


def _dump(url: str) -> bytes:
    """Every value of every table of the crypto schema, as bytes."""
    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (CRYPTO_SCHEMA,)
        ).fetchall()
        for (table,) in tables:
            for row in conn.execute(f'SELECT * FROM "{CRYPTO_SCHEMA}"."{table}"').fetchall():
                for value in row:
                    out.append(bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode())
    return b"\n".join(out)


# -- nio's REPLACE, types, and what lands in the tables --------------------------------------------------------


def test_replace_keeps_one_row_per_key_and_the_last_values(postgres_dsn: str, opened: list[Any]) -> None:
    store = _open(opened, postgres_dsn)
    account = _with_account(store)
    olm, curve = _olm_session(account)
    store.save_session(curve, olm)
    store.save_session(curve, olm)  # OlmSessions.replace, keyed by session_id
    store.save_sync_token("first")
    store.save_sync_token("second")  # SyncTokens.replace, keyed by UNIQUE(account_id)
    device = OlmDevice("@u:example.org", "UDEV", {"ed25519": "ed-one", "curve25519": "curve-one"})
    store.save_device_keys({device.user_id: {device.id: device}})
    device.keys["ed25519"] = "ed-two"
    store.save_device_keys({device.user_id: {device.id: device}})  # Keys.replace, keyed by UNIQUE(device_id,key_type)
    store.verify_device(device)
    store.unverify_device(device)  # DeviceTrustState.replace, keyed by the device (its primary key)
    store.ignore_devices([device])  # DeviceTrustState.replace_many
    chained = InboundGroupSession(
        vodozemac.GroupSession().session_key.to_base64(), "fp", "sender-curve", ROOM, forwarding_chain=["a", "b"]
    )
    store.save_inbound_group_session(chained)
    store.save_inbound_group_session(chained)  # ForwardedChains.replace, keyed by UNIQUE(sender_key,session_id)

    def count(table: str) -> int:
        return _rows(postgres_dsn, f'SELECT count(*) FROM "{CRYPTO_SCHEMA}"."{table}"')[0][0]

    assert (count("olmsessions"), count("synctokens"), count("keys"), count("devicetruststate")) == (1, 1, 2, 1)
    assert (count("megolminboundsessions"), count("forwardedchains")) == (1, 2)
    assert replace_target(type(store).models[0]) == (("user_id", "device_id"), ("account", "shared"))
    fresh = _open(opened, postgres_dsn)
    assert fresh.load_sync_token() == "second"
    loaded = fresh.load_device_keys()[device.user_id][device.id]
    assert loaded.ed25519 == "ed-two" and loaded.trust_state == TrustState.ignored
    assert [s.id for s in fresh.load_sessions()[curve]] == [olm.id]
    again = fresh.load_inbound_group_sessions().get(ROOM, "sender-curve", chained.id)
    assert again is not None and again.forwarding_chain == ["a", "b"]
    types = dict(_rows(
        postgres_dsn,
        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns WHERE table_schema = %s",
        (CRYPTO_SCHEMA,),
    ))
    assert types["accounts.account"] == types["megolminboundsessions.session"] == "bytea"
    assert types["accounts.shared"] == types["devicekeys.deleted"] == "boolean"
    assert types["olmsessions.creation_time"] == "text"  # nio's DateField, in nio's own format
    assert _rows(postgres_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0][0] == 0


def test_outgoing_key_requests_and_one_time_keys_survive_a_reopen(postgres_dsn: str, opened: list[Any]) -> None:
    store_cls = postgres_crypto_store(postgres_dsn)
    client = RatchetClient(
        "http://127.0.0.1:9", USER, device_id=DEVICE, store_path="/nonexistent",
        config=AsyncClientConfig(store=store_cls, encryption_enabled=True, pickle_key=KEY),
    )
    client.restore_login(USER, DEVICE, "token")
    opened.append(client)
    assert isinstance(client.olm, RatchetOlm) and isinstance(client.store, PostgresCryptoStore)
    # RatchetOlm saves one-time keys before they are uploaded: a crash before the upload keeps them
    client.olm.share_keys()
    unpublished = client.olm.account.one_time_keys["curve25519"]
    assert unpublished
    assert _open(opened, postgres_dsn).load_account().one_time_keys["curve25519"] == unpublished
    request = OutgoingKeyRequest("req-1", "session-1", ROOM, "m.megolm.v1.aes-sha2")
    client.store.add_outgoing_key_request(request)
    client.store.add_outgoing_key_request(request)  # INSERT ... ON CONFLICT DO NOTHING
    assert set(_open(opened, postgres_dsn).load_outgoing_key_requests()) == {"req-1"}
    client.store.remove_outgoing_key_request(request)
    assert _open(opened, postgres_dsn).load_outgoing_key_requests() == {}


def test_pickles_at_rest_are_encrypted_under_the_pickle_key(postgres_dsn: str, opened: list[Any]) -> None:
    store = _open(opened, postgres_dsn)
    account = _with_account(store)
    olm, curve = _olm_session(account)
    store.save_session(curve, olm)
    session, outbound = _megolm(store)
    body = "the plaintext body nobody may find at rest"
    message = outbound.encrypt(body.encode()).to_base64()
    assert session.decrypt(message)[0] == body
    secrets = [
        outbound.session_key.to_base64(),  # the room key as it was shared
        session.export_session(session.first_known_index),  # as key export writes it
        body,
    ]
    dump = _dump(postgres_dsn)
    for secret in secrets:
        assert secret.encode() not in dump
        assert base64.b64encode(secret.encode()) not in dump
    for raw in (base64.b64decode(outbound.session_key.to_base64() + "==="),):
        assert raw not in dump
    pickles = [
        bytes(pickle)
        for column, table in (("account", "accounts"), ("session", "olmsessions"), ("session", "megolminboundsessions"))
        for (pickle,) in _rows(postgres_dsn, f'SELECT {column} FROM "{CRYPTO_SCHEMA}".{table}')
    ]
    assert len(pickles) == 3
    for pickle in pickles:  # vodozemac's encrypted pickles: base64 of ciphertext, no serialised structure
        assert b"{" not in pickle and b"curve25519" not in pickle and b"ed25519" not in pickle
    # the right key opens everything; another key opens nothing
    right = _open(opened, postgres_dsn)
    assert right.load_account().identity_keys == account.identity_keys
    assert right.read_inbound_group_session(session.id) is not None
    wrong = _open(opened, postgres_dsn, key="another-pickle-key")
    with pytest.raises(Exception):  # noqa: B017 - vodozemac's pickle error, whatever nio wraps it in
        wrong.load_account()
    with pytest.raises(Exception):  # noqa: B017
        wrong.load_sessions()
    with pytest.raises(Exception):  # noqa: B017
        wrong.read_inbound_group_session(session.id)


# -- several devices in one schema -----------------------------------------------------------------------------


def test_each_device_loads_its_own_account_in_a_shared_schema(postgres_dsn: str, opened: list[Any]) -> None:
    assert (USER, "OLD") not in crypto_store_accounts(postgres_dsn)
    assert crypto_store_accounts(postgres_dsn) == []
    assert _rows(postgres_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (CRYPTO_SCHEMA,))[0][0] == 0
    old = _open(opened, postgres_dsn, device="OLD")
    old_account = _with_account(old)
    shared, outbound = _megolm(old)  # a room key the old device received
    only_old, _ = _megolm(old, "!other:example.org")
    old.save_encrypted_rooms({ROOM})
    member = OlmDevice("@m:example.org", "MDEV", {"ed25519": "m-ed", "curve25519": "m-curve"})
    old.save_device_keys({member.user_id: {member.id: member}})
    old.blacklist_device(member)
    # a deliberate new login: a second device in the same schema
    new = _open(opened, postgres_dsn, device="NEW")
    assert new.load_account() is None  # not the old device's account
    new_account = _with_account(new)
    assert new_account.identity_keys != old_account.identity_keys
    assert crypto_store_accounts(postgres_dsn) == [(USER, "OLD"), (USER, "NEW")]
    assert (USER, "NEW") in crypto_store_accounts(postgres_dsn)
    assert ("@someone:example.org", "NEW") not in crypto_store_accounts(postgres_dsn)
    # the same room key, shared with the new device too (the sender's session did not rotate)
    new.save_inbound_group_session(
        InboundGroupSession(outbound.session_key.to_base64(), shared.ed25519, shared.sender_key, ROOM)
    )
    new.save_device_keys({member.user_id: {member.id: member}})
    # reopened, each device sees its own
    old_again, new_again = _open(opened, postgres_dsn, device="OLD"), _open(opened, postgres_dsn, device="NEW")
    assert old_again.load_account().identity_keys == old_account.identity_keys
    assert new_again.load_account().identity_keys == new_account.identity_keys
    new_sessions = new_again.load_inbound_group_sessions()
    found = new_sessions.get(ROOM, shared.sender_key, shared.id)
    assert found is not None  # nio's INSERT-or-ignore would have left the row with the old device
    assert new_sessions.get("!other:example.org", only_old.sender_key, only_old.id) is None
    assert {k[2] for k in new_again.iter_inbound_group_session_keys()} == {shared.id}
    assert old_again.read_inbound_group_session(only_old.id) is not None
    assert old_again.load_encrypted_rooms() == {ROOM} and new_again.load_encrypted_rooms() == set()
    assert old_again.is_device_blacklisted(member) and not new_again.is_device_blacklisted(member)
    assert new_again.load_device_keys()[member.user_id][member.id].trust_state == TrustState.unset
    # a copy of the session that claims another room does not take over the room's row
    new_again.save_inbound_group_session(
        InboundGroupSession(outbound.session_key.to_base64(), shared.ed25519, shared.sender_key, "!forged:example.org")
    )
    assert _open(opened, postgres_dsn, device="NEW").read_inbound_group_session(shared.id).room_id == ROOM


# -- connections: settings, a write fence, drops and restarts --------------------------------------------------

_FENCE = """
CREATE TABLE IF NOT EXISTS public.test_epoch (epoch bigint NOT NULL);
INSERT INTO public.test_epoch VALUES (1);
CREATE OR REPLACE FUNCTION public.test_fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('ratchet.epoch', true) IS DISTINCT FROM (SELECT epoch::text FROM public.test_epoch) THEN
        RAISE EXCEPTION 'stale epoch %', current_setting('ratchet.epoch', true);
    END IF;
    RETURN NULL;
END $$;
"""


def _fence(url: str) -> int:
    """A statement-level BEFORE trigger on every table of the crypto schema refusing writes whose ratchet.epoch is
    not the current one (the shape of the lease's fence); returns how many tables got it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_FENCE)
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (CRYPTO_SCHEMA,)).fetchall()
        for (table,) in tables:
            conn.execute(
                "CREATE TRIGGER test_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
                f'ON "{CRYPTO_SCHEMA}"."{table}" FOR EACH STATEMENT EXECUTE FUNCTION public.test_fence()'
            )
    return len(tables)


def _write_everything(store: PostgresCryptoStore, account: OlmAccount, tag: str) -> None:
    """One call of each kind of write nio's store makes (plain, REPLACE, INSERT-ignore, atomic batches)."""
    store.save_account(account)
    olm, curve = _olm_session(account)
    store.save_session(curve, olm)
    _megolm(store)
    device = OlmDevice(f"@{tag}:example.org", "DEV", {"ed25519": f"{tag}-ed", "curve25519": f"{tag}-curve"})
    store.save_device_keys({device.user_id: {device.id: device}})
    store.verify_device(device)
    store.ignore_devices([device])
    store.save_encrypted_rooms({f"!{tag}:example.org"})
    request = OutgoingKeyRequest(f"req-{tag}", "s", ROOM, "m.megolm.v1.aes-sha2")
    store.add_outgoing_key_request(request)
    store.remove_outgoing_key_request(request)
    store.save_sync_token(tag)


def test_connections_carry_the_settings_and_a_stale_epoch_cannot_write(postgres_dsn: str, opened: list[Any]) -> None:
    first = _open(opened, postgres_dsn, settings={"ratchet.epoch": "1"})
    account = _with_account(first)
    assert _fence(postgres_dsn) == len(type(first).models)
    assert first.database.execute_sql("SHOW ratchet.epoch").fetchone() == ("1",)
    _write_everything(first, account, "one")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # the fence is real: no epoch, no write
        with pytest.raises(psycopg.errors.RaiseException, match="stale epoch"):
            conn.execute(f'DELETE FROM "{CRYPTO_SCHEMA}".synctokens')
        conn.execute("UPDATE public.test_epoch SET epoch = 2")  # a newer holder took over
    with pytest.raises(Exception, match="stale epoch"):
        first.save_sync_token("zombie")
    with pytest.raises(Exception, match="stale epoch"):
        first.save_device_keys({"@z:example.org": {"Z": OlmDevice("@z:example.org", "Z", {"ed25519": "z"})}})
    assert first.load_sync_token() == "one"  # the connection still reads (the failed transaction rolled back)
    second = _open(opened, postgres_dsn, settings={"ratchet.epoch": "2"})
    assert second.load_account().identity_keys == account.identity_keys
    _write_everything(second, account, "two")
    # the server drops the connection: the next call opens a new one, with the settings, under the fence
    pid = second.database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    _rows(postgres_dsn, "SELECT pg_terminate_backend(%s)", (pid,))
    second.save_sync_token("after the drop")
    assert second.database.execute_sql("SELECT pg_backend_pid()").fetchone()[0] != pid
    assert _open(opened, postgres_dsn).load_sync_token() == "after the drop"


def test_a_connection_lost_inside_a_transaction_is_that_error_and_nothing_is_half_written(
    postgres_dsn: str, opened: list[Any]
) -> None:
    store = _open(opened, postgres_dsn)
    _with_account(store)
    params = store.database.connection().info.get_parameters()
    assert params["keepalives_idle"] == "30" and params["tcp_user_timeout"] == "30000"  # a cut network: an error
    device = OlmDevice("@u:example.org", "UDEV", {"ed25519": "ed", "curve25519": "curve"})
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # the server drops the connection mid-transaction
        conn.execute(
            "CREATE FUNCTION public.test_die() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$"
        )
        conn.execute(
            f'CREATE TRIGGER test_die AFTER INSERT ON "{CRYPTO_SCHEMA}".keys '
            "FOR EACH STATEMENT EXECUTE FUNCTION public.test_die()"
        )
    with pytest.raises(peewee.OperationalError, match="terminating connection"):
        store.save_device_keys({device.user_id: {device.id: device}})  # one transaction: device row, then its keys
    _rows(postgres_dsn, f'DROP TRIGGER test_die ON "{CRYPTO_SCHEMA}".keys')
    assert _rows(postgres_dsn, f'SELECT count(*) FROM "{CRYPTO_SCHEMA}".devicekeys') == [(0,)]  # rolled back
    store.save_device_keys({device.user_id: {device.id: device}})  # a new connection
    assert _open(opened, postgres_dsn).load_device_keys()[device.user_id][device.id].ed25519 == "ed"


def test_a_stopped_server_is_an_error_and_a_restarted_one_is_used_again(tmp_path: Path) -> None:
    if not PostgresCluster.available():
        pytest.skip("PostgreSQL is not installed")
    with PostgresCluster(tmp_path / "pg") as cluster:  # a server of its own, to stop
        url = cluster.create_database("crypto")
        store = postgres_crypto_store(url, {"ratchet.epoch": "7"})(USER, DEVICE, str(tmp_path), KEY)
        account = _with_account(store)
        store.save_sync_token("before")
        cluster.stop()
        started = time.monotonic()
        with pytest.raises(StorageError, match="cannot connect") as failed:
            store.load_sync_token()
        assert f"cannot connect to {url}:" in str(failed.value)  # the URL as configured
        with pytest.raises(StorageError, match="cannot connect"):
            store.save_sync_token("while down")
        assert time.monotonic() - started < 15
        cluster.start()
        store.save_sync_token("after")
        assert store.load_sync_token() == "after"
        assert store.load_account().identity_keys == account.identity_keys
        assert store.database.execute_sql("SHOW ratchet.epoch").fetchone() == ("7",)
        store.close()


# -- a bot on a real Synapse -------------------------------------------------------------------------------------


def _bot(homeserver: str, user_id: str, store_cls: type, tmp_path: Path) -> RatchetClient:
    """The bot's client as the session builds it, with the crypto store on PostgreSQL."""
    return make_client(homeserver, user_id, tmp_path / "unused", KEY, store=store_cls)


async def _sync_until(client: RatchetClient, room: str, bodies: set[str], since: str | None) -> str:
    """Sync until the bot has decrypted every one of ``bodies`` in ``room``; returns the next sync token."""
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while not bodies <= seen:
        assert time.monotonic() < deadline, f"the bot decrypted {seen}, not {bodies}"
        resp = await client.sync(timeout=1000, since=since, full_state=since is None)
        assert isinstance(resp, SyncResponse), resp
        since = resp.next_batch
        joined = resp.rooms.join.get(room)
        if joined is not None:
            seen |= {e.body for e in joined.timeline.events if isinstance(e, RoomMessageText)}
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
    resp = await client.sync(timeout=0, since=since)  # acknowledges the to-device messages, as the runtime does
    assert isinstance(resp, SyncResponse), resp
    return resp.next_batch


@pytest.mark.e2e
async def test_a_bot_on_postgresql_decrypts_restarts_as_the_same_device_and_loads_lazily(
    synapse: Any, new_user: Any, postgres_dsn: str, tmp_path: Path, opened: list[Any]
) -> None:
    bot_user = new_user("pgbot")
    member = await Member.login(synapse.url, new_user("pgmember"), tmp_path / "member")
    store_cls = postgres_crypto_store(postgres_dsn, {"ratchet.epoch": "1"})
    try:
        bot = _bot(synapse.url, bot_user.user_id, store_cls, tmp_path)
        opened.append(bot)
        login = await bot.login(bot_user.password, device_name="ratchet on postgresql")
        assert isinstance(login, LoginResponse), login
        device_id, access_token = bot.device_id, bot.access_token
        ed25519 = bot.olm.account.identity_keys["ed25519"]
        await bot.keys_upload()
        room = await member.create_room(invite=[bot_user.user_id])
        await bot.join(room)
        await member.wait_joined(room, bot_user.user_id)
        await member.send(room, "one")
        await member.send(room, "two")
        committed = await _sync_until(bot, room, {"one", "two"}, None)  # the sync token the runtime would commit
        member_device = bot.olm.device_store[member.user_id][member.device_id]
        bot.verify_device(member_device)
        await bot.close()
        bot.store.close()

        # restart: a new client object on the same store is the same device and reads sessions when needed
        again = _bot(synapse.url, bot_user.user_id, store_cls, tmp_path)
        opened.append(again)
        again.restore_login(bot_user.user_id, device_id, access_token)
        assert (bot_user.user_id, device_id) in crypto_store_accounts(postgres_dsn)
        assert again.olm.account.identity_keys["ed25519"] == ed25519
        sessions = again.olm.inbound_group_store
        assert isinstance(sessions, LazyGroupSessionStore) and sessions.loaded_from_db == 0
        assert room in again.encrypted_rooms
        assert again.olm.device_store[member.user_id][member.device_id].trust_state == TrustState.verified
        history = await again.room_messages(room, start=committed, limit=20)  # old messages: nio decrypts them
        assert isinstance(history, RoomMessagesResponse), history
        assert {e.body for e in history.chunk if isinstance(e, RoomMessageText)} == {"one", "two"}
        assert sessions.loaded_from_db == 1  # the one Megolm session they need, read when first needed
        await member.send(room, "three")
        since = await _sync_until(again, room, {"three"}, committed)
        assert sessions.loaded_from_db == 1
        # a new room key arrives over the Olm session the first run saved
        member.client.invalidate_outbound_session(room)
        await member.send(room, "four")
        await _sync_until(again, room, {"four"}, since)
        assert sessions.in_memory == 2
        rows = _rows(postgres_dsn, f'SELECT count(*) FROM "{CRYPTO_SCHEMA}".megolminboundsessions')
        assert rows[0][0] == 2
        await again.close()
    finally:
        await member.close()
