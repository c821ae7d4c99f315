"""The operator's control channel (bot/e2ee/control.py) and the CLI's rendering (bot/cli/verification.py), without a
homeserver: a real Unix socket served in this event loop, a verification service whose machine runs a flow against a
second machine."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from bot.cli.verification import format_flow
from bot.e2ee.control import ControlError, ControlServer, call, verification_commands
from bot.e2ee.verification import Send, VerificationMachine

ALICE, BOB = "@alice:x", "@bob:x"
DIRECTORY = {ALICE: {"ADEV": "alice-device-key"}, BOB: {"BDEV": "bob-device-key"}}
MASTERS = {ALICE: "alicemaster", BOB: "bobmaster"}


class Keys:
    def __init__(self, devices, masters) -> None:
        self.devices, self.masters = devices, masters

    def device_ed25519(self, user_id, device_id):
        return self.devices.get(user_id, {}).get(device_id)

    def master_key(self, user_id):
        return self.masters.get(user_id)


class FakeService:
    """What verification_commands needs: the machine plus async confirm/mismatch/cancel/request."""

    def __init__(self) -> None:
        self.machine = VerificationMachine(ALICE, "ADEV", Keys(DIRECTORY, MASTERS))
        self.sent: list[Send] = []

    def all(self):
        return sorted(self.machine.flows.values(), key=lambda v: v.started_at)

    def pending(self):
        return self.machine.pending()

    def _keep(self, actions):
        self.sent += [a for a in actions if isinstance(a, Send)]

    async def confirm(self, flow_id):
        self._keep(self.machine.confirm(flow_id))
        return self.machine.flows[flow_id]

    async def mismatch(self, flow_id):
        self._keep(self.machine.mismatch(flow_id))
        return self.machine.flows[flow_id]

    async def cancel(self, flow_id):
        self._keep(self.machine.cancel(flow_id))
        return self.machine.flows[flow_id]

    async def request(self, user, devices=None):
        flow, actions = self.machine.request_to_device(user, devices or ["BDEV"])
        self._keep(actions)
        return flow

    async def request_in_room(self, room, user):
        return self.machine.room_request_sent(room, "$req", user)


def _flow_at_keys(service: FakeService) -> str:
    """Run bob's request against the service's machine until both sides show the short codes."""
    bob = VerificationMachine(BOB, "BDEV", Keys(DIRECTORY, MASTERS))
    flow, actions = bob.request_to_device(ALICE, ["ADEV"])
    queue = [(BOB, a) for a in actions]
    while queue:
        sender, action = queue.pop(0)
        if not isinstance(action, Send):
            continue
        target = service.machine if action.to_user == ALICE else bob
        queue += [(target.own_user, a) for a in target.receive_to_device(sender, action.event_type, action.content)]
    return flow.flow_id


@pytest.fixture
async def control(tmp_path):
    service = FakeService()
    path = tmp_path / "control.sock"
    server = await ControlServer(path, verification_commands(service)).start()
    yield service, path
    await server.close()


async def _call(path, cmd, **args):
    return await asyncio.to_thread(call, path, cmd, **args)


async def test_socket_is_private_and_removed_on_close(tmp_path):
    path = tmp_path / "control.sock"
    server = await ControlServer(path, {}).start()
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with pytest.raises(ControlError, match="in use"):
        await ControlServer(path, {}).start()  # a second instance on the same data_dir
    await server.close()
    assert not path.exists()
    # A stale socket file (a crash) is replaced.
    server = await ControlServer(path, {}).start()
    await server.close()
    with pytest.raises(ControlError, match="is it running"):
        await _call(path, "verification.list")


async def test_list_show_confirm_over_the_socket(control):
    service, path = control
    assert await _call(path, "verification.list") == []
    flow_id = _flow_at_keys(service)
    listed = await _call(path, "verification.list")
    assert [f["id"] for f in listed] == [flow_id] and listed[0]["state"] == "keys"
    shown = await _call(path, "verification.show", id=flow_id[:8])  # a unique prefix is enough
    assert shown["emoji"] == [list(e) for e in service.machine.flows[flow_id].emoji]
    confirmed = await _call(path, "verification.confirm", id=flow_id)
    assert confirmed["state"] == "confirmed" and [s.event_type for s in service.sent] == ["m.key.verification.mac"]
    with pytest.raises(ControlError, match="not waiting for a confirmation"):
        await _call(path, "verification.confirm", id=flow_id)
    with pytest.raises(ControlError, match="no verification"):
        await _call(path, "verification.show", id="nope")
    with pytest.raises(ControlError, match="unknown command"):
        await _call(path, "verification.explode")
    everything = await _call(path, "verification.list", all=True)
    assert len(everything) == 1


async def test_mismatch_cancel_and_request(control):
    service, path = control
    flow_id = _flow_at_keys(service)
    assert (await _call(path, "verification.mismatch", id=flow_id))["cancel_code"] == "m.mismatched_sas"
    requested = await _call(path, "verification.request", user=BOB)
    assert requested["we_requested"] is True and requested["state"] == "requested"
    cancelled = await _call(path, "verification.cancel", id=requested["id"])
    assert cancelled["state"] == "cancelled" and cancelled["cancel_code"] == "m.user"
    in_room = await _call(path, "verification.request", user=BOB, room="!dm:x")
    assert in_room["room_id"] == "!dm:x" and in_room["id"] == "$req"
    with pytest.raises(ControlError, match="missing argument: user"):
        await _call(path, "verification.request")


def test_format_flow_prints_emoji_with_names():
    service = FakeService()
    flow_id = _flow_at_keys(service)
    flow = service.machine.flows[flow_id]
    text = format_flow(flow.describe())
    for symbol, name in flow.emoji:
        assert f"    {symbol}  {name}" in text
    assert "numbers: " + " ".join(map(str, flow.decimals)) in text
    assert f"ratchet verification confirm {flow_id}" in text
    flow.state, flow.cancel_code, flow.cancel_reason, flow.cancelled_by_us = "cancelled", "m.user", "bye", False
    assert f"cancelled by {BOB}: m.user (bye)" in format_flow(flow.describe())


def test_config_verification_accept_from(tmp_path):
    from bot.config import load_config
    from bot.e2ee.verification_service import accept_from_config
    from bot.errors import ConfigError

    def config(e2ee: str):
        path = tmp_path / "config.yaml"
        path.write_text(
            "homeserver: http://127.0.0.1:1\nuser_id: '@bot:x'\npassword: pw\npickle_key: 0123456789abcdef\n"
            f"admins: ['@admin:x']\ne2ee:\n{e2ee}"
        )
        return load_config(path)

    cfg = config(
        "  trust: verified\n  verification:\n"
        "    accept_from: ['@*:example.org']\n    auto_confirm: ['@me:example.org']\n"
    )
    assert cfg.e2ee.trust == "verified" and cfg.e2ee.verification.accept_from == ("@*:example.org",)
    assert cfg.e2ee.verification.auto_confirm == ("@me:example.org",)
    allowed = accept_from_config(cfg.admins, cfg.e2ee.verification.accept_from)
    assert allowed("@admin:x") and allowed("@alice:example.org") and not allowed("@mallory:evil.org")
    assert config("  trust: tofu\n").e2ee.verification.accept_from == ()
    with pytest.raises(ConfigError, match=r"e2ee\.verification\.accept_from"):
        config("  verification:\n    accept_from: '@*:x'\n")
    with pytest.raises(ConfigError, match=r"e2ee\.verification\.auto_confirm"):
        config("  verification:\n    auto_confirm: ['not a user']\n")
    with pytest.raises(ConfigError, match="trust"):
        config("  trust: trusting\n")


async def test_a_verified_identity_change_is_pinned():
    """Under tofu, a user whose identity changed is untrusted until re-pinned; verifying them pins the new key."""
    from bot.e2ee.trust import MemoryPinStore
    from bot.e2ee.verification import Outcome, Verification
    from bot.e2ee.verification_service import VerificationService

    class Client:
        user_id, device_id, olm = ALICE, "ADEV", None

    class Trust:
        def __init__(self) -> None:
            self.pins = MemoryPinStore({BOB: "oldmaster"})

        def pinned(self, user_id):
            return self.pins.get(user_id)

        def pin(self, user_id, master):
            self.pins.set(user_id, master)

        def user_keys(self, user_id):
            return type("K", (), {"master_public": "newmaster"})()

    trust = Trust()
    service = VerificationService(Client(), trust=trust)
    flow = Verification("t", ALICE, "ADEV", BOB, "BDEV", True, 0.0)
    flow.verified_keys = {"ed25519:BDEV": "bob-device-key"}
    await service._perform([Outcome("verified", flow)])
    assert trust.pinned(BOB) == "oldmaster"  # the master key was not part of what was verified
    flow.verified_keys["ed25519:newmaster"] = "newmaster"
    await service._perform([Outcome("verified", flow)])
    assert trust.pinned(BOB) == "newmaster"


async def test_a_flood_of_verification_messages_is_bounded(caplog):
    from bot.e2ee import verification_service as vs

    class Client:
        user_id, device_id, olm = ALICE, "ADEV", None

    service = vs.VerificationService(Client())
    for i in range(vs.QUEUE_LIMIT + 5):
        service._enqueue(BOB, "m.key.verification.mac", {"transaction_id": f"t{i}"})
    assert service._queue.qsize() == vs.QUEUE_LIMIT and service._dropped == 5
    assert "5 dropped" not in caplog.text  # logged at the 1st, 10th, 100th... drop, not every time


async def test_in_room_events_decrypted_late_reach_the_service_once(tmp_path):
    """An in-room verification event whose room key came after it: the late-key path (SyncSource.decrypt) hands it
    to the on_room_event callbacks; the service takes each event id once."""
    from bot.e2ee.verification_service import VerificationService
    from bot.matrix.client import make_client
    from bot.matrix.sync import SyncSource

    client = make_client("http://127.0.0.1:1", ALICE, tmp_path, "pickle-key-for-tests", device_id="ADEV")
    seen: list[tuple[str, str]] = []
    client.on_room_event({"m.key.verification.start"}, lambda room, source: seen.append((room, source["event_id"])))
    start = {"type": "m.key.verification.start", "event_id": "$s", "sender": BOB, "content": {}}
    late = type("Decrypted", (), {"source": start})()
    client.decrypt_event = lambda event: late  # the key is here now
    encrypted = {
        "type": "m.room.encrypted", "event_id": "$s", "sender": BOB, "origin_server_ts": 1,
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "sender_key": "k", "session_id": "s",
                    "device_id": "BDEV"},
    }
    assert SyncSource(client).decrypt("!r:x", encrypted) is late
    assert seen == [("!r:x", "$s")]

    service = VerificationService(client)
    service._enqueue_room("!r:x", start)
    service._enqueue_room("!r:x", start)  # seen at its sync, then again when decrypted late
    assert service._queue.qsize() == 1
    await client.close()
