"""Per-ghost devices without a homeserver (bot/appservice/ghost_devices.py): the bounded cache of Olm machines (the
least recently used closed, reopened when needed, never one in the middle of a send), what a transaction hands each
ghost's machine, the ghosts' cross-signing seeds and the devices a transaction's key counts mention.

The machines here are stand-ins that record what they get; everything with a real homeserver, real stores and the js
peer is in tests/test_e2e_appservice_e2ee.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bot.appservice.ghost_devices import STATE_PREFIX, GhostDevices, ghost_seeds
from bot.appservice.transactions import devices_mentioned
from bot.storage.state import StateStore

SERVER = "localhost"


def _ghost(name: str) -> str:
    return f"@irc_{name}:{SERVER}"


class FakeOlm:
    """What the ghost devices use of an Olm machine."""

    def __init__(self) -> None:
        self.tracked_users: set[str] = set()
        self.users_for_key_query: set[str] = set()
        self.outbound_group_sessions: dict[str, object] = {}
        self.uploaded_key_count = 50

    def add_changed_users(self, users: set[str]) -> None:
        self.users_for_key_query |= users


class FakeMachine:
    """A ghost's Olm machine stand-in: records the to-device events nio parsed for it and whether it was closed."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.olm = FakeOlm()
        self.client_session = None
        self.store = SimpleNamespace(database=SimpleNamespace(closed=False))
        self.store.database.close = lambda: setattr(self.store.database, "closed", True)
        self.fallback = SimpleNamespace(observe_sync=lambda body: None)
        self.to_device: list[Any] = []
        self.invalidated: list[str] = []

    async def receive_response(self, response: Any) -> None:
        self.to_device.extend(response.to_device_events)

    def invalidate_outbound_session(self, room_id: str) -> None:
        self.invalidated.append(room_id)
        self.olm.outbound_group_sessions.pop(room_id, None)

    @property
    def closed(self) -> bool:
        return bool(self.store.database.closed)


@pytest.fixture
def devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GhostDevices:
    bot = SimpleNamespace(membership_listeners=[], rooms={}, client_session=None, olm=None, homeserver="http://hs")
    found = GhostDevices(
        bot,  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        as_token="as", pickle_key="pk", device_name="Ratchet",
        is_ghost=lambda u: u.startswith("@irc_"), is_ours=lambda u: u.startswith("@irc_") or u == "@bot:localhost",
        limit=2,
    )
    found.bind(StateStore.open(tmp_path / "state.db"))
    found.opens = []  # type: ignore[attr-defined]

    async def fake_open(user_id: str) -> FakeMachine:
        found.opens.append(user_id)  # type: ignore[attr-defined]
        if found.device_id(user_id) is None:
            found._save_device_id(user_id, "RATCHETGH" + user_id[5:].split(":")[0].upper())
        return FakeMachine(user_id)

    monkeypatch.setattr(found, "_open", fake_open)
    return found


async def test_the_least_recently_used_machine_is_closed_and_reopened_when_needed(devices: GhostDevices) -> None:
    alice = await devices.machine(_ghost("alice"))
    bob = await devices.machine(_ghost("bob"))
    assert await devices.machine(_ghost("alice")) is alice  # used again: bob is now the least recent
    carol = await devices.machine(_ghost("carol"))
    assert devices.loaded() == [_ghost("alice"), _ghost("carol")]
    assert bob.closed and not alice.closed and not carol.closed  # type: ignore[attr-defined]
    assert devices.evicted == 1
    # bob again: reopened (from its store, in the real thing), with the device id kept in the state.
    bob_again = await devices.machine(_ghost("bob"))
    assert bob_again is not bob
    assert devices.opens == [_ghost("alice"), _ghost("bob"), _ghost("carol"), _ghost("bob")]  # type: ignore[attr-defined]
    assert devices.loaded() == [_ghost("carol"), _ghost("bob")]
    assert devices.device_id(_ghost("bob")) == "RATCHETGHBOB"
    assert devices.state is not None and devices.state.get(STATE_PREFIX + _ghost("bob")) == "RATCHETGHBOB"
    await devices.close()
    assert len(devices) == 0 and bob_again.closed  # type: ignore[attr-defined]


async def test_a_machine_in_the_middle_of_a_send_is_not_closed(devices: GhostDevices) -> None:
    await devices.machine(_ghost("alice"))
    await devices.machine(_ghost("bob"))
    devices._busy[_ghost("alice")] = 1  # alice is sending
    await devices.machine(_ghost("carol"))
    assert devices.loaded() == [_ghost("alice"), _ghost("carol")]  # bob went instead


