"""The setup most end-to-end tests share: a bot in its own process and a member in an encrypted room with it.

:class:`BotInRoom` writes the bot's config, runs ``ratchet run`` in a subprocess
(:class:`~bot.testing.harness.BotProcess`), logs a :class:`~bot.testing.member.Member` in on its own E2EE device,
creates an encrypted room, invites the bot and waits until it has joined. :meth:`BotInRoom.close` kills the process
and closes every member it made. Use it through the ``bot_in_room`` pytest fixture (which closes it after the
test)::

    async def test_ping(synapse, bot_in_room):
        t = await bot_in_room(synapse, plugins={"ping": {}})
        reply = await t.ask("!ping")
        assert reply.decrypted and reply.body.startswith("pong")
        assert await t.proc.stop() == 0

or as ``async with BotInRoom(synapse, tmp_path, ...) as t:`` outside pytest. The homeserver may be any
:class:`~bot.testing.synapse.SynapseServer` (the session one, or one of the test's own); ``connect_via`` puts something
else between the bot and it (a :class:`~bot.testing.proxy.FaultProxy`) while members talk to the homeserver directly.

For a bot running in the test's own event loop (plugin tests), see :class:`bot.testing.kit.RatchetKit`.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from nio import Event

from bot.testing.harness import BotProcess, write_bot_config
from bot.testing.member import Member
from bot.testing.synapse import RegisteredUser, SynapseServer

__all__ = ["BotInRoom", "register_user"]

_user_counter = itertools.count(1)


class _Homeserver(Protocol):
    """What the bot's config needs of the server it connects to (a SynapseServer or a FaultProxy in front of one)."""

    url: str
    server_name: str


def register_user(
    synapse: SynapseServer, prefix: str = "user", *, admin: bool = False, displayname: str | None = None
) -> RegisteredUser:
    """Register a uniquely named user (localpart ``prefix-N-xxxxxx``) with a random password on ``synapse``."""
    localpart = f"{prefix.lower()}-{next(_user_counter)}-{secrets.token_hex(3)}"
    return synapse.register_user(localpart, secrets.token_urlsafe(16), admin=admin, displayname=displayname)


