"""Issue 19: the protections plugin's shell without a homeserver: invite guard decisions and the moderation room's
back-off (fakes stand in for ``self.bot``; what reaches Matrix is tested in test_e2e_protections.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from bot import MatrixError
from bot.reports.cases import CaseRegistry
from bot.reports.invites import InviteGuards
from plugins.protections import BOT_INVITES, BotInvites, Protections


class _Counter:
    def labels(self, *_):
        return self

    def inc(self):
        pass


async def _plugin(**config):
    plugin = Protections()
    plugin.name = "protections"
    plugin.config = Protections.Config(**config)
    plugin.log = logging.getLogger("test.protections")
    plugin.metrics = SimpleNamespace(counter=lambda *a, **k: _Counter())
    resolved = []

    async def resolve_room(ref):
        resolved.append(ref)
        raise MatrixError("M_NOT_FOUND: no such alias", "M_NOT_FOUND")

    plugin.bot = SimpleNamespace(
        cases=CaseRegistry(), invites=InviteGuards(), user_id="@bot:x", admins=("@admin:x",),
        is_admin=lambda u: u == "@admin:x", resolve_room=resolve_room, joined_rooms=lambda: set(),
        members=lambda room_id: [],
    )
    await plugin.start()
    recorded, told = [], []

    async def record(protection, room_id, subject, fact, actions):
        recorded.append((protection, room_id, subject, fact, [(a.action, a.dry_run) for a in actions]))

    async def tell(text):
        told.append(text)

    plugin._record, plugin._tell_moderators = record, tell
    return plugin, resolved, recorded, told


async def test_invite_spam_to_the_bot_is_refused_past_the_limit_and_opens_a_case():
    plugin, _, recorded, _ = await _plugin(bot_invites=BotInvites(max_invites=2, window=60))
    assert len(plugin.bot.invites) == 1  # registered at start
    answers = [await plugin.check_invite(f"!r{i}:x", "@spam:x", True) for i in range(4)]
    assert answers[:2] == [None, None] and all("invite spam" in a for a in answers[2:])
    assert [r[:3] for r in recorded] == [("bot_invites", BOT_INVITES, "@spam:x")] * 2
    assert "3 invites to the bot" in recorded[0][3] and "!r2:x" in recorded[0][3]
    # Others are counted apart; the admins and the bot are never refused.
    assert await plugin.check_invite("!a:x", "@other:x", True) is None
    assert all([await plugin.check_invite(f"!b{i}:x", "@admin:x", True) is None for i in range(5)])
    await plugin.stop()
    assert len(plugin.bot.invites) == 0


async def test_dry_run_only_opens_the_case():
    plugin, _, recorded, _ = await _plugin(dry_run=True, bot_invites=BotInvites(max_invites=1, window=60))
    assert [await plugin.check_invite(f"!r{i}:x", "@spam:x", False) for i in range(2)] == [None, None]
    assert recorded[0][4] == [("refuse invite", True)] and "not in invites.accept_from" in recorded[0][3]


async def test_rooms_banned_by_a_room_rule_are_refused_and_reported():
    plugin, _, _, told = await _plugin()
    plugin._policies.apply("!list:x", {"type": "m.policy.rule.room", "state_key": "r", "content": {
        "entity": "!bad:x", "recommendation": "m.ban", "reason": "raids"}})
    assert "banned by policy list" in await plugin.check_invite("!bad:x", "@admin2:x", True)
    assert await plugin.check_invite("!good:x", "@someone:x", True) is None
    assert "!bad:x" in told[0] and "raids" in told[0]


async def test_an_unresolvable_moderation_room_is_not_looked_up_on_every_message():
    plugin, resolved, _, _ = await _plugin(moderation_room="#mods:x")
    for _ in range(5):
        assert await plugin._moderation_room() is None
    assert resolved == ["#mods:x"]  # backing off
    plugin._mod_room_retry_at = 0.0  # the back-off has passed
    assert await plugin._moderation_room() is None
    assert len(resolved) == 2 and plugin._mod_room_backoff == 10.0  # and it doubles


async def test_a_policy_ban_that_failed_is_retried_periodically_without_a_rule_change():
    from plugins.protections.cases import Action

    plugin, _, recorded, _ = await _plugin(protected_rooms=["!room:x"])
    banned = set()

    class Storage:
        async def fetchone(self, sql, args):
            return (1,) if "policy_ban" in sql and (args[0], args[1]) in banned else None

        async def execute(self, sql, args=()):
            if sql.startswith("INSERT INTO policy_ban"):
                banned.add((args[0], args[1]))

    plugin.storage = Storage()
    plugin._protected = {"!room:x"}
    power = {"ok": False}

    async def act(name, protection, room_id, user_id, event_id, reason=None):
        if power["ok"]:
            return Action(name, room_id, ok=True)
        return Action(name, room_id, ok=False, detail="missing power: ban needs 50")

    plugin._act = act
    change = plugin._policies.apply("!list:x", {"type": "m.policy.rule.user", "state_key": "r", "content": {
        "entity": "@mallory:x", "recommendation": "m.ban"}})
    await plugin._policy_change(change)
    assert plugin._unapplied and len(recorded) == 1 and recorded[0][4] == [("ban", False)]
    await plugin.retry_policies()  # still no power: retried, and the case is not updated again
    assert len(recorded) == 1 and plugin._unapplied
    power["ok"] = True
    await plugin.retry_policies()  # the power came (no event needed): applied, the case says it was a retry
    assert not plugin._unapplied and banned == {("!room:x", "@mallory:x")}
    assert len(recorded) == 2 and "(retried)" in recorded[1][3]
    # A rule removed meanwhile is not retried.
    power["ok"] = False
    change = plugin._policies.apply("!list:x", {"type": "m.policy.rule.user", "state_key": "r2", "content": {
        "entity": "@eve:x", "recommendation": "m.ban"}})
    await plugin._policy_change(change)
    plugin._policies.apply("!list:x", {"type": "m.policy.rule.user", "state_key": "r2", "content": {}})
    await plugin.retry_policies()
    assert not plugin._unapplied


async def test_a_room_rule_naming_a_room_the_bot_is_in_is_reported_once_and_the_bot_stays():
    plugin, _, _, told = await _plugin()
    plugin.bot.joined_rooms = lambda: {"!bad:x", "!fine:x"}
    for reason in ("raids", "raids again"):  # the rule replaced: still one report for that room
        change = plugin._policies.apply("!list:x", {"type": "m.policy.rule.room", "state_key": "r", "content": {
            "entity": "!bad:x", "recommendation": "m.ban", "reason": reason}})
        await plugin._policy_change(change)
    assert len(told) == 1 and "bans room !bad:x, which the bot is in" in told[0] and "The bot stays" in told[0]
