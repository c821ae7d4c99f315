"""Abuse reports with consent: ``!report [reason]`` as a reply to a message (or a 🚩 reaction).

The bot is a member of the room and holds its keys, so it can forward what was really said, but only after the
reporter has seen, in a private encrypted DM, exactly what will be shared, with whom and for how long, and said yes.
Moderators get one case per reported event in their (encrypted) moderation room, with a signed evidence bundle that
``ratchet verify-report`` checks, and act on it with ``!case ID redact|kick|ban|dismiss``. See docs/reporting.md.

Privacy: nothing about a report is logged at INFO or above beyond its id; decrypted text is stored only in a case the
reporter consented to, and deleted after ``retention_days`` or when withdrawn before moderators acted: every message
the bot posted about it in Matrix (the case message and its edits, the evidence file, the DM prompt at retention) is
redacted then too. Only events the reporter could see may be reported or quoted as context
(``self.bot.moderation.could_see``: membership and history visibility at each event). Consent answers, withdrawals
and moderators' actions need a sender device the trust policy trusts (``ctx.trusted``). Evidence is posted only to an
encrypted moderation room.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Literal

from bot import Context, MatrixError, Plugin, Rest, command, every, on_event, on_message

from .cases import (
    Answer,
    Case,
    Draft,
    DraftState,
    RateLimiter,
    Rendered,
    answer,
    case_message,
    consent_prompt,
    new_case_id,
    parse_answer,
)

_ANSWER_PATTERN = r"(?i)^\s*(yes|y|no|n|send|cancel|context|mods|yes\s+mods|yes\s+moderators)\s*[.!]?\s*$"
BAN_CONFIRM_SECONDS = 300


class Report(Plugin):
    """Consent-first abuse reports that moderators can verify."""

    @dataclass(frozen=True)
    class Config:
        #: The encrypted room (id or alias) where moderators receive cases; "" for homeserver reports only.
        moderation_room: str = ""
        #: Also report the event to the homeserver's admins (POST /rooms/{roomId}/report/{eventId}).
        send_to_homeserver: bool = True
        #: Reacting with this to a message starts a report (without a reason).
        reaction: str = "🚩"
        #: Minutes the reporter has to answer the consent prompt; then nothing is sent.
        prompt_expiry_minutes: float = 15.0
        #: How many messages before the reported one may be offered as context (opt-in); 0 to never offer.
        context_messages: int = 3
        #: Days a case and its evidence are kept.
        retention_days: int = 30
        #: Reports one person may start per hour.
        max_reports_per_hour: int = 10
        #: Keep the reporter's identity from the moderators.
        anonymous: bool = True
        #: Acknowledge briefly in the reported room (without details); false: only the DM.
        ack_in_room: bool = True
        #: Seconds between sweeps for expired prompts and cases past retention.
        sweep_interval: float = 30.0

        def __post_init__(self) -> None:
            if self.moderation_room and not re.match(r"^[!#].+", self.moderation_room):
                raise ValueError("moderation_room must be a room id (!...) or alias (#...)")
            if not self.moderation_room and not self.send_to_homeserver:
                raise ValueError("reports need a destination: set moderation_room or send_to_homeserver")
            if self.prompt_expiry_minutes <= 0:
                raise ValueError("prompt_expiry_minutes must be positive")
            if not 0 <= self.context_messages <= 20:
                raise ValueError("context_messages must be between 0 and 20")
            if self.retention_days < 1:
                raise ValueError("retention_days must be at least 1")
            if self.max_reports_per_hour < 1:
                raise ValueError("max_reports_per_hour must be at least 1")

    migrations = (
        """
        CREATE TABLE draft (
            draft_id TEXT PRIMARY KEY, reporter TEXT NOT NULL, room_id TEXT NOT NULL, event_id TEXT NOT NULL,
            sender TEXT NOT NULL, reason TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
            context_offered INTEGER NOT NULL, context_included INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL, dm_room TEXT NOT NULL, prompt_event TEXT
        );
        CREATE TABLE report_case (
            case_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, event_id TEXT NOT NULL UNIQUE, sender TEXT NOT NULL,
            status TEXT NOT NULL, created REAL NOT NULL, closed REAL, mod_event TEXT, case_json TEXT NOT NULL,
            evidence TEXT NOT NULL, acted INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE case_reporter (
            case_id TEXT NOT NULL, reporter TEXT NOT NULL, reason TEXT NOT NULL, created REAL NOT NULL,
            PRIMARY KEY (case_id, reporter)
        );
        CREATE TABLE pending_ban (case_id TEXT PRIMARY KEY, moderator TEXT NOT NULL, reason TEXT, expires REAL);
        """,
        # Every event the bot posted about a case or a draft, so withdrawal and retention can redact them all
        # (the case message, each of its edits, the evidence file; the DM prompt and its edits). Rows are removed
        # once the redaction went through; what is left is retried by the sweep. They are redacted newest first, by
        # SQLite's implicit rowid; PostgreSQL has none, so its table gets a ``rowid`` identity column (the SQLite
        # text is the released one, unchanged; the PostgreSQL one is native SQL with the types the portable
        # subset would give).
        {
            "sqlite": """
        CREATE TABLE posted (
            room_id TEXT NOT NULL, event_id TEXT NOT NULL, kind TEXT NOT NULL, owner TEXT NOT NULL,
            PRIMARY KEY (room_id, event_id)
        );
        CREATE INDEX posted_owner ON posted (kind, owner);
        ALTER TABLE case_reporter ADD COLUMN homeserver INTEGER NOT NULL DEFAULT 0;
        """,
            "postgresql": """
        CREATE TABLE posted (
            room_id TEXT COLLATE "C" NOT NULL, event_id TEXT COLLATE "C" NOT NULL, kind TEXT COLLATE "C" NOT NULL,
            owner TEXT COLLATE "C" NOT NULL, rowid BIGINT GENERATED ALWAYS AS IDENTITY,
            PRIMARY KEY (room_id, event_id)
        );
        CREATE INDEX posted_owner ON posted (kind, owner);
        ALTER TABLE case_reporter ADD COLUMN homeserver BIGINT NOT NULL DEFAULT 0;
        """,
        },
    )

    async def start(self) -> None:
        self.limiter = RateLimiter(self.config.max_reports_per_hour)
        self._mod_room: str | None = None
        #: Reports by outcome (refused, prompted, cancelled, sent, withdrawn, expired, and the moderators' actions),
        #: served at /metrics as ratchet_report_reports_total{outcome=...}.
        self._outcomes = self.metrics.counter("reports", "Abuse reports by outcome.", ["outcome"])

    # -- starting a report -----------------------------------------------------------------------------------

    @command("report", help="Reply to a message with !report [reason]; also: !report status|withdraw ID")
    async def report(self, ctx: Context, text: Rest | None = None) -> None:
        words = (text or "").split()
        if len(words) == 2 and words[0].lower() in ("status", "withdraw"):
            await (self._status if words[0].lower() == "status" else self._withdraw)(ctx, words[1].upper())
            return
        target = ctx.replied_to
        if target is None:
            await ctx.reply(
                "To report a message, reply to it with `!report [reason]` (or react to it with "
                f"{self.config.reaction}). In our DM: `!report status ID`, `!report withdraw ID`.",
                notice=True,
                markdown=True,
            )
            return
        await self._start(ctx, ctx.room_id, target, (text or "").strip(), ack_in=ctx)

    @on_event("m.reaction")
    async def reacted(self, ctx: Context) -> None:
        relates = ctx.content.get("m.relates_to") or {}
        key, target = relates.get("key"), relates.get("event_id")
        if not isinstance(target, str):
            return
        if key == self.config.reaction:
            await self._start(ctx, ctx.room_id, target, "", ack_in=None)
            return
        reply = parse_answer(str(key or ""))
        if reply in (Answer.YES, Answer.NO):
            row = await self.storage.fetchone(
                "SELECT draft_id FROM draft WHERE prompt_event = ? AND reporter = ? AND state = 'prompted'",
                (target, ctx.sender),
            )
            if row:
                await self._answer(ctx, row[0], reply)

    async def _start(self, ctx: Context, room_id: str, event_id: str, reason: str, ack_in: Context | None) -> None:
        reporter = ctx.sender
        moderation = self.bot.moderation
        if not moderation.is_member(room_id, reporter):
            return  # only members of the room may report its events
        duplicate = await self.storage.fetchone(
            "SELECT 1 FROM draft WHERE reporter = ? AND event_id = ? AND state IN ('prompted', 'consented') "
            "UNION SELECT 1 FROM case_reporter r JOIN report_case c USING (case_id) "
            "WHERE r.reporter = ? AND c.event_id = ?",
            (reporter, event_id, reporter, event_id),
        )
        if duplicate:
            await self.bot.send_dm(reporter, "You have already reported that message; thank you.", notice=True)
            return
        if not self.limiter.allow(reporter, time.time()):
            await self.bot.send_dm(
                reporter,
                f"You have reached the limit of {self.config.max_reports_per_hour} reports per hour; "
                "please try again later.",
                notice=True,
            )
            return
        if not await self._moderation_room_safe():
            await self.bot.send_dm(
                reporter,
                "I cannot take reports right now: the moderators' room is not encrypted, and I do not post reported "
                "messages where the homeserver could read them. Nothing was sent; the bot's operators are told.",
                notice=True,
            )
            return
        # Whether the reporter could see the event is decided before anything is decrypted.
        try:
            visible = await moderation.could_see(room_id, event_id, reporter)
        except MatrixError as exc:
            self.log.warning("report: cannot read the reported event (%s)", exc.errcode)
            await self.bot.send_dm(reporter, "I cannot read that message, so I cannot report it.", notice=True)
            return
        if not visible:
            self.log.info("report refused: the reporter could not see the reported event")
            self._outcomes.labels("refused").inc()
            await self.bot.send_dm(
                reporter,
                "I cannot report that message for you: it was sent when you could not see it (before you joined the "
                "room, or while you were not a member), so I will not show or forward it. Nothing was sent.",
                notice=True,
            )
            return
        try:
            record = await moderation.event_record(room_id, event_id)
        except MatrixError as exc:
            self.log.warning("report: cannot read the reported event (%s)", exc.errcode)
            await self.bot.send_dm(reporter, "I cannot read that message, so I cannot report it.", notice=True)
            return
        if record.sender == self.bot.user_id:
            return
        context = await moderation.records_before(room_id, event_id, self.config.context_messages, seen_by=reporter)
        now = time.time()
        draft = Draft(
            draft_id=new_case_id(),
            reporter=reporter,
            room_id=room_id,
            event_id=event_id,
            sender=record.sender,
            text=record.body,
            reason=reason,
            created=now,
            expires=now + self.config.prompt_expiry_minutes * 60,
            context_offered=len(context),
        )
        dm_room = await self.bot.dm(reporter)
        # The draft row first: what is posted for an owner that does not exist is redacted by the sweep.
        await self.storage.execute(
            "INSERT INTO draft (draft_id, reporter, room_id, event_id, sender, reason, created, expires, "
            "context_offered, state, dm_room) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'prompted', ?)",
            (draft.draft_id, reporter, room_id, event_id, record.sender, reason, now, draft.expires,
             draft.context_offered, dm_room),
        )
        prompt = await self._send(dm_room, self._prompt(draft, context), "draft", draft.draft_id)
        await self.storage.execute("UPDATE draft SET prompt_event = ? WHERE draft_id = ?", (prompt, draft.draft_id))
        self.log.info("report %s: consent prompt sent", draft.draft_id)
        self._outcomes.labels("prompted").inc()
        if ack_in is not None and self.config.ack_in_room:
            await ack_in.reply("Thanks. I have sent you a private message about your report.", notice=True)

    def _prompt(self, draft: Draft, context) -> Rendered:
        return consent_prompt(
            draft,
            room_name=draft.room_id,
            to_moderators=bool(self.config.moderation_room),
            to_homeserver=self.config.send_to_homeserver,
            anonymous=self.config.anonymous,
            retention_days=self.config.retention_days,
            homeserver_name=self.bot.user_id.partition(":")[2] or "the bot's homeserver",
            context_preview=[(r.sender, r.body) for r in context],
        )

    # -- what the bot posts, and taking it back -------------------------------------------------------------

    async def _send(self, room_id: str, message: Rendered, kind: str, owner: str) -> str:
        """Send ``message`` (its untrusted parts are inert HTML) and remember it for redaction."""
        event_id = await self.bot.send_text(room_id, message.body, html=message.html)
        await self._remember(room_id, event_id, kind, owner)
        return event_id

    async def _edit(self, room_id: str, event_id: str, message: Rendered, kind: str, owner: str) -> str:
        edit_id = await self.bot.edit(room_id, event_id, message.body, html=message.html)
        await self._remember(room_id, edit_id, kind, owner)
        return edit_id

    async def _remember(self, room_id: str, event_id: str, kind: str, owner: str) -> None:
        await self.storage.execute(
            "INSERT INTO posted (room_id, event_id, kind, owner) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (room_id, event_id, kind, owner),
        )

    async def _redact_posted(self, kind: str, owner: str, reason: str) -> int:
        """Redact every event posted for ``owner`` (edits first, the original last); returns how many failed (they
        stay listed and the sweep retries them)."""
        rows = await self.storage.fetchall(
            "SELECT room_id, event_id FROM posted WHERE kind = ? AND owner = ? ORDER BY rowid DESC", (kind, owner)
        )
        failed = 0
        for room_id, event_id in rows:
            try:
                await self.bot.redact(room_id, event_id, reason)
            except MatrixError as exc:
                failed += 1
                self.log.warning("%s %s: redacting one of its messages failed (%s)", kind, owner, exc.errcode)
                continue
            await self.storage.execute("DELETE FROM posted WHERE room_id = ? AND event_id = ?", (room_id, event_id))
        return failed

    async def _remember_case_message(self, case_id: str, mod_event: str | None) -> None:
        """Cases opened before the ``posted`` table existed: their case message at least is redacted."""
        mod_room = await self._moderation_room()
        if mod_room and mod_event:
            await self._remember(mod_room, mod_event, "case", case_id)

    async def _moderation_room_safe(self) -> bool:
        """False (and logged at ERROR) if a moderation room is configured and it is not encrypted."""
        mod_room = await self._moderation_room()
        if mod_room is None or self.bot.room_encrypted(mod_room):
            return True
        self.log.error(
            "the moderation room %s is not encrypted: reports are refused until it is (reported text and evidence "
            "are never posted in the clear)", mod_room,
        )
        return False

    # -- the reporter's answer -------------------------------------------------------------------------------

    async def _refuse_untrusted(self, ctx: Context, what: str, subject: str) -> bool:
        """True (after answering and logging) if ``ctx`` comes from a device the trust policy does not trust."""
        if ctx.trusted:
            return False
        self.log.warning("%s: %s refused: sent from a device the trust policy does not trust", subject, what)
        await ctx.reply(
            f"I did not accept this {what}: it came from a device I do not trust (a new login that is not verified, "
            "or a message that was not encrypted). Send it again from one of your verified sessions.",
            notice=True,
        )
        return True

    @on_message(_ANSWER_PATTERN)
    async def answered(self, ctx: Context, match: re.Match[str]) -> None:
        reply = parse_answer(match.group(1))
        row = await self.storage.fetchone(
            "SELECT draft_id FROM draft WHERE dm_room = ? AND reporter = ? AND state = 'prompted' "
            "ORDER BY created DESC LIMIT 1",
            (ctx.room_id, ctx.sender),
        )
        if row and reply is not None:
            await self._answer(ctx, row[0], reply)

    async def _load_draft(self, draft_id: str) -> tuple[Draft, str, str | None] | None:
        row = await self.storage.fetchone(
            "SELECT reporter, room_id, event_id, sender, reason, created, expires, context_offered, "
            "context_included, state, dm_room, prompt_event FROM draft WHERE draft_id = ?",
            (draft_id,),
        )
        if row is None:
            return None
        draft = Draft(draft_id, row[0], row[1], row[2], row[3], "", row[4], row[5], row[6], row[7], bool(row[8]),
                      DraftState(row[9]))
        return draft, row[10], row[11]

    async def _answer(self, ctx: Context, draft_id: str, reply: Answer) -> None:
        if await self._refuse_untrusted(ctx, "answer to your report", f"report {draft_id}"):
            return
        loaded = await self._load_draft(draft_id)
        if loaded is None:
            return
        draft, dm_room, prompt_event = loaded
        new = answer(
            draft, reply, time.time(), homeserver_destination=self.config.send_to_homeserver,
            moderator_destination=bool(self.config.moderation_room),
        )
        if reply is Answer.YES_MODS and new.open and not self.config.moderation_room:
            await self.bot.send_text(dm_room, "There is no moderation room: answer yes or no.", notice=True)
            return
        await self.storage.execute(
            "UPDATE draft SET state = ?, context_included = ? WHERE draft_id = ?",
            (new.state.value, int(new.context_included), draft_id),
        )
        if new.state is DraftState.EXPIRED:
            await self.bot.send_text(dm_room, f"Report {draft_id} expired; nothing was sent.", notice=True)
        elif new.state is DraftState.CANCELLED:
            await self.bot.send_text(dm_room, f"Report {draft_id} cancelled; nothing was sent.", notice=True)
            self.log.info("report %s: cancelled", draft_id)
            self._outcomes.labels("cancelled").inc()
        elif new.state is DraftState.PROMPTED and reply is Answer.CONTEXT and prompt_event:
            context = await self.bot.moderation.records_before(
                draft.room_id, draft.event_id, draft.context_offered, seen_by=draft.reporter
            )
            record = await self.bot.moderation.event_record(draft.room_id, draft.event_id)
            shown = Draft(**{**new.__dict__, "text": record.body})
            await self._edit(dm_room, prompt_event, self._prompt(shown, context), "draft", draft_id)
            state = "included" if new.context_included else "not included"
            await self.bot.send_text(dm_room, f"Context {state}. Answer yes to send.", notice=True)
        elif new.state is DraftState.CONSENTED:
            await self._send_report(new, dm_room)

    async def _send_report(self, draft: Draft, dm_room: str) -> None:
        moderation = self.bot.moderation
        if not await self._moderation_room_safe():
            await self.storage.execute("UPDATE draft SET state = 'cancelled' WHERE draft_id = ?", (draft.draft_id,))
            await self.bot.send_text(
                dm_room,
                f"Report {draft.draft_id} was not sent: the moderators' room is not encrypted, and I do not post "
                "reported messages where the homeserver could read them. Nothing was sent.",
                notice=True,
            )
            return
        record = await moderation.event_record(draft.room_id, draft.event_id)
        context = []
        if draft.context_included:
            context = await moderation.records_before(
                draft.room_id, draft.event_id, draft.context_offered, seen_by=draft.reporter
            )
        existing = await self.storage.fetchone(
            "SELECT case_id, case_json FROM report_case WHERE event_id = ?", (draft.event_id,)
        )
        reporter_label = "anonymous" if self.config.anonymous else draft.reporter
        if existing:
            case = _case_from_json(existing[1])
            case.reporters.append(reporter_label)
            case.reasons.append(draft.reason)
        else:
            device = record.sender_device or {}
            case = Case(
                case_id=draft.draft_id,
                room_id=draft.room_id,
                event_id=draft.event_id,
                sender=record.sender,
                sender_device=device.get("device_id"),
                cross_signed=device.get("cross_signed"),
                text=record.body,
                sent_at=record.timestamp,
                reasons=[draft.reason],
                reporters=[reporter_label],
                context=[(r.sender, r.body) for r in context],
            )
        mod_room = await self._moderation_room()
        if existing:
            row = await self.storage.fetchone("SELECT mod_event FROM report_case WHERE case_id = ?", (case.case_id,))
            mod_event = row[0] if row else None
            if mod_room and mod_event:
                await self._edit(mod_room, mod_event, case_message(case, room_name=case.room_id), "case", case.case_id)
            await self.storage.execute(
                "UPDATE report_case SET case_json = ? WHERE case_id = ?", (_case_to_json(case), case.case_id)
            )
        else:
            bundle = moderation.attest(record, context)
            # The case row first: what is posted for an owner that does not exist is redacted by the sweep.
            await self.storage.execute(
                "INSERT INTO report_case (case_id, room_id, event_id, sender, status, created, case_json, evidence) "
                "VALUES (?, ?, ?, ?, 'open', ?, ?, ?)",
                (case.case_id, case.room_id, case.event_id, case.sender, time.time(), _case_to_json(case),
                 json.dumps(bundle)),
            )
            mod_event = await self._post_case(mod_room, case, bundle)
            await self.storage.execute(
                "UPDATE report_case SET mod_event = ? WHERE case_id = ?", (mod_event, case.case_id)
            )
        await self.storage.execute(
            "INSERT INTO case_reporter (case_id, reporter, reason, created) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (case.case_id, draft.reporter, draft.reason, time.time()),
        )
        if self.config.send_to_homeserver and draft.homeserver_consent:
            # Only after "yes": "yes mods" sends nothing at all to the homeserver.
            reason = f"{draft.reason or 'reported through the room bot'} | reported text: {record.body}"
            try:
                await moderation.report_to_homeserver(draft.room_id, draft.event_id, reason)
            except MatrixError as exc:
                self.log.warning("report %s: homeserver report failed (%s)", case.case_id, exc.errcode)
            else:
                await self.storage.execute(
                    "UPDATE case_reporter SET homeserver = 1 WHERE case_id = ? AND reporter = ?",
                    (case.case_id, draft.reporter),
                )
        self.log.info("report %s: sent as case %s", draft.draft_id, case.case_id)
        self._outcomes.labels("sent").inc()
        await self.bot.send_text(
            dm_room,
            f"Sent. Your case id is **{case.case_id}**. `!report status {case.case_id}` shows where it stands; "
            f"`!report withdraw {case.case_id}` withdraws it.",
            notice=True,
            markdown=True,
        )

    async def _post_case(self, mod_room: str | None, case: Case, bundle: dict) -> str | None:
        """Post the case message and its evidence file (in its thread) to the moderation room; returns the message."""
        if not mod_room:
            return None
        mod_event = await self._send(mod_room, case_message(case, room_name=case.room_id), "case", case.case_id)
        evidence = await self.bot.send_bytes(
            mod_room, json.dumps(bundle, indent=1).encode(), name=f"evidence-{case.case_id}.json",
            mimetype="application/json", thread_root=mod_event,
        )
        await self._remember(mod_room, evidence, "case", case.case_id)
        return mod_event

    async def _moderation_room(self) -> str | None:
        if not self.config.moderation_room:
            return None
        if self._mod_room is None:
            self._mod_room = await self.bot.resolve_room(self.config.moderation_room)
        return self._mod_room

    # -- status and withdrawal -------------------------------------------------------------------------------

    async def _reporter_case(self, reporter: str, case_id: str):
        return await self.storage.fetchone(
            "SELECT c.status, c.acted, c.case_json, c.mod_event, c.evidence, r.homeserver FROM report_case c "
            "JOIN case_reporter r USING (case_id) WHERE c.case_id = ? AND r.reporter = ?",
            (case_id, reporter),
        )

    async def _status(self, ctx: Context, case_id: str) -> None:
        row = await self._reporter_case(ctx.sender, case_id)
        if row is None:
            await ctx.reply(f"You have no report {case_id}.", notice=True)
            return
        await ctx.reply(f"Report {case_id}: {row[0]}.", notice=True)

    async def _withdraw(self, ctx: Context, case_id: str) -> None:
        row = await self._reporter_case(ctx.sender, case_id)
        if row is None:
            await ctx.reply(f"You have no report {case_id}.", notice=True)
            return
        if await self._refuse_untrusted(ctx, "withdrawal", f"report {case_id}"):
            return
        status, acted, case_json, mod_event, evidence, to_homeserver = row
        if acted:
            await ctx.reply(f"Report {case_id} was already acted on ({status}); it cannot be withdrawn.", notice=True)
            return
        await self.storage.execute(
            "DELETE FROM case_reporter WHERE case_id = ? AND reporter = ?", (case_id, ctx.sender)
        )
        case = _case_from_json(case_json)
        await self.storage.execute(
            "UPDATE draft SET reason = '' WHERE reporter = ? AND event_id = ?", (ctx.sender, case.event_id)
        )
        remaining = await self.storage.fetchall("SELECT reason FROM case_reporter WHERE case_id = ?", (case_id,))
        await self._remember_case_message(case_id, mod_event)
        # Every version of the case message named this reporter's reason (and, unless anonymous, the reporter):
        # all of them are redacted, the evidence file too; if others reported it as well, the case is posted anew.
        failed = await self._redact_posted("case", case_id, "withdrawn by the reporter")
        if remaining:
            label = "anonymous" if self.config.anonymous else ctx.sender
            if label in case.reporters:
                case.reporters.remove(label)
            case.reasons = [reason for (reason,) in remaining]
            mod_event = await self._post_case(await self._moderation_room(), case, json.loads(evidence))
            await self.storage.execute(
                "UPDATE report_case SET case_json = ?, mod_event = ? WHERE case_id = ?",
                (_case_to_json(case), mod_event, case_id),
            )
            done = (
                f"Report {case_id} withdrawn: your reason and your report were removed from the case (its earlier "
                "messages in the moderation room were redacted). The case stays open because others reported the "
                "same message."
            )
        else:
            await self.storage.execute("DELETE FROM report_case WHERE case_id = ?", (case_id,))
            await self.storage.execute("DELETE FROM pending_ban WHERE case_id = ?", (case_id,))
            done = (
                f"Report {case_id} withdrawn: the case message (with its edits) and the evidence file were redacted "
                "from the moderation room, and the bot deleted its copy."
            )
        if failed:
            done += f" {failed} of those messages could not be redacted yet; I keep trying."
        if to_homeserver:
            done += (
                " The report already filed with the administrators of the bot's homeserver cannot be withdrawn: "
                "Matrix offers no way to take it back."
            )
        self.log.info("report %s: withdrawn", case_id)
        self._outcomes.labels("withdrawn").inc()
        await ctx.reply(done, notice=True)

    # -- moderators ------------------------------------------------------------------------------------------

    @command("case", help="Moderators: !case ID redact|kick|ban|dismiss|undo [reason]")
    async def case(
        self,
        ctx: Context,
        case_id: str,
        action: Literal["redact", "kick", "ban", "dismiss", "confirm", "status", "undo"],
        reason: Rest | None = None,
    ) -> None:
        owner = self.bot.cases.owner(case_id)
        if owner is not None and owner.plugin != self.name:
            # One list of cases: another plugin's case (protections: P-...) goes to its owner, which checks who asks.
            await owner.act(ctx, case_id.upper(), action, reason)
            return
        mod_room = await self._moderation_room()
        if mod_room is None or ctx.room_id != mod_room:
            return  # only in the moderation room
        if ctx.power_level < 50 and not ctx.is_admin:
            await ctx.reply("Only moderators (power level 50 here) can act on cases.", notice=True)
            return
        case_id = case_id.upper()
        if action != "status" and await self._refuse_untrusted(ctx, f"!case {action}", f"case {case_id}"):
            return
        row = await self.storage.fetchone(
            "SELECT room_id, event_id, sender, status, case_json FROM report_case WHERE case_id = ?", (case_id,)
        )
        if row is None:
            await ctx.reply(f"No case {case_id}.", notice=True)
            return
        room_id, event_id, sender, status, _ = row
        if action == "status":
            await ctx.reply(f"Case {case_id}: {status}.", notice=True)
            return
        if action == "undo":
            await ctx.reply(f"Case {case_id} is a report: there is nothing the bot did to undo.", notice=True)
            return
        if status != "open" and action != "confirm":
            await ctx.reply(f"Case {case_id} is already {status}.", notice=True)
            return
        if action == "ban":
            await self.storage.execute(
                "INSERT INTO pending_ban (case_id, moderator, reason, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (case_id) DO UPDATE SET moderator = excluded.moderator, reason = excluded.reason, "
                "expires = excluded.expires",
                (case_id, ctx.sender, reason, time.time() + BAN_CONFIRM_SECONDS),
            )
            await ctx.reply(
                f"Ban {sender} from the room? Confirm with `!case {case_id} confirm` within 5 minutes.",
                notice=True,
                markdown=True,
            )
            return
        if action == "confirm":
            pending = await self.storage.fetchone(
                "SELECT moderator, reason, expires FROM pending_ban WHERE case_id = ?", (case_id,)
            )
            await self.storage.execute("DELETE FROM pending_ban WHERE case_id = ?", (case_id,))
            if pending is None or pending[2] < time.time():
                await ctx.reply(f"Nothing to confirm for case {case_id}.", notice=True)
                return
            action, reason = "ban", reason or pending[1]
        needed = {"redact": "redact", "kick": "kick", "ban": "ban"}.get(action)
        moderation = self.bot.moderation
        if needed and not moderation.can(room_id, needed):
            await ctx.reply(
                f"I cannot {action} in that room: it needs power level {moderation.required_level(room_id, needed)} "
                "and I do not have it.",
                notice=True,
            )
            return
        try:
            if action == "redact":
                await self.bot.redact(room_id, event_id, reason)
            elif action == "kick":
                await moderation.kick(room_id, sender, reason)
            elif action == "ban":
                await moderation.ban(room_id, sender, reason)
        except MatrixError as exc:
            await ctx.reply(f"{action} failed: {exc}", notice=True)
            return
        outcome = {"redact": "redacted", "kick": "kicked", "ban": "banned", "dismiss": "dismissed"}[action]
        await self.storage.execute(
            "UPDATE report_case SET status = ?, acted = 1, closed = ? WHERE case_id = ?",
            (outcome, time.time(), case_id),
        )
        self.log.info("case %s: %s", case_id, outcome)
        self._outcomes.labels(outcome).inc()
        await ctx.reply(f"Case {case_id}: {outcome}.", notice=True)
        outcome_text = {
            "redacted": "the message was removed",
            "kicked": "the sender was removed from the room",
            "banned": "the sender was banned from the room",
            "dismissed": "the moderators took no action",
        }[outcome]
        reporters = await self.storage.fetchall("SELECT reporter FROM case_reporter WHERE case_id = ?", (case_id,))
        for (reporter,) in reporters:
            await self.bot.send_dm(reporter, f"Your report {case_id} was closed: {outcome_text}.", notice=True)

    # -- housekeeping ----------------------------------------------------------------------------------------

    @every("sweep_interval")
    async def sweep(self) -> None:
        now = time.time()
        rows = await self.storage.fetchall(
            "SELECT draft_id, dm_room, expires FROM draft WHERE state = 'prompted' AND expires <= ?", (now,)
        )
        for draft_id, dm_room, _ in rows:
            await self.storage.execute("UPDATE draft SET state = 'expired' WHERE draft_id = ?", (draft_id,))
            await self.bot.send_text(dm_room, f"Report {draft_id} expired; nothing was sent.", notice=True)
            self.log.info("report %s: expired", draft_id)
            self._outcomes.labels("expired").inc()
        cutoff = now - self.config.retention_days * 86400
        old = await self.storage.fetchall("SELECT case_id, mod_event FROM report_case WHERE created < ?", (cutoff,))
        for case_id, mod_event in old:
            await self._remember_case_message(case_id, mod_event)
            # The bot's copy goes at once; what it posted in Matrix is redacted now or, if that fails, retried below.
            await self.storage.execute("DELETE FROM case_reporter WHERE case_id = ?", (case_id,))
            await self.storage.execute("DELETE FROM pending_ban WHERE case_id = ?", (case_id,))
            await self.storage.execute("DELETE FROM report_case WHERE case_id = ?", (case_id,))
            await self._redact_posted("case", case_id, "retention period over")
            self.log.info("case %s: deleted after the retention period", case_id)
        old_drafts = await self.storage.fetchall(
            "SELECT draft_id FROM draft WHERE state != 'prompted' AND created < ?", (cutoff,)
        )
        for (draft_id,) in old_drafts:
            await self.storage.execute("DELETE FROM draft WHERE draft_id = ?", (draft_id,))
            await self._redact_posted("draft", draft_id, "retention period over")
        # Redactions that failed before (the homeserver was down...) of cases and drafts that no longer exist.
        leftovers = await self.storage.fetchall(
            "SELECT DISTINCT kind, owner FROM posted WHERE (kind = 'case' AND owner NOT IN "
            "(SELECT case_id FROM report_case)) OR (kind = 'draft' AND owner NOT IN (SELECT draft_id FROM draft))"
        )
        for kind, owner in leftovers:
            await self._redact_posted(kind, owner, "retention period over or withdrawn")


def _case_to_json(case: Case) -> str:
    return json.dumps(case.__dict__)


def _case_from_json(text: str) -> Case:
    data = json.loads(text)
    data["context"] = [tuple(x) for x in data.get("context", [])]
    return Case(**data)