class BotInRoom:
    """A ``ratchet run`` process for ``bot_user`` and a member in an encrypted room with it.

    Files, all under ``tmp_path``: the config ``bot.yaml``, the log ``bot.log``, the bot's ``data_dir`` (``data``
    unless given) and one store folder per member (``member-NAME``).

    Args:
        synapse: the homeserver the users live on; members connect to it directly.
        tmp_path: the folder for the files above.
        bot_user: the bot's account (default: a new user on ``synapse``).
        member_user: the first member's account (default: a new user on ``synapse``).
        connect_via: what the bot's config points at instead of ``synapse`` (e.g. a ``FaultProxy``).
        plugins: plugin name -> options (default: ``{"ping": {}}``).
        plugin_dirs: extra folders to load plugins from.
        data_dir: the bot's data folder (default ``tmp_path / "data"``).
        extra_args: more ``ratchet run`` arguments, e.g. ``("--log-level", "DEBUG")``.
        command: what runs the bot instead of ``python -m bot`` (e.g. an installed ``ratchet`` script), and
            ``cwd``, ``env``: its working directory and extra environment variables (see
            :class:`~bot.testing.harness.BotProcess`).
        member_name: the first member's name (its store folder is ``member-NAME``).
        config: any other config keys (``admins=[...]``, ``e2ee={...}``, ``invites={...}``, ``handler_timeout=5``...).

    After :meth:`open`: ``proc`` (the :class:`BotProcess`), ``member`` (the first :class:`Member`, or None with
    ``member=False``), ``room`` (the encrypted room's id, or None with ``room=False``), ``bot_user``,
    ``member_user``, ``config_path``, ``data_dir``.
    """

    def __init__(
        self,
        synapse: SynapseServer,
        tmp_path: Path,
        *,
        bot_user: RegisteredUser | None = None,
        member_user: RegisteredUser | None = None,
        connect_via: _Homeserver | None = None,
        plugins: dict[str, dict[str, Any] | None] | None = None,
        plugin_dirs: Sequence[str | Path] = (),
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        member_name: str = "alice",
        **config: Any,
    ) -> None:
        self.synapse = synapse
        self.tmp_path = tmp_path
        self.bot_user = bot_user or register_user(synapse, "bot")
        self._member_user = member_user
        self.member_name = member_name
        self.data_dir = data_dir or tmp_path / "data"
        if plugin_dirs:
            config["plugin_dirs"] = [str(d) for d in plugin_dirs]
        self.config_path = write_bot_config(
            tmp_path / "bot.yaml",
            server=connect_via or synapse,
            user=self.bot_user,
            data_dir=self.data_dir,
            plugins=plugins,
            **config,
        )
        self.proc = BotProcess(
            self.config_path, tmp_path / "bot.log", extra_args=tuple(extra_args), command=command, cwd=cwd, env=env
        )
        self.member: Member | None = None
        self.room: str | None = None
        self.members: list[Member] = []

    @property
    def member_user(self) -> RegisteredUser:
        """The first member's account (registered on first use if none was given)."""
        if self._member_user is None:
            self._member_user = register_user(self.synapse, self.member_name)
        return self._member_user

    async def open(self, *, member: bool = True, start: bool = True, room: bool = True) -> BotInRoom:
        """Start the first ``member``, then the bot (until its first sync: ``start``), then create the ``room``.

        ``room`` needs both. On any failure everything started so far is closed again.
        """
        try:
            if member:
                self.member = await self.add_member(self.member_user, self.member_name)
            if start:
                await self.proc.run_ready()
            if room:
                if self.member is None or not start:
                    raise ValueError("the room needs the member and the running bot")
                self.room = await self.create_room(self.member)
        except BaseException:
            await self.close()
            raise
        return self

    async def add_member(self, user: RegisteredUser | None = None, name: str | None = None) -> Member:
        """Log ``user`` (default: a new user called ``name``) in on a new E2EE device and start it syncing.

        Closed with the rest in :meth:`close`.
        """
        name = name or f"member{len(self.members) + 1}"
        user = user or register_user(self.synapse, name)
        member = Member(self.synapse.url, user.user_id, user.password, self.tmp_path / f"member-{name}")
        self.members.append(member)  # closed even if it fails to start
        return await member.start()

    async def create_room(
        self, member: Member | None = None, *, invite: Sequence[str] = (), encrypted: bool = True, **kwargs: Any
    ) -> str:
        """A new room created by ``member`` (default: the first one), the bot invited (and ``invite``); returns its id
        once the bot has joined. ``kwargs`` go to :meth:`Member.create_room` (``name``, ``direct``)."""
        member = member or self.member
        if member is None:
            raise ValueError("no member to create the room")
        room_id = await member.create_room(
            invite=[self.bot_user.user_id, *invite], encrypted=encrypted, **kwargs
        )
        await member.wait_joined(room_id, self.bot_user.user_id)
        return room_id

    # -- talking to the bot -----------------------------------------------------------------------------------

    def _room_and_member(self, room: str | None, member: Member | None) -> tuple[str, Member]:
        room, member = room or self.room, member or self.member
        if room is None or member is None:
            raise ValueError("no room or member: open() with member=True and room=True, or pass them")
        return room, member

    async def send(self, text: str, *, room: str | None = None, member: Member | None = None, **kwargs: Any) -> str:
        """Send ``text`` as ``member`` (default: the first) in ``room`` (default: the bot's room); returns its id."""
        room, member = self._room_and_member(room, member)
        return await member.send(room, text, **kwargs)

    async def ask(
        self, text: str, *, room: str | None = None, member: Member | None = None, timeout: float = 30, **kwargs: Any
    ) -> Event:
        """Send ``text`` and return the bot's (decrypted) rich reply to it."""
        room, member = self._room_and_member(room, member)
        event_id = await member.send(room, text, **kwargs)
        return await member.expect_reply(room, event_id, sender=self.bot_user.user_id, timeout=timeout)

    def bot_messages(self, room: str | None = None, member: Member | None = None) -> list[Event]:
        """The bot's messages in ``room`` so far, as ``member`` decrypted them."""
        room, member = self._room_and_member(room, member)
        return member.messages(room, sender=self.bot_user.user_id)

    # -- the end ----------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Kill the bot process if it still runs (a test that checks the exit code stops it first) and close every
        member."""
        self.proc.kill()
        for member in self.members:
            with contextlib.suppress(Exception):
                await member.close()

    async def __aenter__(self) -> BotInRoom:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
