"""Tests of the real-Synapse test harness (bot.testing.synapse and its pytest fixtures)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import nio
import pytest

from bot.testing.pytest_plugin import NewUser
from bot.testing.synapse import (
    SynapseAPIError,
    SynapseServer,
    SynapseStartError,
    UserAlreadyExistsError,
)


def _quote(user_id: str) -> str:
    return urllib.parse.quote(user_id, safe="")


def _get_versions(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(f"{url}/_matrix/client/versions", timeout=timeout) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


# ---------------------------------------------------------------------- no server needed


def test_config_relaxed_and_tight_limits(tmp_path: Path) -> None:
    relaxed = SynapseServer(tmp_path / "a", port=12345).build_config()
    assert relaxed["rc_message"] == {"per_second": 1000, "burst_count": 1000}
    assert relaxed["rc_login"]["failed_attempts"] == {"per_second": 1000, "burst_count": 1000}
    assert relaxed["rc_room_creation"] == {"per_second": 1000, "burst_count": 1000}
    assert relaxed["listeners"][0]["bind_addresses"] == ["127.0.0.1"]
    assert relaxed["listeners"][0]["port"] == 12345
    assert relaxed["enable_registration"] is False
    assert relaxed["trusted_key_servers"] == []

    tight = SynapseServer(
        tmp_path / "b",
        tight_rate_limits=True,
        extra_config={"rc_login": {"account": {"per_second": 1}}, "max_upload_size": "1M"},
    ).build_config()
    assert tight["rc_message"] == {"per_second": 2, "burst_count": 5}
    # extra_config is deep-merged: siblings and sibling keys survive.
    assert tight["rc_login"]["account"] == {"per_second": 1, "burst_count": 1000}
    assert tight["rc_login"]["address"] == {"per_second": 1000, "burst_count": 1000}
    assert tight["max_upload_size"] == "1M"


# ---------------------------------------------------------------------- session server


@pytest.mark.e2e
def test_versions_endpoint_on_loopback(synapse: SynapseServer) -> None:
    assert synapse.is_running
    assert synapse.url == f"http://127.0.0.1:{synapse.port}"
    versions = _get_versions(synapse.url)
    assert "v1.1" in versions["versions"], versions  # the Matrix spec version the bot and nio speak
    assert synapse.log_path.exists()


@pytest.mark.e2e
async def test_registered_user_logs_in_with_nio(synapse: SynapseServer, new_user: NewUser) -> None:
    user = new_user("login", displayname="Login Test")
    assert user.user_id.startswith("@login-") and user.user_id.endswith(":localhost")
    assert user.homeserver == synapse.url and user.access_token and user.device_id

    client = nio.AsyncClient(synapse.url, user.user_id)
    try:
        resp = await client.login(user.password, device_name="harness-test")
        assert isinstance(resp, nio.LoginResponse), resp
        assert resp.device_id != user.device_id  # a new device
        whoami = await client.whoami()
        assert isinstance(whoami, nio.WhoamiResponse), whoami
        assert whoami.user_id == user.user_id
        profile = await client.get_displayname(user.user_id)
        assert isinstance(profile, nio.ProfileGetDisplayNameResponse), profile
        assert profile.displayname == "Login Test"
    finally:
        await client.close()


@pytest.mark.e2e
def test_admin_api(synapse: SynapseServer, new_user: NewUser) -> None:
    admin = new_user("admin", admin=True)
    plain = new_user()

    # Note: querying one user is v2 (there is no v1 GET /users/{user_id}).
    info = synapse.admin_request(
        "GET", f"/_synapse/admin/v2/users/{_quote(plain.user_id)}", admin.access_token
    )
    assert info["name"] == plain.user_id
    assert info["admin"] is False
    me = synapse.admin_request(
        "GET", f"/_synapse/admin/v1/users/{_quote(admin.user_id)}/admin", admin.access_token
    )
    assert me == {"admin": True}
    reports = synapse.admin_request("GET", "/_synapse/admin/v1/event_reports", admin.access_token)
    assert "event_reports" in reports

    with pytest.raises(SynapseAPIError) as err:
        synapse.admin_request(
            "GET", f"/_synapse/admin/v2/users/{_quote(admin.user_id)}", plain.access_token
        )
    assert err.value.status == 403
    assert err.value.errcode == "M_FORBIDDEN"


@pytest.mark.e2e
def test_register_existing_user_is_refused(synapse: SynapseServer, new_user: NewUser) -> None:
    user = new_user("dup")
    with pytest.raises(UserAlreadyExistsError, match="M_USER_IN_USE"):
        synapse.register_user(user.localpart, "another-password")


# ---------------------------------------------------------------------- own servers


@pytest.mark.e2e
async def test_restart_keeps_users_and_url(own_synapse) -> None:
    own_server = own_synapse()  # a homeserver of the test's own: this test stops and restarts it
    user = own_server.register_user("keeper", "pw-keeper", displayname="Keeper")
    url = own_server.url

    own_server.restart()

    assert own_server.is_running and own_server.url == url
    client = nio.AsyncClient(own_server.url, user.user_id)
    try:
        # The token issued before the restart is still valid, and so is the password.
        client.access_token = user.access_token
        whoami = await client.whoami()
        assert isinstance(whoami, nio.WhoamiResponse), whoami
        assert whoami.user_id == user.user_id
        resp = await client.login(user.password)
        assert isinstance(resp, nio.LoginResponse), resp
    finally:
        await client.close()
    with pytest.raises(UserAlreadyExistsError):
        own_server.register_user("keeper", "pw")

    # A second harness object over the same directory reuses port and secrets.
    own_server.stop()
    assert not own_server.is_running
    again = SynapseServer(own_server.base_dir)
    again.start()
    try:
        assert again.url == url
        again.register_user("newcomer", "pw")  # shared secret still matches
    finally:
        again.stop()


@pytest.mark.e2e
def test_pause_and_resume(own_synapse) -> None:
    own_server = own_synapse()  # this test freezes it
    own_server.pause()
    assert own_server.is_paused and own_server.is_running
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        _get_versions(own_server.url, timeout=0.5)
    own_server.resume()
    assert not own_server.is_paused
    assert _get_versions(own_server.url)["versions"]

    own_server.pause()
    own_server.stop()  # stopping a paused server works too
    assert not own_server.is_running


@pytest.mark.e2e
def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    server = SynapseServer(tmp_path / "bad", extra_config={"database": {"name": "no-such-db"}})
    with pytest.raises(SynapseStartError, match="exited with code"):
        server.start(timeout=30)
    assert not server.is_running


@pytest.mark.e2e
async def test_tight_rate_limits_give_429(own_synapse) -> None:
    server = own_synapse(tight_rate_limits=True)
    user = server.register_user("fast", "pw-fast")
    room = server.admin_request("POST", "/_matrix/client/v3/createRoom", user.access_token, {})
    room_id = _quote(room["room_id"])
    headers = {"Authorization": f"Bearer {user.access_token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for txn in range(30):
            url = f"{server.url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{txn}"
            async with http.put(url, json={"msgtype": "m.text", "body": str(txn)}) as resp:
                body = await resp.json()
                if resp.status == 429:
                    break
                assert resp.status == 200, body
        else:
            pytest.fail("30 fast messages never hit the rate limit")
        assert txn <= 6  # burst_count 5
        assert body["errcode"] == "M_LIMIT_EXCEEDED"
        assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0
        assert "Retry-After" in resp.headers


def test_explicit_port_in_use_is_reported(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = SynapseServer(tmp_path / "hs", port=sock.getsockname()[1])
        with pytest.raises(SynapseStartError, match="already in use"):
            server.start()
    assert not server.is_running
