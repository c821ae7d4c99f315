"""The filter :class:`bot.matrix.sync.SyncSource` asks for: no timeline on an initial sync (its history is skipped
anyway, and Synapse answers it ~2.5 times faster at 2,000 rooms, bench/scale.py), 100 events per room afterwards."""

from typing import Any

from nio import SyncResponse

from bot.matrix.sync import INITIAL_SYNC_FILTER, SYNC_FILTER, SyncSource

EMPTY_SYNC = {"next_batch": "s2", "rooms": {"join": {}, "invite": {}, "leave": {}}, "to_device": {"events": []}}


class FakeClient:
    user_id = "@bot:localhost"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def sync(self, **kwargs: Any) -> SyncResponse:
        self.calls.append(kwargs)
        return SyncResponse.from_dict(EMPTY_SYNC)


async def test_initial_sync_asks_for_no_timeline():
    client = FakeClient()
    batch = await SyncSource(client).fetch(None, timeout_ms=0)  # type: ignore[arg-type]
    assert batch.token == "s2"
    assert client.calls[0]["sync_filter"] == INITIAL_SYNC_FILTER
    assert INITIAL_SYNC_FILTER["room"]["timeline"]["limit"] == 0
    assert "state" not in INITIAL_SYNC_FILTER["room"]  # every member's state still comes (no lazy loading)


async def test_later_syncs_and_resumes_keep_the_timeline_filter():
    client = FakeClient()
    source = SyncSource(client)  # type: ignore[arg-type]
    await source.fetch("s1", timeout_ms=0, full_state=True)  # a restart with a stored token
    await source.fetch("s2", timeout_ms=30_000)
    assert [c["sync_filter"] for c in client.calls] == [SYNC_FILTER, SYNC_FILTER]
    assert client.calls[0]["full_state"] is True
