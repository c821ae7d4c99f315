"""StatePinStore reads a user's pin from state.db once (the tofu verdict asks for every message), issue 20."""

from __future__ import annotations

from pathlib import Path

from bot.e2ee.trust import StatePinStore
from bot.storage.state import StateStore


class CountingState:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.reads = 0

    def get(self, key: str) -> str | None:
        self.reads += 1
        return self.state.get(key)

    def set(self, key: str, value: str) -> None:
        self.state.set(key, value)


def test_pins_are_read_once_and_follow_set(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.db")
    try:
        counting = CountingState(state)
        pins = StatePinStore(counting)  # type: ignore[arg-type]
        assert [pins.get("@a:x") for _ in range(5)] == [None] * 5
        pins.set("@a:x", "MASTER1")
        assert [pins.get("@a:x") for _ in range(5)] == ["MASTER1"] * 5
        assert counting.reads == 1, "one read per user, however many messages"
        pins.set("@a:x", "MASTER2")
        assert pins.get("@a:x") == "MASTER2"
        assert StatePinStore(state).get("@a:x") == "MASTER2", "written through to state.db"
    finally:
        state.close()
