"""Protections: anti-abuse from metadata, shared ban lists, and cases moderators act on (issue 19).

Metadata only: each protection reads the event type, the sender, the server's timestamp, the number of users in
``m.mentions``, membership changes. Message bodies are never read (but by ``newcomer_content``, off unless the
operator enables it, which keeps only its verdict), stored or logged. The counting is in
:mod:`.core` and :mod:`.policy` (plain classes, tested without a network); this module is the thin shell that hears
events, takes the ladder's actions in Matrix and keeps the cases (:mod:`.cases`) in the moderation room.

* ``flood``: more than ``burst`` messages at once (or above ``rate`` per second) by one member in one room;
* ``mentions``: an event naming more than ``max_mentions`` users in ``m.mentions``, or ``@room`` from a member below
  the room's ``notifications.room`` level;
* ``join_wave``: ``joins`` new members of a room within ``window`` seconds: the room is closed (join rule ``invite``);
* ``churn``: one member joining and leaving ``changes`` times within ``window`` seconds;
* ``invites``: one member inviting more than ``max_invites`` users within ``window`` seconds;
* ``repeats``: one member sending ``count`` events of one shape (relation, media; never the text) within ``window``;
* ``bot_invites``: more than ``max_invites`` invites to the bot from one user within ``window`` seconds: the runtime
  rejects them (this plugin is an invite guard, ``self.bot.invites``); invites to rooms a room rule bans too;
* ``newcomer_content`` (content, off unless enabled): media or links among a new member's first messages;
* policy lists (``policy_lists``, ``own_list``): ``m.policy.rule.user`` bans applied in every protected room, lifted
  when the rule goes; ``m.policy.rule.server`` bans as ``m.room.server_acl`` where the bot may send it.

Members at or above ``exempt_power``, the bot's ``admins`` and the bot itself are never acted against. Every action
opens or updates a case (``P-XXXXXX``) in the moderation room; ``!case ID undo|dismiss|ban`` acts on it (the report
plugin's ``!case`` hands ``P-`` ids here; without the report plugin, this plugin answers ``!case P-...`` itself).
See docs/protections.md.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

from bot import Context, MatrixError, Plugin, Rest, command, every, on_event, on_message

from .cases import Action, ProtectionCase, case_message, new_case_id
from .core import (
    ACTIONS,
    Ladder,
    SlidingWindow,
    TokenBucket,
    event_shape,
    media_or_link,
    mention_violation,
    shape_worth_counting,
)
from .policy import (
    KINDS,
    Change,
    PolicySet,
    Rule,
    glob_matches,
    rule_state_key,
    server_acl,
    spared_servers,
    too_broad,
)

#: The room field of the cases about invites to the bot (they are in no room yet).
BOT_INVITES = "invites to the bot"
_ROOM = re.compile(r"^(![^\s]+|#[^\s:]+:[^\s]+)$")  # room ids have no server part from room version 12


def _check_actions(where: str, actions: list[str]) -> None:
    for action in actions:
        if action not in ACTIONS:
            raise ValueError(f"{where}.actions: unknown action {action!r} (one of {', '.join(ACTIONS)})")


@dataclass(frozen=True)
class Flood:
    #: Check message floods.
    enabled: bool = True
    #: Messages per second one member may keep sending in one room.
    rate: float = 1.0
    #: Messages one member may send at once before the rate applies.
    burst: int = 10
    #: The ladder: the first violation takes the first action, the next one the second...
    actions: list[str] = field(default_factory=lambda: ["notice", "mute"])

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("flood.rate must be positive")
        if self.burst < 1:
            raise ValueError("flood.burst must be at least 1")
        _check_actions("flood", self.actions)


@dataclass(frozen=True)
class Mentions:
    #: Check mention storms (from m.mentions, not the text).
    enabled: bool = True
    #: Users one event may mention.
    max_mentions: int = 8
    actions: list[str] = field(default_factory=lambda: ["redact", "mute"])

    def __post_init__(self) -> None:
        if self.max_mentions < 1:
            raise ValueError("mentions.max_mentions must be at least 1")
        _check_actions("mentions", self.actions)


@dataclass(frozen=True)
class JoinWave:
    #: Check join waves.
    enabled: bool = True
    #: New members within `window` seconds that make a wave.
    joins: int = 10
    window: float = 60.0
    #: close: set the room's join rule to invite (undo restores it); notice: only open a case.
    action: str = "close"

    def __post_init__(self) -> None:
        if self.joins < 2:
            raise ValueError("join_wave.joins must be at least 2")
        if self.window <= 0:
            raise ValueError("join_wave.window must be positive")
        if self.action not in ("close", "notice"):
            raise ValueError("join_wave.action must be close or notice")


@dataclass(frozen=True)
class Churn:
    #: Check join/leave churn by one member.
    enabled: bool = True
    #: Joins and leaves by one member within `window` seconds.
    changes: int = 6
    window: float = 300.0
    actions: list[str] = field(default_factory=lambda: ["kick", "ban"])

    def __post_init__(self) -> None:
        if self.changes < 2 or self.window <= 0:
            raise ValueError("churn.changes must be at least 2 and churn.window positive")
        _check_actions("churn", self.actions)


@dataclass(frozen=True)
class Invites:
    #: Check invite spam by members.
    enabled: bool = True
    #: Invites one member may send in one room within `window` seconds.
    max_invites: int = 10
    window: float = 300.0
    actions: list[str] = field(default_factory=lambda: ["warn", "kick"])

    def __post_init__(self) -> None:
        if self.max_invites < 1 or self.window <= 0:
            raise ValueError("invites.max_invites must be at least 1 and invites.window positive")
        _check_actions("invites", self.actions)


@dataclass(frozen=True)
class BotInvites:
    #: Refuse invites to the bot from one user beyond `max_invites` within `window` seconds (and open a case).
    enabled: bool = True
    max_invites: int = 5
    window: float = 600.0

    def __post_init__(self) -> None:
        if self.max_invites < 1 or self.window <= 0:
            raise ValueError("bot_invites.max_invites must be at least 1 and bot_invites.window positive")


@dataclass(frozen=True)
class Repeats:
    #: Check repeated identical events by shape (relation type and target, media size and type; never the text).
    enabled: bool = True
    #: Events of one shape by one member within `window` seconds that make a violation.
    count: int = 5
    window: float = 60.0
    actions: list[str] = field(default_factory=lambda: ["redact", "mute"])

    def __post_init__(self) -> None:
        if self.count < 2 or self.window <= 0:
            raise ValueError("repeats.count must be at least 2 and repeats.window positive")
        _check_actions("repeats", self.actions)


@dataclass(frozen=True)
class NewcomerContent:
    #: A content protection, off unless enabled: reads the msgtype and the text of a new member's first messages to
    #: see whether they are media or carry links (nothing is stored or logged but the verdict).
    enabled: bool = False
    #: How many of a new member's first messages are checked.
    first_messages: int = 3
    #: Whether links in the text count (media always do).
    links: bool = True
    actions: list[str] = field(default_factory=lambda: ["redact", "kick"])

    def __post_init__(self) -> None:
        if self.first_messages < 1:
            raise ValueError("newcomer_content.first_messages must be at least 1")
        _check_actions("newcomer_content", self.actions)


@dataclass(frozen=True)
class RoomThresholds:
    """One room's own settings: each section given replaces the global one for that room."""

    dry_run: bool | None = None
    flood: Flood | None = None
    mentions: Mentions | None = None
    join_wave: JoinWave | None = None
    churn: Churn | None = None
    invites: Invites | None = None
    repeats: Repeats | None = None
    newcomer_content: NewcomerContent | None = None