async def test_a_transaction_hands_each_open_ghost_machine_its_own_to_device_messages(devices: GhostDevices) -> None:
    await devices.machine(_ghost("bob"))
    alice = await devices.machine(_ghost("alice"))
    carol = await devices.machine(_ghost("carol"))  # bob is closed now
    carol.olm.tracked_users = {"@member:localhost", "@other:localhost"}  # type: ignore[attr-defined]
    devices._touched.clear()

    def message(to_user: str, to_device: str, n: int) -> dict[str, Any]:
        return {
            "type": "m.dummy", "sender": "@member:localhost", "content": {"n": n},
            "to_user_id": to_user, "to_device_id": to_device,
        }

    await devices.feed(
        [
            message(_ghost("alice"), "RATCHETGHALICE", 1),
            message(_ghost("alice"), "OLDDEVICE", 2),  # not alice's device: dropped
            message(_ghost("bob"), "RATCHETGHBOB", 3),  # bob's machine is closed: dropped, not reopened
            message("@member:localhost", "MEMBERDEV", 4),  # not a ghost
        ],
        {"org.matrix.msc3202.device_lists": {"changed": ["@member:localhost", "@stranger:localhost"], "left": []}},
    )
    assert [e.source["content"]["n"] for e in alice.to_device] == [1]  # type: ignore[attr-defined]
    assert "to_user_id" not in alice.to_device[0].source  # type: ignore[attr-defined]
    assert _ghost("bob") not in devices.loaded()
    assert devices._touched == {_ghost("alice")}
    # Device lists: carol (open, no messages) asks again for the changed users it tracks, and only those.
    assert carol.olm.users_for_key_query == {"@member:localhost"}  # type: ignore[attr-defined]


async def test_a_closed_ghost_machine_is_opened_when_its_one_time_keys_run_low(devices: GhostDevices) -> None:
    await devices.machine(_ghost("bob"))
    await devices.machine(_ghost("alice"))
    await devices.machine(_ghost("carol"))  # bob closed
    counts = {_ghost("bob"): {"RATCHETGHBOB": {"signed_curve25519": 3}}, _ghost("dan"): {"X": {"signed_curve25519": 0}}}
    await devices.feed([], {"org.matrix.msc3202.device_one_time_keys_count": counts})
    assert _ghost("bob") in devices.loaded()  # reopened to publish more keys
    bob = await devices.machine(_ghost("bob"))
    assert bob.olm.uploaded_key_count == 3
    assert _ghost("dan") not in devices.loaded()  # dan has no device of ours


async def test_a_member_joining_or_leaving_rotates_the_ghosts_sessions_there(devices: GhostDevices) -> None:
    alice = await devices.machine(_ghost("alice"))
    alice.olm.outbound_group_sessions["!room:localhost"] = object()  # type: ignore[attr-defined]
    (listener,) = devices.bot.membership_listeners
    listener("!room:localhost", _ghost("bob"))  # another ghost: it never gets alice's keys, nothing changes
    assert alice.invalidated == []  # type: ignore[attr-defined]
    listener("!room:localhost", "@member:localhost")
    assert alice.invalidated == ["!room:localhost"]  # type: ignore[attr-defined]


def test_ghost_seeds_are_stable_per_ghost_and_differ_between_ghosts() -> None:
    secret = bytes(range(32))
    alice = ghost_seeds(secret, _ghost("alice"))
    assert ghost_seeds(secret, _ghost("alice")) == alice
    bob = ghost_seeds(secret, _ghost("bob"))
    assert {alice.master, alice.self_signing, alice.user_signing}.isdisjoint({bob.master, bob.self_signing})
    assert len({alice.master, alice.self_signing, alice.user_signing}) == 3
    assert ghost_seeds(bytes(32), _ghost("alice")) != alice


def test_devices_mentioned_reads_both_count_spellings_and_the_fallback_types() -> None:
    extensions = {
        "org.matrix.msc3202.device_one_time_keys_count": {"@a:x": {"D1": {"signed_curve25519": 1}}, "bad": []},
        "org.matrix.msc3202.device_unused_fallback_key_types": {"@a:x": {"D1": []}, "@b:x": {"D2": ["x"]}},
    }
    assert devices_mentioned(extensions) == [("@a:x", "D1"), ("@b:x", "D2")]
    assert devices_mentioned({"org.matrix.msc3202.device_one_time_key_counts": {"@c:x": {"D3": {}}}}) == [
        ("@c:x", "D3")
    ]
    assert devices_mentioned({}) == []
