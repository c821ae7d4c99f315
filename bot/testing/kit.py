"""The test kit's main object: a real bot with the plugins under test, and members talking to it in rooms.

Used through the ``ratchet`` pytest fixture::

    async def test_hello(ratchet):
        room = await ratchet.room(plugins={"hello": {}}, plugin_dirs=[Path(__file__).parent])
        reply = await room.ask("!hello")
        assert reply.body == "Hello!"

Everything is real: the homeserver is the session's Synapse, the bot is a full Ratchet runtime with its own device
and crypto store, and each member is a separate nio client that encrypts, decrypts and verifies what it sees. A room
can hold several members (``ratchet.room(members=[...])``, :meth:`TestRoom.add_member`); :meth:`TestRoom.as_member`
acts as any of them. :meth:`TestRoom.expect_no_reply` and :meth:`TestRoom.expect_silence` check that the bot did
*not* answer; :meth:`RatchetKit.storage` reads a running plugin's storage; :meth:`RatchetKit.start_bot` raises
:class:`BotStartError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nio import Event, MegolmEvent

from bot.storage.plugin_storage import BasePluginStorage
from bot.testing.harness import InProcessBot, write_bot_config
from bot.testing.member import Member
from bot.testing.synapse import RegisteredUser, SynapseServer

__all__ = ["BotStartError", "RatchetKit", "TestRoom"]


class BotStartError(RuntimeError):
    """:meth:`RatchetKit.start_bot` (or the first :meth:`RatchetKit.room`) could not start the bot as asked.

    Either plugins failed to load (their config was refused, their import or ``start()`` raised, a command name was
    taken): :attr:`errors` maps each such plugin to its error, and the message lists them all; the bot is stopped
    again. Or the bot itself did not start (a core config error, the homeserver refusing the login): :attr:`errors`
    is empty and the original exception is the ``__cause__``.
    """

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        #: Plugin name -> why it did not load.
        self.errors: dict[str, str] = dict(errors or {})


def _relation(event: Event) -> dict[str, Any]:
    rel = event.source.get("content", {}).get("m.relates_to")
    return rel if isinstance(rel, dict) else {}


def _relates_to(event: Event, event_id: str) -> bool:
    """Whether ``event`` answers ``event_id``: a (rich or thread) reply to it, a reaction to it, an edit of it."""
    rel = _relation(event)
    in_reply_to = rel.get("m.in_reply_to")
    return rel.get("event_id") == event_id or (
        isinstance(in_reply_to, dict) and in_reply_to.get("event_id") == event_id
    )


def _describe(event: Event) -> str:
    kind = event.source.get("type", type(event).__name__)
    if isinstance(event, MegolmEvent):
        return f"{event.event_id} (undecryptable {kind})"
    content = event.source.get("content", {})
    if kind == "m.reaction":
        return f"{event.event_id} (reaction {_relation(event).get('key')!r})"
    return f"{event.event_id} ({kind}: {str(content.get('body', ''))[:200]!r})"


def _strip_fallback(body: str) -> str:
    lines = body.split("\n")
    while lines and lines[0].startswith(">"):
        lines.pop(0)
    if lines and lines[0] == "":
        lines.pop(0)
    return "\n".join(lines)


class TestRoom:
    """A room with the bot in it, seen from one member's side (``member``: the creator, or whoever
    :meth:`as_member` names).

    Every method acts as that member; views of the same room (:meth:`as_member`, :meth:`add_member`) share the list
    of members. Messages are encrypted when the room is; the bot's answers come back decrypted.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        room_id: str,
        member: Member,
        bot_user_id: str,
        *,
        kit: RatchetKit | None = None,
        members: list[Member] | None = None,
    ) -> None:
        self.room_id = room_id
        self.member = member
        self.bot_user_id = bot_user_id
        self._kit = kit
        #: The kit's members joined to this room (shared by every view of it), the creator first.
        self.members: list[Member] = members if members is not None else [member]

    # -- sending -----------------------------------------------------------------------------------------------

    async def send(self, text: str, **kwargs: Any) -> str:
        """Send a message as the member (encrypted if the room is); returns its event id.

        Keyword arguments are :meth:`Member.send`'s: ``reply_to=`` (a bare ``m.in_reply_to``, no fallback),
        ``thread_root=``, ``content=`` (the whole content, ``text`` ignored), ``event_type=``.
        """
        return await self.member.send(self.room_id, text, **kwargs)

    async def ask(self, text: str, *, timeout: float = 30, **kwargs: Any) -> Event:
        """Send ``text`` and return the bot's reply to it (decrypted)."""
        event_id = await self.send(text, **kwargs)
        return await self.expect_reply(event_id, timeout=timeout)

    async def react(self, event_id: str, key: str) -> str:
        """React to ``event_id`` with ``key`` (an ``m.annotation``, as clients send it); returns the reaction's id."""
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self.send("", content=content, event_type="m.reaction")

    async def edit(self, event_id: str, new_text: str) -> str:
        """Edit the member's message ``event_id`` to ``new_text`` (``m.replace`` with ``m.new_content``, the body
        prefixed with ``*`` as clients write it); returns the edit's event id."""
        content = {
            "msgtype": "m.text",
            "body": f"* {new_text}",
            "m.new_content": {"msgtype": "m.text", "body": new_text},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        }
        return await self.send("", content=content)

    async def reply(self, event_id: str, text: str, *, timeout: float = 30) -> str:
        """Send ``text`` as a rich reply to ``event_id`` *with* the quoted fallback legacy clients (Element before
        Matrix 1.13) wrote: ``> <@sender> original`` lines at the top of ``body`` and an ``<mx-reply>`` block at the
        top of ``formatted_body``. Handlers must ignore that quote; this is how a test shows they do.

        The member must have seen ``event_id`` (it waits up to ``timeout`` for it). Returns the reply's event id.
        """
        original: list[Event] = []

        def seen() -> bool:
            found = self.member.find_event(event_id)
            if found is not None:
                original.append(found)
            return found is not None

        await self.member.wait_for(seen, timeout, f"{event_id} to be seen by {self.member.user_id}")
        sender = original[0].sender
        quoted = _strip_fallback(str(original[0].source.get("content", {}).get("body", "")))
        lines = quoted.split("\n") or [""]
        fallback = "\n".join([f"> <{sender}> {lines[0]}", *(f"> {line}" for line in lines[1:])])
        link = f"https://matrix.to/#/{self.room_id}/{event_id}"
        formatted = (
            f'<mx-reply><blockquote><a href="{html.escape(link)}">In reply to</a> '
            f'<a href="https://matrix.to/#/{html.escape(sender)}">{html.escape(sender)}</a><br />'
            f"{html.escape(quoted).replace(chr(10), '<br />')}</blockquote></mx-reply>{html.escape(text)}"
        )
        content = {
            "msgtype": "m.text",
            "body": f"{fallback}\n\n{text}",
            "format": "org.matrix.custom.html",
            "formatted_body": formatted,
            "m.relates_to": {"m.in_reply_to": {"event_id": event_id}},
        }
        return await self.send("", content=content)

    async def mention(self, text: str, *users: Member | str) -> str:
        """Send ``text`` with each ``{}`` in it replaced by a pill for the next of ``users``, exactly as Element
        writes a mention picked from its completion list: the user's display name in ``body``, a link
        ``<a href="https://matrix.to/#/@id">Display Name</a>`` in ``formatted_body``, and the ids in
        ``m.mentions.user_ids``. Returns the event id.

        ``await room.mention("!karma reset {}", carol)`` sends the body ``!karma reset Carol Smith``. The display name
        is the one this member's client knows in the room (the user id if there is none).
        """
        ids = [u.user_id if isinstance(u, Member) else u for u in users]
        parts = text.split("{}")
        if len(parts) != len(ids) + 1:
            raise ValueError(f"{text!r} has {len(parts) - 1} '{{}}' for {len(ids)} user(s)")
        room = self.member.client.rooms.get(self.room_id)
        body, formatted = [parts[0]], [html.escape(parts[0])]
        for user_id, after in zip(ids, parts[1:], strict=True):
            user = room.users.get(user_id) if room is not None else None
            name = getattr(user, "display_name", None) or user_id
            body += [name, after]
            formatted += [
                f'<a href="https://matrix.to/#/{html.escape(user_id)}">{html.escape(name)}</a>', html.escape(after)
            ]
        content = {
            "msgtype": "m.text",
            "body": "".join(body),
            "format": "org.matrix.custom.html",
            "formatted_body": "".join(formatted),
            "m.mentions": {"user_ids": list(dict.fromkeys(ids))},
        }
        return await self.send("", content=content)

    async def send_file(
        self, data: bytes | str | Path, *, name: str | None = None, mimetype: str | None = None
    ) -> str:
        """Send a file as the member (``m.image`` for ``image/*``, else ``m.file``), encrypted in an encrypted room;
        ``data`` is bytes or a path. See :meth:`Member.send_file`. Returns the event id."""
        return await self.member.send_file(self.room_id, data, name=name, mimetype=mimetype)

    # -- the bot's answers -------------------------------------------------------------------------------------

    async def expect_reply(self, event_id: str, *, timeout: float = 30) -> Event:
        """Wait for the bot's rich reply to ``event_id``."""
        return await self.member.expect_reply(self.room_id, event_id, sender=self.bot_user_id, timeout=timeout)

    async def expect(
        self, predicate: Callable[[Event], bool] | None = None, *, body_startswith: str | None = None,
        timeout: float = 30,
    ) -> Event:
        """Wait for an event from the bot in this room matching ``predicate`` and/or starting with a text."""

        def match(room_id: str, event: Event) -> bool:
            if room_id != self.room_id or event.sender != self.bot_user_id:
                return False
            if body_startswith is not None and not str(getattr(event, "body", "")).startswith(body_startswith):
                return False
            return predicate(event) if predicate is not None else True

        return await self.member.expect(match, timeout, "a matching event from the bot")

    async def expect_reaction(self, event_id: str, *, key: str | None = None, timeout: float = 30) -> str:
        """Wait for the bot's reaction to ``event_id`` (with ``key``, if given); returns its key."""

        def match(event: Event) -> bool:
            rel = _relation(event)
            return (
                event.source.get("type") == "m.reaction"
                and rel.get("rel_type") == "m.annotation"
                and rel.get("event_id") == event_id
                and (key is None or rel.get("key") == key)
            )

        return str(_relation(await self.expect(match, timeout=timeout))["key"])

    def bot_reactions(self, event_id: str) -> list[str]:
        """The keys of the bot's reactions to ``event_id`` seen so far (:meth:`bot_messages` has no reactions)."""
        return [
            str(_relation(e).get("key"))
            for e in self._bot_events()
            if e.source.get("type") == "m.reaction" and _relation(e).get("event_id") == event_id
        ]

    async def expect_no_reply(self, event_id: str, *, within: float = 3) -> None:
        """Wait ``within`` seconds (always the full time), then fail if the bot answered ``event_id`` in any way:
        a reply, a thread reply, a reaction, anything relating to it (seen before the call too), or an event from the
        bot this member could not decrypt (it could be one). The AssertionError lists what arrived.

        A quicker proof that is just as sure: send a later message the bot does answer and wait for that answer; a
        room's events reach a plugin in order.
        """
        start = len(self.member.events)
        await asyncio.sleep(within)
        answers = [
            e
            for i, e in self._bot_events(with_index=True)
            if _relates_to(e, event_id) or (isinstance(e, MegolmEvent) and i >= start)
        ]
        if answers:
            raise AssertionError(
                f"the bot answered {event_id} within {within}s: " + "; ".join(_describe(e) for e in answers)
            )

    async def expect_silence(self, seconds: float = 3) -> None:
        """Wait ``seconds`` (always the full time), then fail if any event from the bot (a message, a reaction, an
        edit, a redaction; not state) arrived in this room meanwhile. The AssertionError lists them.

        Answers to earlier messages that arrive in the window count: wait for those first.
        """
        start = len(self.member.events)
        await asyncio.sleep(seconds)
        arrived = [e for i, e in self._bot_events(with_index=True) if i >= start]
        if arrived:
            raise AssertionError(
                f"the bot sent {len(arrived)} event(s) within {seconds}s: " + "; ".join(_describe(e) for e in arrived)
            )

    def bot_messages(self) -> list[Event]:
        """Every message the bot sent in this room so far (decrypted; ``m.room.message`` only)."""
        return self.member.messages(self.room_id, sender=self.bot_user_id)

    def _bot_events(self, *, with_index: bool = False) -> list[Any]:
        """The bot's non-state timeline events in this room, as events or (index in ``member.events``, event)."""
        found = [
            (i, e)
            for i, (room_id, e) in enumerate(list(self.member.events))
            if room_id == self.room_id and e.sender == self.bot_user_id and "state_key" not in e.source
        ]
        return found if with_index else [e for _, e in found]

    # -- members -----------------------------------------------------------------------------------------------

    def as_member(self, member: Member) -> TestRoom:
        """This room seen by another member who is in it (see :meth:`add_member`): the same methods act as them."""
        if member not in self.members:
            raise ValueError(f"{member.user_id} is not a member of {self.room_id}: add_member() first")
        return TestRoom(self.room_id, member, self.bot_user_id, kit=self._kit, members=self.members)

    async def add_member(self, member: Member, *, timeout: float = 30) -> TestRoom:
        """Invite ``member`` (as the room's creator), have them join, and wait until every member and the bot see
        them joined (with their display name, if the kit set one). Returns the room as ``member`` sees it."""
        if member in self.members:
            return self.as_member(member)
        creator = self.members[0]
        resp = await creator.client.room_invite(self.room_id, member.user_id)
        if getattr(resp, "status_code", None):
            raise AssertionError(f"inviting {member.user_id} failed: {resp}")
        await member.wait_for(
            lambda: self.room_id in member.client.invited_rooms or self.room_id in member.client.rooms,
            timeout, f"the invite to {self.room_id}",
        )
        joined = await member.client.join(self.room_id)
        if not hasattr(joined, "room_id"):
            raise AssertionError(f"{member.user_id} could not join {self.room_id}: {joined}")
        self.members.append(member)
        for other in self.members:
            await other.wait_joined(self.room_id, member.user_id, timeout)
        for other in self.members[:-1]:
            await member.wait_joined(self.room_id, other.user_id, timeout)
        await member.wait_joined(self.room_id, self.bot_user_id, timeout)
        await self.wait_bot_sees_members(timeout=timeout)
        return self.as_member(member)

    async def wait_bot_sees_members(self, *, timeout: float = 30) -> None:
        """Wait until the running bot sees every member of :attr:`members` joined, with the display name the kit
        gave them (after a :meth:`Member.set_display_name`, say). Mentions by name resolve against that view."""
        if self._kit is None or self._kit.bot is None or self._kit.bot.runtime is None:
            return
        api = self._kit.bot.runtime.api
        deadline = time.monotonic() + timeout
        while True:
            seen = api.members(self.room_id)
            missing = [
                m.user_id
                for m in self.members
                if m.user_id not in seen or (m.display_name is not None and seen[m.user_id] != m.display_name)
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout}s the bot does not see {missing} in {self.room_id}: {seen}")
            await asyncio.sleep(0.05)


