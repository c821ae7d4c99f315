"""Pytest plugin of Ratchet's test kit (registered through the ``pytest11`` entry point).

Fixtures:

``synapse`` (session scope)
    One real :class:`~bot.testing.synapse.SynapseServer` shared by the whole test session,
    started on first use and stopped at the end. Tests must leave it running: tests that
    stop, pause or reconfigure a homeserver should start their own ``SynapseServer``.
    Skips the test when ``matrix-synapse`` is not installed (fails it under ``CI=true``, see
    :mod:`bot.testing.tools`).

``own_synapse`` (function scope)
    A factory ``own_synapse(**kwargs) -> SynapseServer`` starting a homeserver of the test's own (the
    :class:`~bot.testing.synapse.SynapseServer` keyword arguments: ``tight_rate_limits=True``,
    ``extra_config={...}``), for tests that stop, pause, restart or reconfigure it. All are stopped afterwards.

``fault_proxy`` (function scope, async)
    A factory ``await fault_proxy(upstream_url, **kwargs) -> FaultProxy``: a started
    :class:`~bot.testing.proxy.FaultProxy` in front of a homeserver (give it to the bot as ``connect_via``, or as
    ``server`` in ``write_bot_config``). All are closed afterwards.

``new_user`` (function scope)
    A factory ``new_user(prefix="user", admin=False, displayname=None) -> RegisteredUser``
    registering a uniquely named user on ``synapse``, so tests never collide.

``ratchet`` (function scope, async)
    A :class:`~bot.testing.kit.RatchetKit`: ``await ratchet.room(plugins={...}, plugin_dirs=[...])`` starts a
    real bot with those plugins and returns a :class:`~bot.testing.kit.TestRoom` (an encrypted room with a member
    and the bot) whose ``ask("!cmd")`` returns the bot's decrypted reply; ``ratchet.member(name, display_name=...)``
    and ``room.add_member(...)`` put more members in it. ``start_bot``/``room`` raise
    :class:`~bot.testing.kit.BotStartError` naming every plugin that failed to load. Needs pytest-asyncio
    (``asyncio_mode = "auto"`` and both ``asyncio_default_*_loop_scope`` set, as ``ratchet new-plugin`` writes them).

``bot_in_room`` (function scope, async)
    A factory ``await bot_in_room(synapse, plugins={...}, **config) -> BotInRoom``
    (:class:`~bot.testing.scenario.BotInRoom`): the bot as a ``ratchet run`` process, ready, and a member in an
    encrypted room with it (``.proc``, ``.member``, ``.room``, ``.bot_user``, ``.ask("!cmd")``). ``member=``,
    ``start=`` and ``room=`` (all true by default) stop earlier; the other keyword arguments are
    :class:`~bot.testing.scenario.BotInRoom`'s. The process is killed and the members closed after the test.

Command-line options:

``--synapse-keep``
    Put the session homeserver's directory outside pytest's temporary directories (so it
    is not cleaned up) and print its path at the end of the run.

Marker ``e2e``: tests against a real Synapse.
"""

from __future__ import annotations

import importlib.util
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import pytest_asyncio
except ImportError:  # the kit's async fixtures need it; the sync ones work without
    pytest_asyncio = None

from bot.testing.kit import RatchetKit
from bot.testing.postgres import PostgresCluster
from bot.testing.proxy import FaultProxy
from bot.testing.scenario import BotInRoom, register_user
from bot.testing.synapse import RegisteredUser, SynapseServer
from bot.testing.tools import require_tool

__all__ = ["NewUser", "bot_in_room", "fault_proxy", "new_user", "own_synapse", "ratchet", "synapse"]

#: Type of the ``new_user`` fixture's factory.
NewUser = Callable[..., RegisteredUser]

