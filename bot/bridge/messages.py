"""The message map: which Matrix event is which remote message, so replies, edits, redactions and reactions can be
carried across.

:class:`MessageMap` is the in-memory part (bounded, newest kept) and also remembers the text of recent messages, to
quote them in reply fallbacks and compute ``s/old/new/`` edits. The :class:`~bot.bridge.Bridge` writes the ids (never
the text) to its storage too, and prunes them after a retention period.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Literal

__all__ = ["MappedMessage", "MessageMap"]


@dataclass(frozen=True)
class MappedMessage:
    """One bridged message: its Matrix event, its remote counterpart and who sent it.

    ``direction`` is ``"in"`` for a remote message posted into Matrix, ``"out"`` for a Matrix message sent to the
    remote network. ``sender`` is the remote id (nick) or Matrix user id of the author; ``sender_name`` how they are
    shown. ``text`` is only kept in memory (None when loaded from storage).
    """

    room_id: str
    event_id: str
    network: str
    channel: str
    remote_id: str | None
    sender: str
    sender_name: str
    direction: Literal["in", "out"]
    text: str | None = None
    at: float = field(default_factory=time.time)


class MessageMap:
    """Matrix event id <-> remote id, both ways, for the ``capacity`` most recent messages."""

    def __init__(self, capacity: int = 5000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._by_event: OrderedDict[str, MappedMessage] = OrderedDict()
        self._by_remote: dict[tuple[str, str, str], str] = {}
        self._last: dict[tuple[str, str, str, str], str] = {}

    def __len__(self) -> int:
        return len(self._by_event)

    def add(self, message: MappedMessage) -> None:
        """Remember ``message`` (replacing an entry for the same event), forgetting the oldest beyond capacity."""
        self.forget(message.event_id)
        self._by_event[message.event_id] = message
        if message.remote_id is not None:
            self._by_remote[(message.network, message.channel, message.remote_id)] = message.event_id
        self._last[(message.network, message.channel, message.sender, message.direction)] = message.event_id
        while len(self._by_event) > self.capacity:
            oldest = next(iter(self._by_event))
            self.forget(oldest)

    def forget(self, event_id: str) -> MappedMessage | None:
        """Drop the entry of ``event_id`` (returned, or None if there was none)."""
        old = self._by_event.pop(event_id, None)
        if old is None:
            return None
        if old.remote_id is not None:
            key = (old.network, old.channel, old.remote_id)
            if self._by_remote.get(key) == event_id:
                del self._by_remote[key]
        last_key = (old.network, old.channel, old.sender, old.direction)
        if self._last.get(last_key) == event_id:
            del self._last[last_key]
        return old

    def set_remote_id(self, event_id: str, remote_id: str) -> None:
        """Record the remote id of an outgoing message once the network has given one."""
        old = self._by_event.get(event_id)
        if old is not None and old.remote_id != remote_id:
            new = replace(old, remote_id=remote_id)
            self._by_event[event_id] = new
            self._by_remote[(old.network, old.channel, remote_id)] = event_id

    def set_text(self, event_id: str, text: str) -> None:
        """Update the remembered text of a message (after an edit)."""
        old = self._by_event.get(event_id)
        if old is not None:
            self._by_event[event_id] = replace(old, text=text)

    def by_event(self, event_id: str) -> MappedMessage | None:
        return self._by_event.get(event_id)

    def by_remote(self, network: str, channel: str, remote_id: str) -> MappedMessage | None:
        event_id = self._by_remote.get((network, channel, remote_id))
        return self._by_event.get(event_id) if event_id is not None else None

    def forget_sender(self, network: str, sender: str, channel: str | None = None) -> int:
        """Forget which message was ``sender``'s last (in ``channel``, or in every channel of ``network``), so that
        ``s/old/new/`` from whoever has that name next edits nothing; names are compared case-insensitively.
        Returns how many entries were forgotten (the messages themselves stay mapped)."""
        folded = sender.casefold()
        gone = [
            key for key in self._last
            if key[0] == network and key[2].casefold() == folded and (channel is None or key[1] == channel)
        ]
        for key in gone:
            del self._last[key]
        return len(gone)

    def last_from(
        self, network: str, channel: str, sender: str, direction: Literal["in", "out"] = "in"
    ) -> MappedMessage | None:
        """The most recent message of ``sender`` in that channel (for ``s/old/new/`` corrections)."""
        event_id = self._last.get((network, channel, sender, direction))
        return self._by_event.get(event_id) if event_id is not None else None