def _rule_handler(event_type: str):
    """An event handler for one policy-rule state type (the spec's and the older spellings)."""

    async def rule(self: Protections, ctx: Context) -> None:
        await self._on_rule(ctx)

    rule.__name__ = "rule_" + event_type.replace(".", "_")
    return on_event(event_type)(rule)


class Protections(Plugin):
    """Anti-abuse from metadata, policy lists, and cases moderators act on."""

    @dataclass(frozen=True)
    class Config:
        #: The (encrypted) room id or alias where cases go; "" to only log.
        moderation_room: str = ""
        #: Rooms (ids or aliases) to protect; empty: every room the bot is in, but the moderation room and the lists.
        protected_rooms: list[str] = field(default_factory=list)
        #: Only open cases: no notice, DM, redaction, power level, kick or ban.
        dry_run: bool = False
        #: Members at or above this power level are exempt (the bot's admins always are).
        exempt_power: int = 50
        #: At the top of a ladder, the last action is repeated at most once per this many seconds.
        cooldown: float = 60.0
        #: Seconds between two rungs of a ladder (violations in between count as the same incident).
        escalate_after: float = 0.0
        #: A member quiet for this long starts from the bottom of the ladders again.
        forget_after: float = 3600.0
        flood: Flood = field(default_factory=Flood)
        mentions: Mentions = field(default_factory=Mentions)
        join_wave: JoinWave = field(default_factory=JoinWave)
        churn: Churn = field(default_factory=Churn)
        invites: Invites = field(default_factory=Invites)
        repeats: Repeats = field(default_factory=Repeats)
        #: Opt-in content protection (reads the first messages of new members): off by default.
        newcomer_content: NewcomerContent = field(default_factory=NewcomerContent)
        #: Invite spam to the bot itself (the runtime asks this plugin before answering an invite).
        bot_invites: BotInvites = field(default_factory=BotInvites)
        #: Per-room settings, by room id.
        rooms_thresholds: dict[str, RoomThresholds] = field(default_factory=dict)
        #: Policy lists (room ids or aliases) whose m.ban rules apply in the protected rooms.
        policy_lists: list[str] = field(default_factory=list)
        #: The operators' own policy list (room id or alias), written by !ban and !unban; "" for none.
        own_list: str = ""
        #: Seconds between full re-reads of the lists' state (rules are also followed live through sync).
        policy_resync: float = 300.0
        #: Seconds between retries of policy bans and server ACLs that could not be applied (missing power).
        policy_retry: float = 60.0
        #: Power level needed for !ban / !unban in the moderation room, and for !case on P- cases.
        moderator_power: int = 50

        def __post_init__(self) -> None:
            for name in ("moderation_room", "own_list"):
                value = getattr(self, name)
                if value and not _ROOM.match(value):
                    raise ValueError(f"{name} must be a room id (!...) or alias (#...), not {value!r}")
            for name in ("protected_rooms", "policy_lists"):
                for value in getattr(self, name):
                    if not _ROOM.match(value):
                        raise ValueError(f"{name}: {value!r} is not a room id (!...) or alias (#...)")
            for room in self.rooms_thresholds:
                if not room.startswith("!"):
                    raise ValueError(f"rooms_thresholds: {room!r} is not a room id (!...)")
            if self.policy_retry <= 0 or self.policy_resync <= 0:
                raise ValueError("policy_retry and policy_resync must be positive")
            if self.cooldown < 0 or self.escalate_after < 0 or self.forget_after <= 0:
                raise ValueError("cooldown and escalate_after must be >= 0, forget_after positive")

    migrations = (
        """
        CREATE TABLE pcase (
            case_id TEXT PRIMARY KEY, protection TEXT NOT NULL, room_id TEXT NOT NULL, subject TEXT NOT NULL,
            status TEXT NOT NULL, created REAL NOT NULL, mod_event TEXT, case_json TEXT NOT NULL
        );
        CREATE INDEX pcase_open ON pcase (protection, room_id, subject, status);
        CREATE TABLE policy_ban (
            room_id TEXT NOT NULL, user_id TEXT NOT NULL, list_id TEXT NOT NULL, kind TEXT NOT NULL,
            state_key TEXT NOT NULL, case_id TEXT, PRIMARY KEY (room_id, user_id, list_id, kind, state_key)
        );
        CREATE TABLE acl_deny (room_id TEXT NOT NULL, glob TEXT NOT NULL, PRIMARY KEY (room_id, glob));
        """,
    )

    async def start(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._ladders: dict[tuple[str, str], Ladder] = {}
        self._joins: dict[str, SlidingWindow] = {}
        self._churn: dict[str, SlidingWindow] = {}
        self._invites: dict[str, SlidingWindow] = {}
        self._closed_at: dict[str, float] = {}
        self._recent_joins: dict[str, list[str]] = {}
        self._policies = PolicySet()
        self._list_ids: dict[str, str] = {}  # room id -> as configured
        self._own_list_id: str | None = None
        self._mod_room: str | None = None
        self._protected: set[str] | None = None
        self._notes: list[str] = []  # for the moderation room, waiting until the bot is in it
        self._unposted = True  # cases may wait for the moderation room too (from an earlier run as well)
        self._policy_lock = asyncio.Lock()
        self._case_lock = asyncio.Lock()
        self._repeats: dict[str, SlidingWindow] = {}
        self._newcomers: dict[tuple[str, str], int] = {}  # (room, member) -> first messages still to check
        self._bot_invites = SlidingWindow(self.config.bot_invites.window)
        self._unapplied: set[tuple[str, str, str, str, str]] = set()  # policy bans that failed, retried
        self._acl_unapplied: set[str] = set()  # rooms whose server ACL could not be written, retried
        self._room_rules_told: set[tuple[str, str]] = set()  # (rule key, room) the moderators were told about
        self._mod_room_retry_at = 0.0  # an alias that did not resolve is retried with a back-off
        self._mod_room_backoff = 0.0
        self._actions = self.metrics.counter("actions", "Protection actions by protection and action.",
                                             ["protection", "action"])
        self.bot.cases.register("P-", self.name, self.act_on_case)
        self.bot.invites.add_guard(self.name, self.check_invite)

    async def stop(self) -> None:
        self.bot.cases.unregister(self.name, self.act_on_case)
        self.bot.invites.remove_guard(self.name, self.check_invite)

    # -- settings per room -------------------------------------------------------------------------------------

    def _setting(self, room_id: str, name: str) -> Any:
        override = self.config.rooms_thresholds.get(room_id)
        value = getattr(override, name, None) if override is not None else None
        return getattr(self.config, name) if value is None else value

    def _ladder(self, room_id: str, protection: str) -> Ladder:
        key = (room_id if room_id in self.config.rooms_thresholds else "", protection)
        ladder = self._ladders.get(key)
        if ladder is None:
            c = self.config
            ladder = Ladder(
                self._setting(room_id, protection).actions,
                escalate_after=c.escalate_after, cooldown=c.cooldown, forget_after=c.forget_after,
            )
            self._ladders[key] = ladder
        return ladder

    async def _moderation_room(self) -> str | None:
        if not self.config.moderation_room:
            return None
        if self._mod_room is None:
            now = time.monotonic()
            if now < self._mod_room_retry_at:
                return None  # backing off: not one directory lookup per message
            try:
                self._mod_room = await self.bot.resolve_room(self.config.moderation_room)
            except MatrixError as exc:
                self._mod_room_backoff = min(max(2 * self._mod_room_backoff, 5.0), 300.0)
                self._mod_room_retry_at = now + self._mod_room_backoff
                self.log.warning("cannot resolve the moderation room %s (%s); retrying in %.0f s",
                                 self.config.moderation_room, exc, self._mod_room_backoff)
                return None
        return self._mod_room

    async def _protected_rooms(self) -> set[str]:
        if self._protected is None:
            if self.config.protected_rooms:
                rooms = set()
                for room in self.config.protected_rooms:
                    try:
                        rooms.add(await self.bot.resolve_room(room))
                    except MatrixError as exc:
                        self.log.warning("protected room %s: cannot resolve it (%s)", room, exc)
                        await self._tell_moderators(f"Protected room {room} cannot be resolved ({exc}); skipped.")
                self._protected = rooms
            else:
                self._protected = set()  # "every room": decided per room below
        if self.config.protected_rooms:
            return self._protected
        excluded = set(self._list_ids) | {self._own_list_id, await self._moderation_room()}
        return {r for r in self.bot.joined_rooms() if r not in excluded}

    async def _is_protected(self, room_id: str) -> bool:
        if self.config.protected_rooms:
            return room_id in await self._protected_rooms()
        excluded = (self._own_list_id, await self._moderation_room())
        return room_id not in self._list_ids and room_id not in excluded

    def _untouchable(self, user_id: str) -> bool:
        """The bot itself and its admins: never acted against, whatever a rule or a counter says."""
        return user_id == self.bot.user_id or self.bot.is_admin(user_id)

    def _exempt(self, room_id: str, user_id: str) -> bool:
        return self._untouchable(user_id) or self.bot.power_level(room_id, user_id) >= self.config.exempt_power

    # -- message protections (metadata only) ---------------------------------------------------------------------

    @on_event("m.room.message")
    async def message(self, ctx: Context) -> None:
        await self._message_metadata(ctx, "m.room.message")

    @on_event("m.sticker")
    async def sticker(self, ctx: Context) -> None:
        await self._message_metadata(ctx, "m.sticker")

    async def _message_metadata(self, ctx: Context, event_type: str) -> None:
        room_id, sender = ctx.room_id, ctx.sender
        if not await self._is_protected(room_id) or self._exempt(room_id, sender):
            return
        now = _seconds(ctx)
        flood: Flood = self._setting(room_id, "flood")
        if flood.enabled:
            bucket = self._buckets.get(room_id)
            if bucket is None or (bucket.rate, bucket.burst) != (flood.rate, flood.burst):
                bucket = self._buckets[room_id] = TokenBucket(flood.rate, flood.burst)
            if bucket.hit(sender, now):
                await self._violation(
                    "flood", room_id, sender, now, ctx.event_id,
                    f"more than {flood.burst} messages at once or above {flood.rate:g}/s (event {ctx.event_id})",
                )
        mentions: Mentions = self._setting(room_id, "mentions")
        if mentions.enabled:
            why = mention_violation(
                ctx.content, max_mentions=mentions.max_mentions, sender_power=ctx.power_level,
                room_mention_power=self.bot.moderation.room_mention_level(room_id),
            )
            if why is not None:
                await self._violation("mentions", room_id, sender, now, ctx.event_id, f"{why} (event {ctx.event_id})")
        await self._repeats_and_content(ctx, event_type, room_id, sender, now)

    async def _repeats_and_content(self, ctx: Context, event_type: str, room_id: str, sender: str, now: float) -> None:
        repeats: Repeats = self._setting(room_id, "repeats")
        content_keys = ctx.content
        if repeats.enabled and ("m.relates_to" in content_keys or "info" in content_keys):
            shape = event_shape(event_type, ctx.content)  # only events that may have a shape worth counting
            if shape_worth_counting(shape):
                window = self._repeats.get(room_id)
                if window is None or window.window != repeats.window:
                    window = self._repeats[room_id] = SlidingWindow(repeats.window)
                count = window.add((sender, shape), now)
                if count >= repeats.count:
                    _t, msgtype, rel_type, target, _k, _m, size, mimetype = shape
                    what = ", ".join(f"{k} {v}" for k, v in (
                        ("type", event_type), ("msgtype", msgtype), ("relation", rel_type), ("to", target),
                        ("size", size), ("mimetype", mimetype)) if v is not None)
                    await self._violation(
                        "repeats", room_id, sender, now, ctx.event_id,
                        f"{count} events of one shape ({what}) within {repeats.window:g} s (event {ctx.event_id})",
                    )
        content: NewcomerContent = self._setting(room_id, "newcomer_content")
        left = self._newcomers.get((room_id, sender)) if content.enabled else None
        if left:
            if left <= 1:
                del self._newcomers[(room_id, sender)]
            else:
                self._newcomers[(room_id, sender)] = left - 1
            kind = media_or_link(event_type, ctx.content, links=content.links)
            if kind is not None:
                await self._violation(
                    "newcomer_content", room_id, sender, now, ctx.event_id,
                    f"{kind} among a new member's first {content.first_messages} messages (event {ctx.event_id})",
                )

    # -- membership protections ----------------------------------------------------------------------------------

    @on_event("m.room.member")
    async def member(self, ctx: Context) -> None:
        source = ctx.event.source
        room_id, target = ctx.room_id, source.get("state_key")
        if not isinstance(target, str):
            return
        membership = ctx.content.get("membership")
        unsigned = source.get("unsigned") if isinstance(source.get("unsigned"), dict) else {}
        prev = unsigned.get("prev_content") if isinstance(unsigned.get("prev_content"), dict) else {}
        was = prev.get("membership")
        if room_id in self._list_ids or not await self._is_protected(room_id):
            return
        now = _seconds(ctx)
        if membership == "join" and was != "join":
            if self._policies.bans_for("user", target):
                await self._enforce_user(target, rooms=[room_id])
            await self._join_wave(room_id, target, now)
            content: NewcomerContent = self._setting(room_id, "newcomer_content")
            if content.enabled and not self._exempt(room_id, target):
                self._newcomers[(room_id, target)] = content.first_messages
                if len(self._newcomers) > 10000:  # bounded: the oldest newcomers are forgotten first
                    del self._newcomers[next(iter(self._newcomers))]
        if membership in ("join", "leave") and was != membership and ctx.sender == target:
            churn: Churn = self._setting(room_id, "churn")
            if churn.enabled and not self._exempt(room_id, target):
                window = self._churn.setdefault(room_id, SlidingWindow(churn.window))
                count = window.add(target, now)
                if count >= churn.changes:
                    window.clear(target)
                    await self._violation(
                        "churn", room_id, target, now, None, f"{count} joins/leaves within {churn.window:g} s"
                    )
        if membership == "invite" and ctx.sender != target:
            invites: Invites = self._setting(room_id, "invites")
            if invites.enabled and not self._exempt(room_id, ctx.sender):
                window = self._invites.setdefault(room_id, SlidingWindow(invites.window))
                count = window.add(ctx.sender, now)
                if count > invites.max_invites:
                    await self._violation(
                        "invites", room_id, ctx.sender, now, None,
                        f"{count} invites within {invites.window:g} s (limit {invites.max_invites})",
                    )

    async def _join_wave(self, room_id: str, user_id: str, now: float) -> None:
        wave: JoinWave = self._setting(room_id, "join_wave")
        if not wave.enabled:
            return
        window = self._joins.setdefault(room_id, SlidingWindow(wave.window))
        count = window.add(room_id, now)
        recent = self._recent_joins.setdefault(room_id, [])
        recent.append(user_id)
        del recent[: -wave.joins]
        if count < wave.joins or now - self._closed_at.get(room_id, -1e18) < wave.window:
            return
        self._closed_at[room_id] = now
        window.clear(room_id)
        fact = f"{count} joins within {wave.window:g} s: " + ", ".join(recent)
        self.log.warning("join wave in %s: %d joins within %gs", room_id, count, wave.window)
        dry = self._setting(room_id, "dry_run")
        action = Action("close" if wave.action == "close" else "notice", room_id, ok=True, dry_run=dry)
        if wave.action == "close" and not dry:
            moderation = self.bot.moderation
            try:
                if not moderation.can_send_state(room_id, "m.room.join_rules"):
                    raise MatrixError(
                        f"missing power: m.room.join_rules needs {moderation.state_level(room_id, 'm.room.join_rules')}"
                    )
                current = await moderation.state_event(room_id, "m.room.join_rules", "") or {"join_rule": "public"}
                await moderation.put_state(room_id, "m.room.join_rules", "", {**current, "join_rule": "invite"})
                action.undo = {"join_rules": current}
                action.detail = f"join rule {current.get('join_rule')!s} -> invite"
            except MatrixError as exc:
                action.ok, action.detail = False, str(exc)
                self.log.warning("join wave in %s: closing the room failed (%s)", room_id, exc)
        self._actions.labels("join_wave", action.action).inc()
        await self._record("join_wave", room_id, room_id, fact, [action])

    # -- invites to the bot ----------------------------------------------------------------------------------------

    async def check_invite(self, room_id: str, inviter: str | None, allowed: bool) -> str | None:
        """The runtime asks before it answers an invite to the bot (``self.bot.invites``; never for the admins').
        Refuses rooms a policy list bans, and invite spam: more than ``bot_invites.max_invites`` invites from one user
        within ``bot_invites.window`` seconds (each refusal updates one case for that user)."""
        banned = self._policies.bans_for("room", room_id)
        if banned:
            rule = banned[0]
            where = self._list_ids.get(rule.list_id, rule.list_id)
            self.log.warning("invite to %s from %s refused: room banned by %s", room_id, inviter, where)
            await self._tell_moderators(
                f"Refused an invite to {room_id} from {inviter}: the room is banned by rule {rule.state_key!r} of "
                f"{where} ({rule.reason or 'no reason given'})."
            )
            return f"room banned by policy list {where}"
        invites: BotInvites = self.config.bot_invites
        if not invites.enabled or not inviter or self._untouchable(inviter):
            return None
        count = self._bot_invites.add(inviter, time.time())
        if count <= invites.max_invites:
            return None
        dry = self.config.dry_run
        self.log.warning("invite spam to the bot: %d invites from %s within %gs", count, inviter, invites.window)
        self._actions.labels("bot_invites", "refuse" if not dry else "dry_run").inc()
        action = Action("refuse invite", room_id, ok=True, dry_run=dry, detail="" if dry else "the bot left it")
        await self._record(
            "bot_invites", BOT_INVITES, inviter,
            f"{count} invites to the bot within {invites.window:g} s (limit {invites.max_invites}): {room_id}"
            + ("" if allowed else " (the inviter is not in invites.accept_from either)"),
            [action],
        )
        return None if dry else f"invite spam: {count} invites within {invites.window:g} s"

    # -- the ladder ------------------------------------------------------------------------------------------------

    async def _violation(
        self, protection: str, room_id: str, user_id: str, now: float, event_id: str | None, fact: str
    ) -> None:
        if self._untouchable(user_id):
            return
        step = self._ladder(room_id, protection).violation((room_id, user_id), now)
        if step is None:
            return
        self.log.info("%s: %s in %s, action %s", protection, user_id, room_id, step.action)
        action = await self._act(step.action, protection, room_id, user_id, event_id)
        await self._record(protection, room_id, user_id, fact, [action])

    async def _act(
        self, name: str, protection: str, room_id: str, user_id: str, event_id: str | None, reason: str | None = None
    ) -> Action:
        """Take one action (nothing in dry-run); failures (missing power, the server refusing) are in the Action."""
        dry = self._setting(room_id, "dry_run")
        action = Action(name, room_id, ok=True, dry_run=dry)
        self._actions.labels(protection, name if not dry else "dry_run").inc()
        if dry:
            return action
        if self._untouchable(user_id):  # belt and braces: callers check already
            action.ok, action.detail = False, "refused: the bot and its admins are never acted against"
            return action
        reason = reason or f"protections: {protection}"
        moderation = self.bot.moderation
        try:
            if name == "notice":
                await self.bot.send_text(
                    room_id, f"{user_id}: please slow down ({protection}); the moderators have been told.", notice=True
                )
            elif name == "warn":
                await self.bot.send_dm(
                    user_id, f"A warning from the moderators' bot in {room_id}: {protection}. Please stop.",
                    notice=True,
                )
            elif name == "redact":
                if event_id is None:
                    action.ok, action.detail = False, "nothing to redact"
                elif not moderation.can(room_id, "redact"):
                    raise MatrixError(f"missing power: redacting needs {moderation.required_level(room_id, 'redact')}")
                else:
                    await self.bot.redact(room_id, event_id, reason)
                    action.detail = f"event {event_id}"
            elif name == "mute":
                level = moderation.mute_level(room_id)
                if not moderation.can_send_state(room_id, "m.room.power_levels") or self.bot.power_level(
                    room_id, self.bot.user_id
                ) <= self.bot.power_level(room_id, user_id):
                    raise MatrixError("missing power: the bot cannot change this member's power level")
                previous = await moderation.set_power_level(room_id, user_id, level)
                action.undo = {"level": previous}
                action.detail = f"power level {previous if previous is not None else 'default'} -> {level}"
            elif name in ("kick", "ban"):
                if not moderation.can(room_id, name):
                    raise MatrixError(f"missing power: {name} needs {moderation.required_level(room_id, name)}")
                await (moderation.kick if name == "kick" else moderation.ban)(room_id, user_id, reason)
        except MatrixError as exc:
            action.ok, action.detail = False, str(exc)
            self.log.warning("%s: %s of %s in %s failed (%s)", protection, name, user_id, room_id, exc)
        return action

    # -- cases -----------------------------------------------------------------------------------------------------

    async def _record(
        self, protection: str, room_id: str, subject: str, fact: str, actions: list[Action]
    ) -> ProtectionCase:
        """Open a case, or update the open one for (protection, room, subject), and show it in the moderation room."""
        async with self._case_lock:
            row = await self.storage.fetchone(
                "SELECT case_json, mod_event FROM pcase WHERE protection = ? AND room_id = ? AND subject = ? "
                "AND status = 'open' ORDER BY created DESC LIMIT 1",
                (protection, room_id, subject),
            )
            if row is None:
                case = ProtectionCase(new_case_id(), protection, room_id, subject, time.time())
                mod_event = None
            else:
                case, mod_event = ProtectionCase.from_json(row[0]), row[1]
            case.add_fact(fact)
            for action in actions:
                case.add_action(action)
            if row is None:
                await self.storage.execute(
                    "INSERT INTO pcase (case_id, protection, room_id, subject, status, created, case_json) "
                    "VALUES (?, ?, ?, ?, 'open', ?, ?)",
                    (case.case_id, protection, room_id, subject, case.created, case.to_json()),
                )
            else:
                await self.storage.execute(
                    "UPDATE pcase SET case_json = ? WHERE case_id = ?", (case.to_json(), case.case_id)
                )
            mod_event = await self._show(case, mod_event)
            if mod_event and row is None:
                await self.storage.execute(
                    "UPDATE pcase SET mod_event = ? WHERE case_id = ?", (mod_event, case.case_id)
                )
        self.log.info("case %s: %s in %s", case.case_id, protection, room_id)
        return case

    async def _mod_room_ready(self) -> str | None:
        """The moderation room once the bot is in it (at start it may still be joining: what is said meanwhile
        waits, see :meth:`flush`)."""
        mod_room = await self._moderation_room()
        return mod_room if mod_room is not None and mod_room in self.bot.joined_rooms() else None

    async def _show(self, case: ProtectionCase, mod_event: str | None) -> str | None:
        mod_room = await self._mod_room_ready()
        if mod_room is None:
            self._unposted = bool(self.config.moderation_room)
            return mod_event
        body, markup = case_message(case, prefix=self.bot.plugins.prefix)
        try:
            if mod_event:
                await self.bot.edit(mod_room, mod_event, body, html=markup)
                return mod_event
            return await self.bot.send_text(mod_room, body, html=markup)
        except Exception as exc:  # a failure to post never stops the protection (the case is stored)
            self.log.warning("case %s: cannot post it in the moderation room (%s)", case.case_id, exc)
            self._unposted = not mod_event
            return mod_event

    async def _tell_moderators(self, text: str) -> None:
        if not self.config.moderation_room:
            return
        self._notes.append(text)
        del self._notes[:-50]
        await self.flush()

    @every(2.0)
    async def flush(self) -> None:
        """Post what waited for the moderation room: notes, and cases opened before the bot was in it."""
        if not (self._notes or self._unposted):
            return
        mod_room = await self._mod_room_ready()
        if mod_room is None:
            return
        while self._notes:
            try:
                await self.bot.send_text(mod_room, self._notes[0], notice=True)
            except Exception as exc:
                self.log.warning("cannot post in the moderation room (%s)", exc)
                return
            self._notes.pop(0)
        if self._unposted:
            self._unposted = False
            async with self._case_lock:
                rows = await self.storage.fetchall(
                    "SELECT case_json FROM pcase WHERE mod_event IS NULL AND status = 'open' ORDER BY created"
                )
                for (case_json,) in rows:
                    case = ProtectionCase.from_json(case_json)
                    mod_event = await self._show(case, None)
                    if mod_event:
                        await self.storage.execute(
                            "UPDATE pcase SET mod_event = ? WHERE case_id = ?", (mod_event, case.case_id)
                        )

    async def _moderator_may(self, ctx: Context, what: str) -> bool:
        mod_room = await self._moderation_room()
        if mod_room is None or ctx.room_id != mod_room:
            return False
        if ctx.power_level < self.config.moderator_power and not ctx.is_admin:
            await ctx.reply(f"Only moderators (power level {self.config.moderator_power} here) can {what}.",
                            notice=True)
            return False
        if not ctx.trusted:
            self.log.info("refused %s from %s: untrusted device", what, ctx.sender)
            await ctx.reply("Refused: your device is not trusted by the bot; verify it first.", notice=True)
            return False
        return True

    async def act_on_case(self, ctx: Context, case_id: str, action: str, reason: str | None) -> None:
        """``!case P-... undo|dismiss|ban|status [reason]`` (the report plugin's ``!case`` hands ``P-`` ids here)."""
        if not await self._moderator_may(ctx, "act on cases"):
            return
        async with self._case_lock:
            row = await self.storage.fetchone("SELECT case_json, mod_event FROM pcase WHERE case_id = ?", (case_id,))
            if row is None:
                await ctx.reply(f"No case {case_id}.", notice=True)
                return
            case, mod_event = ProtectionCase.from_json(row[0]), row[1]
            if action == "status":
                await ctx.reply(f"Case {case_id}: {case.status}.", notice=True)
                return
            if action not in ("undo", "dismiss", "ban"):
                await ctx.reply(f"Case {case_id} is a protection case: undo, dismiss or ban.", notice=True)
                return
            if case.status != "open" and action != "undo":
                await ctx.reply(f"Case {case_id} is already {case.status}.", notice=True)
                return
            note = ""
            if action == "undo":
                note = await self._undo(case)
                case.status = "undone"
            elif action == "dismiss":
                case.status = "dismissed"
            elif action == "ban":
                if case.subject.startswith("!") or self._untouchable(case.subject) or not case.room_id.startswith("!"):
                    await ctx.reply(f"Case {case_id} has no member the bot may ban.", notice=True)
                    return
                done = await self._act("ban", case.protection, case.room_id, case.subject, None,
                                       reason or f"case {case_id}")
                case.add_action(done)
                if not done.ok:
                    await ctx.reply(f"Ban failed: {done.detail}", notice=True)
                    await self.storage.execute("UPDATE pcase SET case_json = ? WHERE case_id = ?",
                                               (case.to_json(), case_id))
                    return
                case.status = "banned" if not done.dry_run else "open"
            if case.protection in ("flood", "mentions", "churn", "invites", "repeats", "newcomer_content"):
                self._ladder(case.room_id, case.protection).reset((case.room_id, case.subject))
            await self.storage.execute(
                "UPDATE pcase SET status = ?, case_json = ? WHERE case_id = ?", (case.status, case.to_json(), case_id)
            )
            await self._show(case, mod_event)
        self.log.info("case %s: %s by a moderator", case_id, case.status)
        await ctx.reply(f"Case {case_id}: {case.status}.{note}", notice=True)

    async def _undo(self, case: ProtectionCase) -> str:
        """Undo what can be undone (mutes, bans, closed rooms), newest first; returns what could not be."""
        moderation = self.bot.moderation
        failed = []
        for action in reversed(case.actions):
            if action.undone or not action.ok or action.dry_run:
                continue
            try:
                if action.action == "mute":
                    await moderation.set_power_level(action.room_id, case.subject, action.undo.get("level"))
                elif action.action == "ban":
                    await moderation.unban(action.room_id, case.subject, f"case {case.case_id} undone")
                elif action.action == "close" and action.undo.get("join_rules"):
                    await moderation.put_state(action.room_id, "m.room.join_rules", "", action.undo["join_rules"])
                else:
                    continue
                action.undone = True
            except MatrixError as exc:
                failed.append(f"{action.action} in {action.room_id}: {exc}")
        return (" Could not undo: " + "; ".join(failed)) if failed else ""

    @on_message(r"^(.{1,16}?)case\s+(P-[A-Za-z0-9]+)\s+([a-z]+)(?:\s+(.*))?$", re.IGNORECASE)
    async def case_without_report(self, ctx: Context, match: re.Match) -> None:
        """``!case P-...`` (with the configured command prefix) when the report plugin, which owns ``!case``, is not
        loaded: this handler only sees the message then, since passive handlers do not see messages that run a
        command."""
        if match.group(1) != self.bot.plugins.prefix:
            return
        await self.act_on_case(ctx, match.group(2).upper(), match.group(3).lower(), match.group(4))

    # -- policy lists ----------------------------------------------------------------------------------------------

    @every("policy_resync", run_at_start=True)
    async def resync_policies(self) -> None:
        """Join and re-read every list (at start, then every ``policy_resync`` seconds: sync may skip state)."""
        wanted = list(self.config.policy_lists) + ([self.config.own_list] if self.config.own_list else [])
        for configured in wanted:
            try:
                room_id = await self.bot.resolve_room(configured)
                if room_id not in self.bot.joined_rooms():
                    room_id = await self.bot.join(configured)
                state = await self.bot.moderation.room_state(room_id)
            except MatrixError as exc:
                self.log.warning("policy list %s cannot be read (%s)", configured, exc)
                await self._tell_moderators(
                    f"Policy list {configured} cannot be read: {exc}. Its rules are not applied."
                )
                continue
            self._list_ids[room_id] = configured
            if configured == self.config.own_list:
                self._own_list_id = room_id
            async with self._policy_lock:
                changes = self._policies.load(room_id, state)
                for change in changes:
                    await self._policy_change(change)

    async def _on_rule(self, ctx: Context) -> None:
        if ctx.room_id not in self._list_ids:
            return
        async with self._policy_lock:
            change = self._policies.apply(ctx.room_id, ctx.event.source)
            if change is not None:
                await self._policy_change(change)

    rule_user, rule_user_legacy, rule_user_mjolnir = (_rule_handler(t) for t in KINDS["user"])
    rule_room, rule_room_legacy, rule_room_mjolnir = (_rule_handler(t) for t in KINDS["room"])
    rule_server, rule_server_legacy, rule_server_mjolnir = (_rule_handler(t) for t in KINDS["server"])

    async def _policy_change(self, change: Change) -> None:
        where = self._list_ids.get(change.list_id, change.list_id)
        if change.refused:
            self.log.warning("policy list %s: rule %s refused (%s)", where, change.state_key, change.refused)
            await self._tell_moderators(f"Policy list {where}: rule {change.state_key!r} refused: {change.refused}")
        if change.removed is not None and change.removed.is_ban:
            await self._lift(change.removed)
        if change.added is not None and change.added.is_ban:
            if change.added.kind == "user":
                await self._enforce_rule(change.added)
            elif change.added.kind == "server":
                await self._apply_acls()
            elif change.added.kind == "room":
                await self._report_banned_rooms(change.added)

    async def _report_banned_rooms(self, rule: Rule) -> None:
        """A room ban rule: invites to matching rooms are refused (:meth:`check_invite`); rooms the bot is already
        in are reported to the moderators (once per rule and room), not left: leaving is the operators' call."""
        where = self._list_ids.get(rule.list_id, rule.list_id)
        for room_id in sorted(self.bot.joined_rooms()):
            told = ((rule.list_id, rule.state_key), room_id)
            if rule.matches(room_id) and told not in self._room_rules_told:
                self._room_rules_told.add(told)
                self.log.warning("policy list %s bans room %s, which the bot is in", where, room_id)
                await self._tell_moderators(
                    f"Policy list {where}: rule {rule.state_key!r} bans room {room_id}, which the bot is in "
                    f"({rule.reason or 'no reason given'}). The bot stays; it refuses new invites to banned rooms."
                )

    async def _enforce_rule(self, rule: Rule) -> None:
        rooms = await self._protected_rooms()
        for room_id in sorted(rooms):
            targets = set()
            if not rule.is_glob:
                targets.add(rule.entity)
            for user_id in self.bot.members(room_id):
                if rule.matches(user_id):
                    targets.add(user_id)
            for user_id in sorted(targets):
                await self._ban_by_rule(rule, room_id, user_id)

    async def _enforce_user(self, user_id: str, rooms: list[str]) -> None:
        async with self._policy_lock:
            for rule in self._policies.bans_for("user", user_id):
                for room_id in rooms:
                    await self._ban_by_rule(rule, room_id, user_id)

    async def _ban_by_rule(self, rule: Rule, room_id: str, user_id: str) -> None:
        where = self._list_ids.get(rule.list_id, rule.list_id)
        fact = f"rule {rule.state_key} of {where}: {rule.entity} ({rule.reason or 'no reason given'})"
        if self._untouchable(user_id):
            self.log.warning("policy list %s: rule %s matches %s, an admin or the bot: not applied", where,
                             rule.state_key, user_id)
            await self._tell_moderators(
                f"Policy list {where}: rule {rule.state_key!r} ({rule.entity}) matches {user_id}, one of the bot's "
                "admins or the bot itself: not applied to them."
            )
            return
        key = (room_id, user_id, rule.list_id, rule.kind, rule.state_key)
        if await self.storage.fetchone(
            "SELECT 1 FROM policy_ban WHERE room_id = ? AND user_id = ? AND list_id = ? AND kind = ? AND state_key = ?",
            key,
        ):
            return
        action = await self._act("ban", "policy", room_id, user_id, None, f"policy list: {rule.reason or rule.entity}")
        if action.ok and not action.dry_run:
            await self.storage.execute(
                "INSERT INTO policy_ban VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT DO NOTHING", key
            )
        retried = key in self._unapplied
        if action.ok:
            self._unapplied.discard(key)
        else:
            self._unapplied.add(key)  # retried every policy_retry seconds, and when the room's power levels change
            if retried:
                return  # still failing: the case already says so
        await self._record("policy", room_id, user_id, fact + (" (retried)" if retried else ""), [action])

    @every("policy_retry")
    async def retry_policies(self) -> None:
        """Retry the policy bans and server ACLs that could not be applied (the bot lacked the power then)."""
        if not (self._unapplied or self._acl_unapplied):
            return
        async with self._policy_lock:
            protected = await self._protected_rooms()
            for key in sorted(self._unapplied):
                room_id, user_id, list_id, kind, state_key = key
                rule = self._policies.rules.get((list_id, kind, state_key))
                if rule is None or not rule.is_ban or not rule.matches(user_id) or room_id not in protected:
                    self._unapplied.discard(key)
                    continue
                await self._ban_by_rule(rule, room_id, user_id)
            if self._acl_unapplied:
                await self._apply_acls()

    @on_event("m.room.power_levels")
    async def power_levels(self, ctx: Context) -> None:
        """The bot may have the power now: retry at once what waits for it in this room."""
        if ctx.room_id in self._acl_unapplied or any(k[0] == ctx.room_id for k in self._unapplied):
            await self.retry_policies()

    async def _lift(self, rule: Rule) -> None:
        if rule.kind == "server":
            await self._apply_acls()
            return
        if rule.kind != "user":
            return  # room rules ban nothing the plugin must lift (invites to the room are refused while it stands)
        rows = await self.storage.fetchall(
            "SELECT room_id, user_id FROM policy_ban WHERE list_id = ? AND kind = ? AND state_key = ?",
            (rule.list_id, rule.kind, rule.state_key),
        )
        for room_id, user_id in rows:
            await self.storage.execute(
                "DELETE FROM policy_ban WHERE room_id = ? AND user_id = ? AND list_id = ? AND kind = ? "
                "AND state_key = ?", (room_id, user_id, rule.list_id, rule.kind, rule.state_key),
            )
            still = await self.storage.fetchone(
                "SELECT 1 FROM policy_ban WHERE room_id = ? AND user_id = ?", (room_id, user_id)
            )
            if still or self._policies.bans_for("user", user_id):
                continue  # another rule still bans them
            where = self._list_ids.get(rule.list_id, rule.list_id)
            action = Action("unban", room_id, ok=True, dry_run=self._setting(room_id, "dry_run"))
            if not action.dry_run:
                try:
                    await self.bot.moderation.unban(room_id, user_id, "policy rule removed")
                except MatrixError as exc:
                    action.ok, action.detail = False, str(exc)
                    self.log.warning("policy: unbanning %s in %s failed (%s)", user_id, room_id, exc)
            await self._record("policy", room_id, user_id, f"rule {rule.state_key} of {where} removed", [action])

    async def _apply_acls(self) -> None:
        """Deny the banned servers in every protected room where the bot may send ``m.room.server_acl``; denials the
        bot added for rules since removed are lifted, the room's own are kept."""
        banned = self._policies.server_bans()
        kept = sorted({u.partition(":")[2] for u in (self.bot.user_id, *self.bot.admins) if ":" in u})
        for glob, server in spared_servers(banned, kept):
            if (glob, server) not in self._room_rules_told:
                self._room_rules_told.add((glob, server))
                self.log.warning("server rule %s matches %s, the bot's or an admin's server: not denied", glob, server)
                await self._tell_moderators(
                    f"Server rule {glob} matches {server}, the bot's or an admin's server: it is never denied."
                )
        moderation = self.bot.moderation
        for room_id in sorted(await self._protected_rooms()):
            if not moderation.can_send_state(room_id, "m.room.server_acl"):
                if banned and room_id not in self._acl_unapplied:
                    self._acl_unapplied.add(room_id)
                    await self._tell_moderators(
                        f"Server bans not applied in {room_id}: the bot may not send m.room.server_acl there "
                        f"(needs {moderation.state_level(room_id, 'm.room.server_acl')}); retried when it may."
                    )
                elif not banned:
                    self._acl_unapplied.discard(room_id)
                continue
            self._acl_unapplied.discard(room_id)
            try:
                current = await moderation.state_event(room_id, "m.room.server_acl", "")
                ours = {g for (g,) in await self.storage.fetchall(
                    "SELECT glob FROM acl_deny WHERE room_id = ?", (room_id,))}
                base = dict(current or {})
                base["deny"] = [d for d in (base.get("deny") or []) if d not in ours or d in banned]
                content = server_acl(base if current else None, banned, kept)
                if current is not None and content == {**current, **content} and set(content["deny"]) == set(
                        current.get("deny") or []):
                    continue
                if current is None and not banned:
                    continue
                if self._setting(room_id, "dry_run"):
                    await self._record("policy", room_id, room_id, f"server ACL would deny {banned}",
                                       [Action("server_acl", room_id, ok=True, dry_run=True)])
                    continue
                await moderation.put_state(room_id, "m.room.server_acl", "", content)
                await self.storage.execute("DELETE FROM acl_deny WHERE room_id = ?", (room_id,))
                for glob in content["deny"]:
                    if glob in banned:
                        await self.storage.execute(
                            "INSERT INTO acl_deny VALUES (?, ?) ON CONFLICT DO NOTHING", (room_id, glob)
                        )
                await self._record("policy", room_id, room_id, f"server ACL denies {', '.join(content['deny'])}",
                                   [Action("server_acl", room_id, ok=True)])
            except MatrixError as exc:
                self.log.warning("server ACL in %s failed (%s)", room_id, exc)
                if room_id not in self._acl_unapplied:
                    self._acl_unapplied.add(room_id)
                    await self._tell_moderators(f"Server ACL in {room_id} failed: {exc}; retried later.")

    # -- the operators' own list -----------------------------------------------------------------------------------

    @command("ban", help="Moderators, in the moderation room: !ban @user|@glob* reason (a rule in the own list)")
    async def ban(self, ctx: Context, user: str, reason: Rest | None = None) -> None:
        await self._write_rule(ctx, user, reason or "", ban=True)

    @command("unban", help="Moderators, in the moderation room: !unban @user|@glob* (removes the own list's rule)")
    async def unban(self, ctx: Context, user: str) -> None:
        await self._write_rule(ctx, user, "", ban=False)

    async def _write_rule(self, ctx: Context, entity: str, reason: str, *, ban: bool) -> None:
        if not await self._moderator_may(ctx, "ban and unban"):
            return
        if not self.config.own_list:
            await ctx.reply("No own policy list is configured (protections.own_list).", notice=True)
            return
        if ban:
            broad = too_broad("user", entity)
            if broad or not entity.startswith("@"):
                await ctx.reply(f"Refused: {broad or 'not a user id or a glob of them (@...)'}.", notice=True)
                return
            if self._untouchable(entity) or any(
                glob_matches(entity, u) for u in (self.bot.user_id, *self.bot.admins)
            ):
                await ctx.reply("Refused: the bot and its admins cannot be banned.", notice=True)
                return
        try:
            list_id = self._own_list_id or await self.bot.resolve_room(self.config.own_list)
            content = {"entity": entity, "recommendation": "m.ban", "reason": reason} if ban else {}
            event = {"type": "m.policy.rule.user", "state_key": rule_state_key(entity), "content": content}
            await self.bot.moderation.put_state(list_id, event["type"], event["state_key"], content)
        except MatrixError as exc:
            self.log.warning("writing to the own policy list failed (%s)", exc)
            await ctx.reply(f"Writing to the policy list failed: {exc}", notice=True)
            return
        # The bot's own events never reach plugins: apply the rule now (resyncs find it unchanged).
        self._list_ids.setdefault(list_id, self.config.own_list)
        self._own_list_id = list_id
        async with self._policy_lock:
            change = self._policies.apply(list_id, event)
            if change is not None:
                await self._policy_change(change)
        await ctx.reply(f"{'Banned' if ban else 'Unbanned'} {entity} through the policy list.", notice=True)


def _seconds(ctx: Context) -> float:
    """The event's server timestamp in seconds (what was sent when, not when the bot got it: a catch-up after a
    restart is not a flood)."""
    ts = getattr(ctx.event, "server_timestamp", None)
    if not isinstance(ts, int) or ts <= 0:
        ts = ctx.event.source.get("origin_server_ts")
    return ts / 1000.0 if isinstance(ts, int) and ts > 0 else time.time()
