"""The protections' pure core: counters, windows, thresholds and the action ladder, with no I/O and no clock of its own
(``now``, in seconds, is always passed in), so every rule is tested directly.

Everything here reads metadata only: who sent what kind of event where and when, how many users an event's
``m.mentions`` names, whether it mentions ``@room``, membership changes. No message body enters this module, but for
:func:`media_or_link`, which only the opt-in content protection (``newcomer_content``) calls.

* :class:`TokenBucket`: a rate with a burst, per key (a flood is more than ``burst`` events at once, or a sustained
  rate above ``rate``);
* :class:`SlidingWindow`: how many events per key in the last ``window`` seconds (join waves, churn);
* :func:`mention_violation`: one event's mentions against the limits;
* :class:`Ladder`: the actions a protection takes against one user, one step further at each violation, with a
  cooldown once the top is reached and a reset after a quiet period.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACTIONS",
    "Ladder",
    "SlidingWindow",
    "Step",
    "TokenBucket",
    "event_shape",
    "media_or_link",
    "mention_counts",
    "mention_violation",
    "shape_worth_counting",
]

#: Every action a ladder may hold, mildest first.
ACTIONS = ("notice", "warn", "redact", "mute", "kick", "ban")


class TokenBucket:
    """``burst`` tokens per key, refilled at ``rate`` tokens per second; each event takes one.

    :meth:`hit` says whether the event was over the limit (no token left). A key idle long enough to be full again is
    forgotten, so the table holds only keys active in the last ``burst / rate`` seconds (plus those not yet pruned).
    """

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._state: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)
        self._hits = 0

    def hit(self, key: Hashable, now: float) -> bool:
        """Take a token for ``key`` at ``now``; True if there was none (the event is over the limit)."""
        tokens, at = self._state.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        over = tokens < 1.0
        if not over:
            tokens -= 1.0
        self._state[key] = (tokens, now)
        self._hits += 1
        if self._hits % 4096 == 0:
            self.prune(now)
        return over

    def level(self, key: Hashable, now: float) -> float:
        """Tokens ``key`` has left at ``now``."""
        tokens, at = self._state.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - at) * self.rate)

    def prune(self, now: float) -> None:
        """Forget keys whose bucket is full again."""
        full = [k for k, (tokens, at) in self._state.items() if tokens + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._state[key]

    def __len__(self) -> int:
        return len(self._state)


class SlidingWindow:
    """Events per key in the last ``window`` seconds."""

    def __init__(self, window: float) -> None:
        if window <= 0:
            raise ValueError("a window must be positive")
        self.window = window
        self._seen: dict[Hashable, deque[float]] = {}

    def add(self, key: Hashable, now: float) -> int:
        """Record one event for ``key`` at ``now``; return how many are in the window (this one included)."""
        seen = self._seen.setdefault(key, deque())
        seen.append(now)
        return self._trim(key, seen, now)

    def count(self, key: Hashable, now: float) -> int:
        """Events for ``key`` in the window ending at ``now``."""
        seen = self._seen.get(key)
        return self._trim(key, seen, now) if seen is not None else 0

    def _trim(self, key: Hashable, seen: deque[float], now: float) -> int:
        while seen and now - seen[0] >= self.window:
            seen.popleft()
        if not seen:
            del self._seen[key]
            return 0
        return len(seen)

    def clear(self, key: Hashable) -> None:
        """Forget ``key``."""
        self._seen.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)


def mention_counts(content: Mapping[str, Any]) -> tuple[int, bool]:
    """``(distinct users named in m.mentions.user_ids, whether m.mentions.room is true)``; malformed is none."""
    mentions = content.get("m.mentions") if isinstance(content, Mapping) else None
    if not isinstance(mentions, Mapping):
        return 0, False
    users = mentions.get("user_ids")
    count = len({u for u in users if isinstance(u, str)}) if isinstance(users, list) else 0
    return count, mentions.get("room") is True


def mention_violation(
    content: Mapping[str, Any], *, max_mentions: int, sender_power: int, room_mention_power: int
) -> str | None:
    """Why an event's mentions break the limits, or None: more than ``max_mentions`` users, or ``@room`` from someone
    below ``room_mention_power`` (the room's ``notifications.room`` level). Only the counts are returned."""
    users, room = mention_counts(content)
    if users > max_mentions:
        return f"{users} users mentioned (limit {max_mentions})"
    if room and sender_power < room_mention_power:
        return f"@room without permission (power {sender_power} < {room_mention_power})"
    return None


def event_shape(event_type: str, content: Mapping[str, Any]) -> tuple[Any, ...]:
    """What two events must share to count as "the same event" without reading their text: type, msgtype,
    relation type and target, mention counts, media size and mimetype. Bodies are not part of it."""
    rel = content.get("m.relates_to") if isinstance(content, Mapping) else None
    rel = rel if isinstance(rel, Mapping) else {}
    info = content.get("info") if isinstance(content, Mapping) else None
    info = info if isinstance(info, Mapping) else {}
    return (
        event_type,
        content.get("msgtype") if isinstance(content, Mapping) else None,
        rel.get("rel_type"),
        rel.get("event_id") if rel.get("rel_type") in ("m.annotation", "m.replace") else None,
        rel.get("key") if rel.get("rel_type") == "m.annotation" else None,
        mention_counts(content),
        info.get("size"),
        info.get("mimetype"),
    )


def shape_worth_counting(shape: tuple[Any, ...]) -> bool:
    """Whether a repeat of ``shape`` says something: it has a relation (a reply thread, an annotation, an edit of the
    same event) or media (size or mimetype). Plain text messages all share one shape; floods catch those."""
    _type, _msgtype, rel_type, _target, _key, _mentions, size, mimetype = shape
    return rel_type is not None or size is not None or mimetype is not None


#: Message types that are media.
MEDIA_MSGTYPES = ("m.image", "m.video", "m.audio", "m.file")
_LINK = re.compile(r"(?i)\b(?:https?://|www\.[a-z0-9-]+\.|matrix\.to/)|<a\s[^>]*href")


def media_or_link(event_type: str, content: Mapping[str, Any], *, links: bool = True) -> str | None:
    """``"media"`` or ``"link"`` if the event is media (a sticker, an image, a video, audio, a file) or (with
    ``links``) its text carries a link, else None. This reads the text: only the opt-in content protection calls it,
    and only the verdict leaves this function."""
    if event_type == "m.sticker":
        return "media"
    if not isinstance(content, Mapping):
        return None
    if content.get("msgtype") in MEDIA_MSGTYPES:
        return "media"
    if links:
        for key in ("body", "formatted_body"):
            text = content.get(key)
            if isinstance(text, str) and _LINK.search(text):
                return "link"
    return None


@dataclass(frozen=True)
class Step:
    """One rung the ladder took: ``action``, its index, and whether it is a repeat of the top step."""

    action: str
    index: int
    repeat: bool = False


class Ladder:
    """The actions against one key (a user in a room, for one protection), one rung further per violation.

    * The first violation takes ``steps[0]``, the next ``steps[1]``... but not sooner than ``escalate_after`` seconds
      after the previous step (violations in between only count as the same incident).
    * At the top, the last step is repeated at most once per ``cooldown`` seconds.
    * After ``forget_after`` seconds without a violation the key starts from the bottom again.
    """

    def __init__(
        self, steps: Iterable[str], *, escalate_after: float = 0.0, cooldown: float = 60.0, forget_after: float = 3600.0
    ) -> None:
        self.steps = tuple(steps)
        unknown = [s for s in self.steps if s not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown action {unknown[0]!r} (one of {', '.join(ACTIONS)})")
        if escalate_after < 0 or cooldown < 0 or forget_after <= 0:
            raise ValueError("escalate_after and cooldown must be >= 0, forget_after > 0")
        self.escalate_after = escalate_after
        self.cooldown = cooldown
        self.forget_after = forget_after
        self._state: dict[Hashable, tuple[int, float, float]] = {}  # key -> (next index, last step at, last seen)

    def violation(self, key: Hashable, now: float) -> Step | None:
        """Record a violation by ``key`` at ``now``; the step to take now, or None (cooling down, or no steps)."""
        if not self.steps:
            return None
        index, stepped, seen = self._state.get(key, (0, -1e18, -1e18))
        if now - seen > self.forget_after:
            index, stepped = 0, -1e18
        if index >= len(self.steps):
            if now - stepped < self.cooldown:
                self._state[key] = (index, stepped, now)
                return None
            self._state[key] = (index, now, now)
            return Step(self.steps[-1], len(self.steps) - 1, repeat=True)
        if index > 0 and now - stepped < self.escalate_after:
            self._state[key] = (index, stepped, now)
            return None
        self._state[key] = (index + 1, now, now)
        return Step(self.steps[index], index)

    def reset(self, key: Hashable) -> None:
        """Start ``key`` from the bottom (a moderator undid or dismissed its case)."""
        self._state.pop(key, None)

    def prune(self, now: float) -> None:
        """Forget keys quiet for longer than ``forget_after``."""
        for key in [k for k, (_, _, seen) in self._state.items() if now - seen > self.forget_after]:
            del self._state[key]