class RatchetKit:
    """Creates users, the bot and rooms for one test, and cleans them up afterwards."""

    def __init__(
        self,
        synapse: SynapseServer,
        new_user: Callable[..., RegisteredUser],
        tmp_path: Path,
        *,
        engine_config: dict[str, Any] | None = None,
    ) -> None:
        self.synapse = synapse
        #: Config keys of the storage engine (``{"database": ...}`` for PostgreSQL; empty: SQLite files).
        self.engine_config = dict(engine_config or {})
        self._new_user = new_user
        self.tmp_path = tmp_path
        self.bot: InProcessBot | None = None
        self.bot_user: RegisteredUser | None = None
        self._pickle_key = secrets.token_urlsafe(24)  # one per bot: restarts must reopen the same store
        self._members: list[Member] = []

    async def start_bot(
        self, plugins: dict[str, dict[str, Any] | None], *, plugin_dirs: Sequence[str | Path] = (), **config: Any
    ) -> InProcessBot:
        """Start a bot with ``plugins`` (name -> options); ``config`` adds any other config keys.

        Returns once the bot has handled its first sync, with every plugin loaded and started.

        Raises:
            BotStartError: a plugin did not load (``errors`` names every one that failed, and why; the bot is
                stopped again), or the bot did not start at all (the original exception is the ``__cause__``).
            RuntimeError: the bot is already running.
        """
        if self.bot is not None:
            raise RuntimeError("the bot is already running; stop it first")
        if self.bot_user is None:
            self.bot_user = self._new_user("bot")
        path = write_bot_config(
            self.tmp_path / "bot.yaml",
            server=self.synapse,
            user=self.bot_user,
            data_dir=self.tmp_path / "bot-data",
            plugins=plugins,
            plugin_dirs=[str(d) for d in plugin_dirs],
            pickle_key=self._pickle_key,
            **{**self.engine_config, **config},
        )
        bot = InProcessBot(path)
        try:
            await bot.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await bot.stop()
            raise BotStartError(f"the bot did not start: {type(exc).__name__}: {exc}") from exc
        failed = dict(bot.runtime.host.errors) if bot.runtime else {}
        if failed:
            await bot.stop()
            raise BotStartError(
                f"{len(failed)} plugin(s) failed to load:\n" + "\n".join(failed.values()), failed
            )
        self.bot = bot
        return self.bot

    def storage(self, plugin: str) -> BasePluginStorage:
        """The running bot's storage of ``plugin``, to read (or prepare) what the plugin keeps while it runs:
        ``await ratchet.storage("karma").get("carol")``, ``await ....fetchone("SELECT ...")``.

        It is the plugin instance's own ``self.storage`` (same database, same worker thread), so reads see every write
        the plugin finished. A reload or restart replaces it: call this again afterwards.

        Raises:
            LookupError: the bot is not running, or ``plugin`` is not loaded.
        """
        runtime = self.bot.runtime if self.bot is not None else None
        if runtime is None:
            raise LookupError("the bot is not running")
        loaded = runtime.host.plugins.get(plugin)
        if loaded is None:
            raise LookupError(f"plugin {plugin} is not loaded (loaded: {', '.join(sorted(runtime.host.plugins))})")
        return loaded.instance.storage

    async def stop_bot(self) -> None:
        """Stop the bot (its data dir stays, so ``start_bot`` again is a restart)."""
        if self.bot is not None:
            await self.bot.stop()
            self.bot = None

    async def member(self, name: str = "member", *, display_name: str | None = None) -> Member:
        """A new user (localpart ``NAME-N-xxxxxx``) with its own E2EE device, syncing.

        ``display_name`` is set at registration, so every room the member joins shows it
        (:meth:`Member.set_display_name` changes it later).
        """
        user = self._new_user(name, displayname=display_name)
        store = self.tmp_path / f"{user.user_id[1:].split(':')[0]}-store"
        member = await Member(self.synapse.url, user.user_id, user.password, store).start()
        member.display_name = display_name
        self._members.append(member)
        return member

    async def room(
        self,
        plugins: dict[str, dict[str, Any] | None] | None = None,
        *,
        plugin_dirs: Sequence[str | Path] = (),
        member: Member | None = None,
        members: Sequence[Member] = (),
        encrypted: bool = True,
        **config: Any,
    ) -> TestRoom:
        """A room (encrypted by default) created by ``member`` (a new one if not given) with the bot joined, and
        ``members`` added (see :meth:`TestRoom.add_member`). Returns it as the creator sees it.

        Starts the bot with ``plugins`` first if it is not running yet (raising :class:`BotStartError` if it cannot).
        """
        if self.bot is None:
            await self.start_bot(plugins or {}, plugin_dirs=plugin_dirs, **config)
        assert self.bot_user is not None
        member = member or await self.member()
        room_id = await member.create_room(invite=[self.bot_user.user_id], encrypted=encrypted)
        await member.wait_joined(room_id, self.bot_user.user_id)
        room = TestRoom(room_id, member, self.bot_user.user_id, kit=self)
        for other in members:
            await room.add_member(other)
        return room

    async def close(self) -> None:
        """Stop the bot and the members."""
        with contextlib.suppress(Exception):
            await self.stop_bot()
        for member in self._members:
            with contextlib.suppress(Exception):
                await member.close()
