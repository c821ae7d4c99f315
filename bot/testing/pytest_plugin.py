"""Pytest plugin of Ratchet's test kit (registered through the ``pytest11`` entry point).

Fixtures:

``synapse`` (session scope)
    One real :class:`~bot.testing.synapse.SynapseServer` shared by the whole test session,
    started on first use and stopped at the end. Tests must leave it running: tests that
    stop, pause or reconfigure a homeserver should start their own ``SynapseServer``.
    Skips the test when ``matrix-synapse`` is not installed.

``new_user`` (function scope)
    A factory ``new_user(prefix="user", admin=False, displayname=None) -> RegisteredUser``
    registering a uniquely named user on ``synapse``, so tests never collide.

``ratchet`` (function scope, async)
    A :class:`~bot.testing.kit.RatchetKit`: ``await ratchet.room(plugins={...}, plugin_dirs=[...])`` starts a
    real bot with those plugins and returns a :class:`~bot.testing.kit.TestRoom` (an encrypted room with a member
    and the bot) whose ``ask("!cmd")`` returns the bot's decrypted reply. Needs pytest-asyncio
    (``asyncio_mode = "auto"`` is the easy way).

Command-line options:

``--synapse-keep``
    Put the session homeserver's directory outside pytest's temporary directories (so it
    is not cleaned up) and print its path at the end of the run.

Marker ``e2e``: tests against a real Synapse.
"""

from __future__ import annotations

import importlib.util
import itertools
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

try:
    import pytest_asyncio
except ImportError:  # the kit's async fixtures need it; the sync ones work without
    pytest_asyncio = None

from bot.testing.kit import RatchetKit
from bot.testing.synapse import RegisteredUser, SynapseServer

__all__ = ["NewUser", "new_user", "ratchet", "synapse"]

#: Type of the ``new_user`` fixture's factory.
NewUser = Callable[..., RegisteredUser]

_KEPT_DIR = pytest.StashKey[Path]()
_user_counter = itertools.count(1)


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
    if importlib.util.find_spec("synapse") is None:
        pytest.skip("matrix-synapse is not installed (pip install 'ratchet[homeserver]')")
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
        localpart = f"{prefix.lower()}-{next(_user_counter)}-{secrets.token_hex(3)}"
        return synapse.register_user(
            localpart, secrets.token_urlsafe(16), admin=admin, displayname=displayname
        )

    return factory


# ---------------------------------------------------------------------- bot and members


def _async_fixture(func):
    if pytest_asyncio is None:
        return pytest.fixture(lambda: pytest.skip("the ratchet fixture needs pytest-asyncio"))
    return pytest_asyncio.fixture(func)


@_async_fixture
async def ratchet(synapse: SynapseServer, new_user: NewUser, tmp_path: Path):
    """A :class:`~bot.testing.kit.RatchetKit` for one test: bot, members and rooms, cleaned up afterwards."""
    kit = RatchetKit(synapse, new_user, tmp_path)
    try:
        yield kit
    finally:
        await kit.close()
