"""Unit tests of the identity shell (bot/e2ee/identity.py, key_backup.py, recovery.py) without a homeserver.

A small in-memory fake homeserver answers the handful of endpoints involved (keys/query, device_signing/upload with
user-interactive auth, signatures/upload, account data, room_keys), so every branch of the logic runs in milliseconds.
The same flows run against the real Synapse and matrix-js-sdk in tests/test_e2e_recovery.py and
tests/interop/test_js_cross_signing.py.
"""

from __future__ import annotations

import copy
import json
import logging
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from nio.crypto.memorystores import GroupSessionStore
from nio.crypto.sessions import InboundGroupSession, OlmAccount, OutboundGroupSession

from bot.crypto.canonical import canonical_json
from bot.crypto.cross_signing import CrossSigningKeys, CrossSigningSeeds, verify_device_signed
from bot.crypto.megolm_backup import BackupKey
from bot.crypto.recoverykey import decode_recovery_key, encode_recovery_key
from bot.crypto.ssss import BACKUP, MASTER, SELF_SIGNING
from bot.e2ee.identity import (
    RECOVERY_KEY_SECRET,
    SECRETS_FILE,
    Identity,
    LocalSecrets,
    local_secrets_key,
    query_own_keys,
    recovery_banner,
)
from bot.e2ee.key_backup import KeyBackup, KeyBackupError, UploadTracker, backup_entry, import_session
from bot.errors import IdentityError, MatrixRequestError
from bot.log import SecretFilter
from bot.matrix import requests as requests_mod
from bot.matrix.requests import post_with_password_auth, request_json

USER = "@bot:example.org"
PASSWORD = "the-account-password"
PICKLE = "a-pickle-key-of-some-length"


# ----------------------------------------------------------------------------------------------- fakes


class FakeResponse:
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self._raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = headers or {}

    async def read(self) -> bytes:
        return self._raw

    def release(self) -> None:
        pass