_KEPT_DIR = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ratchet", "Ratchet test kit")
    group.addoption(
        "--synapse-keep",
        action="store_true",
        default=False,
        help="keep the session Synapse's directory (config, database, logs) and print its path",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test against a real Synapse")
    config.addinivalue_line(
        "markers",
        "both_engines: run the test once with SQLite storage and once with PostgreSQL (bots made by the ratchet "
        "and bot_in_room fixtures get a fresh database each)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_engines`` run once per storage engine (``[sqlite]`` and ``[postgresql]``)."""
    if metafunc.definition.get_closest_marker("both_engines") and "storage_engine" in metafunc.fixturenames:
        metafunc.parametrize("storage_engine", ["sqlite", "postgresql"], indirect=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    kept = terminalreporter.config.stash.get(_KEPT_DIR, None)
    if kept is not None:
        terminalreporter.write_line(f"Synapse test homeserver kept in {kept}")


# ---------------------------------------------------------------------- homeserver


@pytest.fixture(scope="session")
def synapse(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SynapseServer]:
    """A real Synapse homeserver shared by the whole test session."""
    require_tool(
        importlib.util.find_spec("synapse") is not None,
        "matrix-synapse is not installed (pip install 'matrix-ratchet[homeserver]')",
    )
    if request.config.getoption("--synapse-keep"):
        base_dir = Path(tempfile.mkdtemp(prefix="ratchet-synapse-"))
        request.config.stash[_KEPT_DIR] = base_dir
    else:
        base_dir = tmp_path_factory.mktemp("synapse")
    server = SynapseServer(base_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """A real PostgreSQL server (Debian's ``postgresql`` package) shared by the whole test session, on 127.0.0.1."""
    require_tool(PostgresCluster.available(), "PostgreSQL is not installed (apt-get install postgresql)")
    with PostgresCluster(tmp_path_factory.mktemp("postgres")) as cluster:
        yield cluster


@pytest.fixture
def postgres_dsn(postgres: PostgresCluster) -> str:
    """A fresh, empty database on the session's PostgreSQL: its ``postgresql://`` URL."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def storage_engine(request: pytest.FixtureRequest) -> Callable[[], dict[str, Any]]:
    """Config keys choosing a bot's storage engine: a factory giving ``{}`` (SQLite files, the default) or, for
    tests marked ``both_engines`` in their ``[postgresql]`` run, ``{"database": <a fresh database>}`` per call."""
    engine = getattr(request, "param", "sqlite")
    if engine == "sqlite":
        return dict
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return lambda: {"database": cluster.create_database(f"t_{uuid.uuid4().hex[:16]}")}


@pytest.fixture
def own_synapse(tmp_path: Path) -> Iterator[Callable[..., SynapseServer]]:
    """Factory for homeservers of the test's own (to stop, restart or reconfigure), all stopped afterwards.

    ``own_synapse(**kwargs)`` starts ``SynapseServer(tmp_path / "hsN", **kwargs)`` and returns it.
    """
    require_tool(
        importlib.util.find_spec("synapse") is not None,
        "matrix-synapse is not installed (pip install 'matrix-ratchet[homeserver]')",
    )
    servers: list[SynapseServer] = []

    def make(**kwargs: Any) -> SynapseServer:
        server = SynapseServer(tmp_path / f"hs{len(servers)}", **kwargs)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


# ---------------------------------------------------------------------- users


@pytest.fixture
def new_user(synapse: SynapseServer) -> NewUser:
    """Factory registering a fresh, uniquely named user on the session homeserver.

    ``new_user(prefix="user", admin=False, displayname=None)`` returns a
    :class:`~bot.testing.synapse.RegisteredUser` whose localpart starts with ``prefix``.
    """

    def factory(
        prefix: str = "user", admin: bool = False, displayname: str | None = None
    ) -> RegisteredUser:
        return register_user(synapse, prefix, admin=admin, displayname=displayname)

    return factory


# ---------------------------------------------------------------------- bot and members


def _async_fixture(func):
    if pytest_asyncio is None:
        return pytest.fixture(lambda: pytest.skip("the ratchet fixture needs pytest-asyncio"))
    return pytest_asyncio.fixture(func)


@_async_fixture
async def ratchet(
    synapse: SynapseServer, new_user: NewUser, tmp_path: Path, storage_engine: Callable[[], dict[str, Any]]
):
    """A :class:`~bot.testing.kit.RatchetKit` for one test: bot, members and rooms, cleaned up afterwards."""
    kit = RatchetKit(synapse, new_user, tmp_path, engine_config=storage_engine())
    try:
        yield kit
    finally:
        await kit.close()


@_async_fixture
async def bot_in_room(tmp_path: Path, storage_engine: Callable[[], dict[str, Any]]):
    """Factory ``await bot_in_room(synapse, **kwargs)`` of opened :class:`~bot.testing.scenario.BotInRoom`.

    ``member``, ``start`` and ``room`` go to :meth:`~bot.testing.scenario.BotInRoom.open`, the rest to the
    constructor. The first one lives in ``tmp_path`` itself, further ones in ``tmp_path / "bot2"``... Every bot
    process is killed and every member closed after the test.
    """
    made: list[BotInRoom] = []

    async def make(
        synapse: SynapseServer, *, member: bool = True, start: bool = True, room: bool = True, **kwargs: Any
    ) -> BotInRoom:
        folder = tmp_path if not made else tmp_path / f"bot{len(made) + 1}"
        for key, value in storage_engine().items():
            kwargs.setdefault(key, value)
        scenario = BotInRoom(synapse, folder, **kwargs)
        made.append(scenario)
        return await scenario.open(member=member, start=start, room=room)

    try:
        yield make
    finally:
        for scenario in reversed(made):
            await scenario.close()


@_async_fixture
async def fault_proxy() -> AsyncIterator[Callable[..., Any]]:
    """Factory ``await fault_proxy(upstream_url, **kwargs)`` of started :class:`~bot.testing.proxy.FaultProxy`
    instances, closed after the test."""
    proxies: list[FaultProxy] = []

    async def make(upstream: str, **kwargs: Any) -> FaultProxy:
        proxy = await FaultProxy(upstream, **kwargs).start()
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            await proxy.close()