class ScriptedClient:
    """Answers requests from a list (status, body) / exceptions; records what was sent."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []
        self.access_token = "tok"

    async def send(self, method, path, data=None, headers=None):
        self.requests.append((method, path, json.loads(data) if data else None, dict(headers or {})))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, FakeResponse):
            return answer
        return FakeResponse(*answer)


class FakeHomeserver:
    """Just enough of the client-server API for the identity code, for one user."""

    def __init__(self) -> None:
        self.account_data: dict[str, dict[str, Any]] = {}
        self.cs: dict[str, dict[str, Any]] = {}  # master / self_signing / user_signing
        self.devices: dict[str, dict[str, Any]] = {}
        self.backups: dict[str, dict[str, Any]] = {}
        self.room_keys: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        url = urllib.parse.urlparse(path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/")[4:]]  # after /_matrix/client/v3
        query = dict(urllib.parse.parse_qsl(url.query))
        self.calls.append((method, "/".join(parts)))
        if parts == ["keys", "query"]:
            return 200, self._query()
        if parts == ["keys", "device_signing", "upload"]:
            return self._device_signing(body)
        if parts == ["keys", "signatures", "upload"]:
            for target, obj in body[USER].items():
                stored = self.devices.get(target) or next(
                    (k for k in self.cs.values() if target in "".join(k["keys"])), None
                )
                if stored is None:
                    return 200, {"failures": {USER: {target: {"errcode": "M_NOT_FOUND"}}}}
                for uid, sigs in obj["signatures"].items():
                    stored.setdefault("signatures", {}).setdefault(uid, {}).update(sigs)
            return 200, {"failures": {}}
        if parts[:1] == ["user"] and parts[2:3] == ["account_data"]:
            kind = parts[3]
            if method == "PUT":
                self.account_data[kind] = body
                return 200, {}
            if kind in self.account_data:
                return 200, self.account_data[kind]
            return 404, {"errcode": "M_NOT_FOUND", "error": "not found"}
        if parts == ["room_keys", "version"]:
            if method == "POST":
                version = str(len(self.backups) + 1)
                self.backups[version] = {**body, "version": version, "count": 0, "etag": "0"}
                self.room_keys[version] = {}
                return 200, {"version": version}
            if not self.backups:
                return 404, {"errcode": "M_NOT_FOUND", "error": "No backup found"}
            return 200, self.backups[max(self.backups, key=int)]
        if parts == ["room_keys", "keys"]:
            version = query.get("version")
            if method == "PUT":
                if version != max(self.backups, key=int):
                    return 403, {"errcode": "M_WRONG_ROOM_KEYS_VERSION", "current_version": max(self.backups)}
                for room_id, room in body["rooms"].items():
                    self.room_keys[version].setdefault(room_id, {"sessions": {}})["sessions"].update(room["sessions"])
                return 200, {"etag": "1", "count": 1}
            return 200, {"rooms": copy.deepcopy(self.room_keys.get(version, {}))}
        return 404, {"errcode": "M_UNRECOGNIZED", "error": f"fake homeserver: {method} {path}"}

    def _query(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device_keys": {USER: copy.deepcopy(self.devices)}, "failures": {}}
        for usage, section in (("master", "master_keys"), ("self_signing", "self_signing_keys"),
                               ("user_signing", "user_signing_keys")):
            if usage in self.cs:
                out[section] = {USER: copy.deepcopy(self.cs[usage])}
        return out

    def _device_signing(self, body: dict[str, Any]) -> tuple[int, Any]:
        if "master" in self.cs:  # replacing keys needs user-interactive auth
            auth = body.get("auth")
            if not auth:
                return 401, {"flows": [{"stages": ["m.login.password"]}], "params": {}, "session": "S1"}
            if auth.get("password") != PASSWORD or auth.get("session") != "S1":
                return 401, {"errcode": "M_FORBIDDEN", "error": "Invalid password", "flows": []}
        self.cs = {
            "master": body["master_key"],
            "self_signing": body["self_signing_key"],
            "user_signing": body["user_signing_key"],
        }
        return 200, {}


class FakeClient:
    """A nio-like client: user, device with a real Olm account, a group session store, and the fake homeserver."""

    def __init__(self, server: FakeHomeserver, device_id: str = "DEVICE1") -> None:
        self.server = server
        self.user_id = USER
        self.device_id = device_id
        self.access_token = "tok"
        account = OlmAccount()
        self.saved: list[InboundGroupSession] = []
        self.olm = SimpleNamespace(
            account=account, inbound_group_store=GroupSessionStore(), save_inbound_group_session=self.saved.append
        )
        self.should_upload_keys = True

    async def keys_upload(self):
        keys = self.olm.account.identity_keys
        device = {
            "user_id": USER,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"ed25519:{self.device_id}": keys["ed25519"], f"curve25519:{self.device_id}": keys["curve25519"]},
        }
        signature = self.olm.account.sign(canonical_json(device).decode())
        device["signatures"] = {USER: {f"ed25519:{self.device_id}": signature}}
        self.server.devices[self.device_id] = device
        self.should_upload_keys = False

    async def send(self, method, path, data=None, headers=None):
        status, body = self.server.handle(method, path, json.loads(data) if data else None)
        return FakeResponse(status, body)


def _identity(client: FakeClient, data_dir: Path, **kwargs: Any) -> Identity:
    kwargs.setdefault("password", PASSWORD)
    return Identity(client, data_dir=data_dir, pickle_key=PICKLE, **kwargs)


def _session(room_id: str = "!room:example.org") -> tuple[OutboundGroupSession, InboundGroupSession]:
    out = OutboundGroupSession()
    account = OlmAccount()
    keys = account.identity_keys
    return out, InboundGroupSession(out.session_key, keys["ed25519"], keys["curve25519"], room_id)


@pytest.fixture
def no_sleep(monkeypatch):
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(requests_mod.asyncio, "sleep", fake_sleep)
    return slept


# ----------------------------------------------------------------------------------------------- local secrets


def test_local_secrets_round_trip_file_mode_and_no_plaintext(tmp_path):
    path = tmp_path / SECRETS_FILE
    secrets = LocalSecrets(path, PICKLE)
    seeds = CrossSigningSeeds.generate()
    for name, value in seeds.to_secrets().items():
        secrets.set(name, value)
    secrets.set(RECOVERY_KEY_SECRET, "EsTc abcd")
    secrets.meta["master_key"] = "PUB"
    secrets.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert seeds.to_secrets()[MASTER] not in text and "EsTc abcd" not in text
    again = LocalSecrets(path, PICKLE)
    assert again.seeds() == seeds and again.recovery_key() == "EsTc abcd" and again.meta["master_key"] == "PUB"
    assert again.backup_key() is None


def test_local_secrets_wrong_pickle_key_and_tampering_are_refused(tmp_path):
    path = tmp_path / SECRETS_FILE
    secrets = LocalSecrets(path, PICKLE)
    secrets.set(MASTER, "AAAA")
    secrets.set(SELF_SIGNING, "BBBB")
    secrets.save()
    with pytest.raises(IdentityError, match="pickle_key"):
        LocalSecrets(path, "another-pickle-key-entirely").get(MASTER)
    data = json.loads(path.read_text())
    data["secrets"][MASTER], data["secrets"][SELF_SIGNING] = data["secrets"][SELF_SIGNING], data["secrets"][MASTER]
    path.write_text(json.dumps(data))
    with pytest.raises(IdentityError):
        LocalSecrets(path, PICKLE).get(MASTER)  # a value moved to another name does not decrypt
    path.write_text('{"format": "something else"}')
    with pytest.raises(IdentityError, match="unreadable secrets file"):
        LocalSecrets(path, PICKLE)


def test_local_secrets_key_is_derived_from_the_pickle_key():
    assert local_secrets_key(PICKLE) == local_secrets_key(PICKLE)
    assert len(local_secrets_key(PICKLE)) == 32
    assert local_secrets_key(PICKLE) != local_secrets_key(PICKLE + "x")


# ----------------------------------------------------------------------------------------------- HTTP


async def test_request_json_sends_token_and_json_and_honours_429(no_sleep):
    client = ScriptedClient([
        (429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 1500}),
        FakeResponse(429, b"", {"Retry-After": "2"}),
        (200, {"ok": True}),
    ])
    assert await request_json(client, "POST", "/_matrix/client/v3/x", {"a": 1}) == {"ok": True}
    assert no_sleep == [1.5, 2.0]
    method, path, body, headers = client.requests[0]
    assert (method, path, body) == ("POST", "/_matrix/client/v3/x", {"a": 1})
    assert headers["Authorization"] == "Bearer tok" and headers["Content-Type"] == "application/json"


async def test_request_json_retries_transport_errors_and_5xx_then_raises(no_sleep):
    client = ScriptedClient([aiohttp.ClientConnectionError("down"), (502, b"bad gateway"), (200, {})])
    assert await request_json(client, "GET", "/p") == {}
    assert len(no_sleep) == 2
    client = ScriptedClient([(404, {"errcode": "M_NOT_FOUND", "error": "nope"})])
    with pytest.raises(MatrixRequestError) as err:
        await request_json(client, "GET", "/p?version=1")
    assert err.value.status == 404 and err.value.errcode == "M_NOT_FOUND" and err.value.path == "/p"
    client = ScriptedClient([TimeoutError()] * 10)
    with pytest.raises(MatrixRequestError) as err:
        await request_json(client, "GET", "/p")
    assert err.value.status == 0


async def test_password_uia_dance(no_sleep):
    challenge = (401, {"flows": [{"stages": ["m.login.password"]}], "session": "xyz", "params": {}})
    client = ScriptedClient([challenge, (200, {"done": 1})])
    result = await post_with_password_auth(client, "/up", {"k": 1}, user_id=USER, password=PASSWORD)
    assert result == {"done": 1}
    assert client.requests[0][2] == {"k": 1}
    assert client.requests[1][2] == {
        "k": 1,
        "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": USER},
                 "password": PASSWORD, "session": "xyz"},
    }
    # A first upload the server accepts without auth sends no password at all.
    client = ScriptedClient([(200, {})])
    await post_with_password_auth(client, "/up", {"k": 1}, user_id=USER, password=PASSWORD)
    assert "auth" not in client.requests[0][2]
    with pytest.raises(IdentityError, match="set `password`"):
        await post_with_password_auth(ScriptedClient([challenge]), "/up", {}, user_id=USER, password=None)
    sso = (401, {"flows": [{"stages": ["m.login.sso"]}], "session": "s"})
    with pytest.raises(IdentityError, match=r"m\.login\.sso"):
        await post_with_password_auth(ScriptedClient([sso]), "/up", {}, user_id=USER, password=PASSWORD)
    wrong = (401, {"errcode": "M_FORBIDDEN", "flows": [{"stages": ["m.login.password"]}]})
    with pytest.raises(IdentityError, match="rejected the password"):
        await post_with_password_auth(ScriptedClient([challenge, wrong]), "/up", {}, user_id=USER, password="x")


# ----------------------------------------------------------------------------------------------- identity


async def test_bootstrap_signs_device_stores_secrets_and_creates_backup(tmp_path, caplog):
    server = FakeHomeserver()
    client = FakeClient(server)
    key_file = tmp_path / "out" / "recovery.key"
    identity = _identity(client, tmp_path, recovery_key_file=key_file)
    with caplog.at_level(logging.INFO, "ratchet"):
        await identity.setup()
    st = identity.status()
    assert st["state"] == "ok" and st["cross_signed"] and st["backup_version"] == "1", st
    assert identity.device_signing_uploads == 1
    # The first upload went without user-interactive auth; the device and the master key are signed.
    own = await query_own_keys(client, USER)
    assert own.device_signed("DEVICE1")
    assert own.master["signatures"][USER]["ed25519:DEVICE1"]
    # Secret storage holds the three seeds and the backup key, under the recovery key written to the file.
    recovery_key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert recovery_key not in caplog.text and "NEW RECOVERY KEY" not in caplog.text
    key = decode_recovery_key(recovery_key)
    key_id = server.account_data["m.secret_storage.default_key"]["key"]
    for name in (MASTER, SELF_SIGNING, "m.cross_signing.user_signing", BACKUP):
        assert await identity.ssss.read(name, key_id, key), name
    backup_secret = await identity.ssss.read(BACKUP, key_id, key)
    assert BackupKey.from_secret(backup_secret).matches(server.backups["1"])
    # The backup's auth_data is signed by the device and the master key.
    signers = set(server.backups["1"]["auth_data"]["signatures"][USER])
    assert signers == {"ed25519:DEVICE1", f"ed25519:{st['master_key']}"}


async def test_restart_reuses_keys_and_uploads_nothing(tmp_path):
    server = FakeHomeserver()
    first = _identity(FakeClient(server), tmp_path)
    await first.setup()
    master = first.status()["master_key"]
    server.calls.clear()
    client = FakeClient(server)
    client.olm.account = first.client.olm.account
    client.should_upload_keys = False
    second = _identity(client, tmp_path)
    await second.setup()
    assert second.device_signing_uploads == 0 and second.status()["master_key"] == master
    assert second.status()["cross_signed"] and second.status()["backup_version"] == "1"
    writes = [c for c in server.calls if c[0] in ("POST", "PUT") and c[1] != "keys/query"]
    assert writes == [], writes


async def test_banner_when_no_recovery_key_file_then_masked(tmp_path, caplog):
    identity = _identity(FakeClient(FakeHomeserver()), tmp_path, key_backup=False)
    with caplog.at_level(logging.WARNING, "ratchet"):
        await identity.setup()
    key = identity.secrets.recovery_key()
    banners = [r for r in caplog.records if "NEW RECOVERY KEY" in r.getMessage()]
    assert len(banners) == 1 and banners[0].levelno == logging.WARNING and key in banners[0].getMessage()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "later: %s", (key,), None)
    SecretFilter().filter(record)
    assert key not in record.getMessage()
    assert "ratchet verify" in recovery_banner(USER, key)


async def test_foreign_keys_are_left_alone(tmp_path, caplog):
    server = FakeHomeserver()
    other = _identity(FakeClient(server, "ELEMENT"), tmp_path / "element")
    await other.setup()
    master = other.status()["master_key"]
    before = copy.deepcopy(server.cs)
    bot = _identity(FakeClient(server), tmp_path / "bot")
    with caplog.at_level(logging.WARNING, "ratchet"):
        await bot.setup()
    st = bot.status()
    assert st["state"] == "foreign" and st["cross_signed"] is False and st["master_key"] == master, st
    assert server.cs == before and bot.device_signing_uploads == 0
    assert "ratchet verify -c CONFIG --recovery-key KEY" in caplog.text
    assert "ratchet cross-signing reset" in caplog.text


async def test_reset_needs_the_password_and_replaces_everything(tmp_path):
    server = FakeHomeserver()
    identity = _identity(FakeClient(server), tmp_path, password=None)
    await identity.setup()  # the first upload needs no password
    old_master, old_key = identity.status()["master_key"], identity.secrets.recovery_key()
    with pytest.raises(IdentityError, match="password"):
        await identity.reset()
    assert identity.secrets.recovery_key() == old_key, "a refused reset changes nothing locally"
    identity.password = PASSWORD
    new_key = await identity.reset()
    st = identity.status()
    assert st["master_key"] != old_master and new_key != old_key and identity.secrets.recovery_key() == new_key
    assert st["backup_version"] == "2" and st["cross_signed"]
    assert (await query_own_keys(identity.client, USER)).device_signed("DEVICE1")


async def test_verify_with_recovery_key_on_a_new_device(tmp_path):
    server = FakeHomeserver()
    first = _identity(FakeClient(server, "OLD"), tmp_path / "old")
    await first.setup()
    recovery_key = first.secrets.recovery_key()
    client = FakeClient(server, "NEW")
    await client.keys_upload()
    fresh = _identity(client, tmp_path / "new")
    with pytest.raises(IdentityError, match="does not match"):
        await fresh.verify_with_recovery_key(encode_recovery_key(bytes(32)))
    with pytest.raises(IdentityError, match="not a valid recovery key"):
        await fresh.verify_with_recovery_key("EsTc nonsense")
    result = await fresh.verify_with_recovery_key(recovery_key.replace(" ", ""))
    assert result.device_signed_now and result.master_key == first.status()["master_key"]
    assert result.backup_version == "1" and result.backup_key.matches(server.backups["1"])
    assert fresh.secrets.recovery_key() == recovery_key  # kept in canonical form
    own = await query_own_keys(client, USER)
    assert verify_device_signed(own.devices["NEW"], own.self_signing, USER)


async def test_verify_refuses_seeds_that_are_not_the_published_keys(tmp_path):
    server = FakeHomeserver()
    first = _identity(FakeClient(server), tmp_path / "a")
    await first.setup()
    # Someone replaced the published keys without updating secret storage.
    other = CrossSigningKeys(USER, CrossSigningSeeds.generate())
    server.cs = {"master": other.master_key(), "self_signing": other.self_signing_key(),
                 "user_signing": other.user_signing_key()}
    with pytest.raises(IdentityError, match="not the account's published keys"):
        await _identity(FakeClient(server, "NEW"), tmp_path / "b").verify_with_recovery_key(
            first.secrets.recovery_key()
        )


async def test_setup_failure_is_logged_not_raised_and_retried(tmp_path, monkeypatch):
    server = FakeHomeserver()
    client = FakeClient(server)
    broken = {"on": True}
    real = server.handle

    def handle(method, path, body):
        if broken["on"]:
            return 500, {"errcode": "M_UNKNOWN"}
        return real(method, path, body)

    server.handle = handle
    monkeypatch.setattr(requests_mod, "backoff_delay", lambda n: 0)
    identity = _identity(client, tmp_path)
    await identity.setup()
    assert identity.status()["state"] == "error" and "500" in identity.status()["problem"]
    broken["on"] = False
    identity._retry_at = 0
    await identity.after_sync()
    assert identity.status()["state"] == "ok"


async def test_interrupted_bootstrap_is_finished_at_the_next_start(tmp_path, monkeypatch, caplog):
    server = FakeHomeserver()
    real = server.handle

    def no_account_data(method, path, body):
        if method == "PUT" and "/account_data/" in path:
            return 503, {"errcode": "M_UNKNOWN", "error": "down for a moment"}
        return real(method, path, body)

    server.handle = no_account_data
    monkeypatch.setattr(requests_mod, "backoff_delay", lambda n: 0)
    client = FakeClient(server)
    first = _identity(client, tmp_path, key_backup=False)
    with caplog.at_level(logging.WARNING, "ratchet"):
        await first.setup()
    assert first.status()["state"] == "error" and server.cs, "keys were published, secret storage failed"
    assert first.secrets.meta["ssss_stored"] is False and "NEW RECOVERY KEY" not in caplog.text

    server.handle = real
    restarted = _identity(client, tmp_path, key_backup=False)
    with caplog.at_level(logging.WARNING, "ratchet"):
        await restarted.setup()
    assert restarted.status()["state"] == "ok" and restarted.device_signing_uploads == 0
    assert caplog.text.count("NEW RECOVERY KEY") == 1
    recovery_key = restarted.secrets.recovery_key()
    fresh = _identity(FakeClient(server, "NEW"), tmp_path / "new", key_backup=False)
    await fresh.client.keys_upload()
    assert (await fresh.verify_with_recovery_key(recovery_key)).master_key == restarted.status()["master_key"]


async def test_secrets_file_of_another_account_is_refused(tmp_path):
    secrets = LocalSecrets(tmp_path / SECRETS_FILE, PICKLE)
    secrets.meta["user_id"] = "@other:example.org"
    secrets.save()
    identity = _identity(FakeClient(FakeHomeserver()), tmp_path)
    await identity.setup()
    assert identity.status()["state"] == "error" and "@other:example.org" in identity.status()["problem"]


async def test_backup_made_elsewhere_with_an_unknown_key_is_not_replaced(tmp_path):
    server = FakeHomeserver()
    identity = _identity(FakeClient(server), tmp_path, key_backup=False)
    await identity.setup()
    foreign = BackupKey.generate()
    server.backups["1"] = {**foreign.version_body(), "version": "1"}
    server.room_keys["1"] = {}
    identity.key_backup = True
    await identity._ensure_backup()
    st = identity.status()
    assert st["backup_version"] is None and "does not hold" in st["backup_problem"]
    assert list(server.backups) == ["1"]


# ----------------------------------------------------------------------------------------------- key backup


def test_backup_entry_round_trip_decrypts_messages():
    out, inbound = _session()
    out.shared = True
    ciphertext = out.encrypt("hello")
    key = BackupKey.generate()
    entry = backup_entry(inbound, key)
    assert entry["first_message_index"] == 0 and entry["forwarded_count"] == 0 and entry["is_verified"] is False
    data = key.decrypt_session(entry["session_data"])
    imported = import_session("!room:example.org", inbound.id, data)
    assert imported.decrypt(ciphertext)[0] == "hello"
    assert imported.sender_key == inbound.sender_key and imported.ed25519 == inbound.ed25519
    with pytest.raises(KeyBackupError, match="holds the key of session"):
        import_session("!room:example.org", "another-session-id", data)


async def test_upload_only_new_sessions_and_not_again_after_restart(tmp_path):
    server = FakeHomeserver()
    key = BackupKey.generate()
    server.handle("POST", "/_matrix/client/v3/room_keys/version", key.version_body())
    client = FakeClient(server)
    store = client.olm.inbound_group_store
    for room in ("!a:x", "!a:x", "!b:x"):
        store.add(_session(room)[1])
    backup = KeyBackup(client, key, "1", tmp_path / "kb.db")
    assert await backup.upload_new() == 3 and backup.keys_backed_up == 3
    assert await backup.upload_new() == 0
    server.calls.clear()
    assert await backup.upload_new() == 0 and server.calls == [], "no change, no request"
    restarted = KeyBackup(client, key, "1", tmp_path / "kb.db")
    assert await restarted.upload_new() == 0 and restarted.keys_backed_up == 3
    new = _session("!b:x")[1]
    store.add(new)
    assert await restarted.upload_new() == 1
    assert new.id in server.room_keys["1"]["!b:x"]["sessions"]
    assert stat.S_IMODE((tmp_path / "kb.db").stat().st_mode) == 0o600
    # A newer backup version replaced ours: uploads stop with a reason.
    server.handle("POST", "/_matrix/client/v3/room_keys/version", BackupKey.generate().version_body())
    store.add(_session("!c:x")[1])
    assert await restarted.upload_new() == 0
    assert "no longer the current" in restarted.disabled_reason


async def test_restore_imports_into_the_store_with_progress(tmp_path, caplog):
    server = FakeHomeserver()
    key = BackupKey.generate()
    server.handle("POST", "/_matrix/client/v3/room_keys/version", key.version_body())
    source = FakeClient(server)
    for room in ("!a:x", "!a:x", "!b:x"):
        source.olm.inbound_group_store.add(_session(room)[1])
    await KeyBackup(source, key, "1", tmp_path / "src.db").upload_new()
    # One undecryptable entry (another key) is counted, not fatal.
    bad = backup_entry(_session("!b:x")[1], BackupKey.generate())
    server.room_keys["1"]["!b:x"]["sessions"]["bogus"] = bad

    target = FakeClient(server, "NEW")
    backup = KeyBackup(target, key, "1", tmp_path / "dst.db")
    with caplog.at_level(logging.INFO, "ratchet"):
        result = await backup.restore(progress_every=2)
    assert (result.total, result.imported, result.failed) == (4, 3, 1)
    assert len(target.saved) == 3 and len(list(target.olm.inbound_group_store)) == 3
    # anyone can add entries to a backup (its key is public): restored sessions are not proof of their sender
    own = target.olm.account.identity_keys["curve25519"]
    assert all(s.forwarding_chain and s.forwarding_chain[-1] == own for s in target.olm.inbound_group_store)
    assert "2 of 4 keys processed" in caplog.text
    assert await backup.upload_new() == 0, "restored keys are not uploaded again"
    again = await backup.restore()
    assert again.imported == 0


def test_upload_tracker_is_per_version(tmp_path):
    one = UploadTracker(tmp_path / "t.db", "1")
    one.add_many([("!a", "s1"), ("!a", "s1"), ("!a", "s2")])
    assert len(one) == 2 and ("!a", "s1") in one
    assert len(UploadTracker(tmp_path / "t.db", "1")) == 2
    assert len(UploadTracker(tmp_path / "t.db", "2")) == 0


# ----------------------------------------------------------------------------------------------- CLI


def _ratchet(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60, input=stdin
    )


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(
        'homeserver: http://127.0.0.1:1\nuser_id: "@bot:localhost"\npassword: secret-password\n'
        f"pickle_key: {PICKLE}\ndata_dir: {tmp_path / 'data'}\nplugins: {{}}\n"
    )
    return cfg


@pytest.mark.parametrize("sub", [["recovery-key", "show"], ["verify"], ["cross-signing", "reset"]])
def test_identity_commands_have_help(sub):
    res = _ratchet(*sub, "--help")
    assert res.returncode == 0 and "usage: ratchet" in res.stdout


def test_recovery_key_show(tmp_path):
    cfg = _config(tmp_path)
    res = _ratchet("recovery-key", "show", "-c", str(cfg))
    assert res.returncode == 1 and "no recovery key is stored" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "data").mkdir()
    secrets = LocalSecrets(tmp_path / "data" / SECRETS_FILE, PICKLE)
    key = encode_recovery_key(bytes(range(32)))
    secrets.set(RECOVERY_KEY_SECRET, key)
    secrets.save()
    res = _ratchet("recovery-key", "show", "-c", str(cfg))
    assert res.returncode == 0 and res.stdout.strip() == key


def test_verify_argument_errors(tmp_path):
    cfg = _config(tmp_path)
    res = _ratchet("verify", "-c", str(cfg))
    assert res.returncode == 2 and "--recovery-key" in res.stderr
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    res = _ratchet("verify", "-c", str(cfg), "--recovery-key-file", str(empty))
    assert res.returncode == 2 and "empty" in res.stderr
    res = _ratchet("verify", "-c", str(cfg), "--recovery-key", "-", stdin="EsTc xxxx\n")
    assert res.returncode == 1 and "Traceback" not in res.stderr  # no homeserver there: one line, exit 1
    assert len(res.stderr.strip().splitlines()[-1]) < 300


