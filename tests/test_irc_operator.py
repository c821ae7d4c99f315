"""Issue 16 part 4: what operators ran into with a real IRC server (ngircd), without Synapse.

The IRC bridge's config errors (empty ``networks``/``channels``, bad rooms, ``max_lines``), the outage clock of a
connection (measured from when it was first lost, not from the last retry), ``!bridge status`` grouped per network
with room aliases, config links whose alias does not exist yet (retried, their stored portal kept), and a TLS
handshake against ngircd's plain-text port failing with a hint instead of hanging until the server's timeout.
The end-to-end versions (a real Synapse, ``!bridge status`` in the room) are in tests/test_e2e_irc_bridge.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bot.bridge import Bridge, BridgeConfig, ConnectionSupervisor, MatrixSide, RemoteConnection, RemoteSend
from bot.bridge.connection import ConnectionStatus
from bot.bridge.flow import Backoff
from bot.errors import PluginConfigError
from bot.plugin.loader import import_plugin
from bot.plugin.options import parse_plugin_options
from bot.testing.ngircd import NgircdServer
from bot.testing.tools import require_tool

IrcBridge = import_plugin("irc_bridge")
irc_connection = __import__(IrcBridge.__module__ + ".connection", fromlist=["IrcConnection"])
NGIRCD_MISSING = "ngircd is not installed (apt-get install ngircd)"


# ------------------------------------------------------------------------------------------- config errors


def _options(**network: Any) -> dict[str, Any]:
    return {"networks": {"libera": {"host": "irc.example.org", **network}}}


def _error(options: dict[str, Any]) -> PluginConfigError:
    with pytest.raises(PluginConfigError) as info:
        parse_plugin_options("irc_bridge", IrcBridge, options)
    return info.value


def test_empty_networks_or_channels_are_config_errors_naming_the_key():
    for options in ({}, {"networks": {}}):
        err = _error(options)
        assert str(err).startswith("plugins.irc_bridge: networks is empty"), str(err)
    err = _error(_options(channels={}))
    assert str(err).startswith("plugins.irc_bridge.networks.libera: channels is empty"), str(err)
    assert "leave the key out" in str(err)
    err = _error(_options(channels=None))  # "channels:" with nothing under it
    assert str(err) == "plugins.irc_bridge.networks.libera.channels: expected a mapping, got null"
    err = _error(_options(channels={"#a": "ratchet"}))
    assert "channels.#a: 'ratchet' is neither a room id" in str(err) and "networks.libera" in str(err)
    err = _error(_options(channels={"a": "#a:example.org"}))
    assert "'a' is not an IRC channel name" in str(err)
    assert "max_lines must be 0" in str(_error({**_options(), "max_lines": -1}))
    assert "ping_interval" in str(_error(_options(ping_interval=0)))
    assert "username" in str(_error(_options(username="a b")))


def test_every_documented_network_option_is_accepted():
    _, config = parse_plugin_options("irc_bridge", IrcBridge, {
        "networks": {"libera": {
            "host": "irc.example.org", "port": 6667, "tls": False, "tls_verify": False, "nick": "relay",
            "username": "relay", "realname": "The relay", "password": "pw", "sasl_username": "a", "sasl_password": "b",
            "ping_interval": 30, "channels": {"#a": "#a:example.org", "#b": "!room:example.org"},
        }},
        "max_lines": 0,
    })
    net = config.networks["libera"]
    assert (net.tls, net.tls_verify, net.username, net.realname, net.ping_interval) == (False, False, "relay",
                                                                                         "The relay", 30.0)
    assert config.max_lines == 0
    # Left out, channels means "linked with !bridge link only": allowed.
    _, config = parse_plugin_options("irc_bridge", IrcBridge, _options())
    assert config.networks["libera"].channels == {}


def test_config_example_documents_every_irc_option():
    """config.example.yaml's commented-out irc_bridge section names every option of the plugin and of its networks
    (each with a comment), and uncommented it is a valid config."""
    import dataclasses

    import yaml

    text = (Path(__file__).parent.parent / "config.example.yaml").read_text()
    block = text[text.index("  #   irc_bridge:"):text.index("# Extra folders")].splitlines()
    network = __import__(IrcBridge.__module__, fromlist=["Network"]).Network
    names = {f.name for cls in (IrcBridge.Config, network) for f in dataclasses.fields(cls)}
    for name in names:
        at = next((i for i, line in enumerate(block) if line.lstrip("# ").startswith(f"{name}:")), None)
        assert at is not None, f"config.example.yaml's irc_bridge section does not document {name}"
        comments = [line for line in block[max(0, at - 5):at] if re.match(r"\s*#\s+# ", line)]
        assert comments, f"{name} has no comment above it"
    assert "0: no limit" in "\n".join(block)
    options = yaml.safe_load("\n".join(line.removeprefix("  # ") for line in block))["irc_bridge"]
    _, config = parse_plugin_options("irc_bridge", IrcBridge, options)
    assert config.networks["libera"].channels == {"#ratchet": "#ratchet:example.org"}
    assert config.networks["libera"].password == "${IRC_SERVER_PASSWORD}"  # (not expanded: parsed as is here)


# ------------------------------------------------------------------------------------------- the outage clock


def test_status_line_of_an_outage_counts_from_the_first_loss():
    status = ConnectionStatus("libera", "waiting", since=1000.0, queued=2, dropped=0, sent=5, attempts=4,
                              last_error="ConnectionRefusedError", description="irc.example.org:6697 (TLS) as relay",
                              next_attempt=1750.0)
    assert status.line(now=1720.0) == (
        "libera: waiting, down for 12m (4 attempts, next in 30s), irc.example.org:6697 (TLS) as relay, queue 2, "
        "last error: ConnectionRefusedError"
    )
    up = ConnectionStatus("libera", "connected", since=1000.0, queued=0, dropped=0, sent=5, attempts=0,
                          last_error="old", description="")
    assert up.line(now=1000.0 + 7500) == "libera: connected (2h05m), queue 0"


class _Flaky(RemoteConnection):
    """Refuses to connect until ``up`` is set."""

    def __init__(self) -> None:
        super().__init__("flaky")
        self.up = False
        self.tries = 0
        self._gone = asyncio.Event()

    async def connect(self) -> None:
        self.tries += 1
        if not self.up:
            raise ConnectionRefusedError("refused")
        self._gone = asyncio.Event()

    async def run(self) -> None:
        await self._gone.wait()

    async def send(self, item: RemoteSend) -> str | None:
        return None


async def _until(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_retries_do_not_restart_the_outage_clock():
    conn = _Flaky()
    sup = ConnectionSupervisor(conn, backoff=Backoff(0.001, 0.005), stable_after=0.0)
    sup.start()
    await _until(lambda: sup.state == "waiting")
    first = sup.since
    await _until(lambda: conn.tries >= 5)
    assert sup.state in ("connecting", "waiting") and sup.since == first  # five attempts, one outage
    assert sup.status().attempts >= 4 and "down for" in sup.status().line()
    conn.up = True
    assert await sup.wait_connected(5)
    assert sup.since > first and sup.next_attempt is None
    up_since = sup.since
    conn.up = False
    conn._gone.set()  # lost again: a new outage, its own clock
    await _until(lambda: sup.state == "waiting")
    assert sup.since > up_since
    await sup.stop()


# ------------------------------------------------------------------------------------------- links and status


class _Rooms(MatrixSide):
    """The Matrix side as a dictionary: aliases that exist, rooms the bot may join, canonical aliases."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.joinable: set[str] = set()
        self.canonical: dict[str, str] = {}

    @property
    def user_id(self) -> str:
        return "@bot:x"

    async def post(self, room_id, message, *, reply_to=None) -> str:
        return "$posted"

    async def edit(self, room_id, event_id, message) -> str:
        return "$edit"

    async def redact(self, room_id, event_id, reason=None) -> str:
        return "$redact"

    async def react(self, room_id, event_id, key, message) -> str:
        return "$react"

    def display_name(self, room_id: str, user_id: str) -> str:
        return user_id

    def members(self, room_id: str) -> dict[str, str]:
        return {}

    async def resolve_room(self, room: str) -> str:
        if room.startswith("!"):
            return room
        if room not in self.aliases:
            raise ValueError(f"cannot resolve {room}: M_NOT_FOUND")
        return self.aliases[room]

    async def ensure_joined(self, room_id: str) -> bool:
        return room_id in self.joinable

    def room_alias(self, room_id: str) -> str | None:
        return self.canonical.get(room_id)


class _Up(_Flaky):
    def __init__(self, network: str) -> None:
        super().__init__()
        self.network = network
        self.up = True

    def describe(self) -> str:
        return f"{self.network}.example.org:6697 (TLS) as relay"


async def _open(path: Path, rooms: _Rooms, links: dict[str, dict[str, str]]) -> Bridge:
    from bot.plugin.api import BotAPI
    from bot.storage.plugin_storage import PluginStorage

    class Linked(Bridge):
        def make_matrix_side(self) -> MatrixSide:
            return rooms

    bridge = Linked()
    bridge.name = "linked"
    bridge.config = BridgeConfig(rate_limit=0, reconnect_min_delay=0.01, reconnect_max_delay=0.05)
    bridge.storage = await PluginStorage.open(path, plugin="linked")
    client = SimpleNamespace(config=SimpleNamespace(pickle_key="a-pickle-key-for-the-test"), user_id="@bot:x")
    bridge.bot = BotAPI(client, admins=(), plugins=None, stats=None, trust=None, identity=None)  # type: ignore[arg-type]
    bridge.log = logging.getLogger("test.linked")
    await bridge.start()
    for network, channels in links.items():
        await bridge.sync_config_portals(network, channels)
        bridge.add_connection(_Up(network))
    return bridge


async def _close(bridge: Bridge) -> None:
    await bridge.stop()
    await bridge.storage.close()


async def test_an_alias_that_does_not_exist_yet_is_retried_and_a_stored_portal_is_never_dropped(tmp_path, caplog):
    path = tmp_path / "linked.db"
    rooms = _Rooms()
    rooms.aliases["#here:x"] = "!here:x"
    rooms.joinable |= {"!here:x", "!later:x"}
    caplog.set_level(logging.INFO, "test.linked")
    bridge = await _open(path, rooms, {"libera": {"#here": "#here:x", "#later": "#later:x"}})
    assert set(bridge.portals) == {("libera", "#here")}
    assert ("libera", "#later") in bridge.pending_links
    assert "libera #later: cannot resolve #later:x: M_NOT_FOUND; retrying in the background" in caplog.text
    await _until(lambda: bridge.pending_links[("libera", "#later")].attempts >= 3)  # retried, not given up
    assert "#later ↔ #later:x: not linked yet, retrying (" in bridge.status_text()

    rooms.aliases["#later:x"] = "!later:x"  # the alias is created: the link comes up by itself
    await _until(lambda: ("libera", "#later") in bridge.portals)
    assert bridge.portals[("libera", "#later")].room_id == "!later:x" and not bridge.pending_links
    assert "libera #later: #later:x resolved; linked to !later:x" in caplog.text
    await _close(bridge)

    # Next start the alias is gone (deleted, or the homeserver is briefly unreachable): the stored portal stays.
    del rooms.aliases["#later:x"]
    bridge = await _open(path, rooms, {"libera": {"#here": "#here:x", "#later": "#later:x"}})
    assert bridge.portals[("libera", "#later")].room_id == "!later:x"
    assert "kept linked to !later:x meanwhile" in caplog.text
    assert "#later ↔ #later:x [config]; #later:x: retrying" in bridge.status_text()
    # A link removed from the config is still removed.
    await bridge.sync_config_portals("libera", {"#here": "#here:x"})
    assert set(bridge.portals) == {("libera", "#here")} and not bridge.pending_links
    await _close(bridge)


async def test_status_is_grouped_per_network_and_names_rooms_by_alias(tmp_path):
    rooms = _Rooms()
    rooms.aliases["#ops:x"] = "!ops:x"
    rooms.joinable |= {"!ops:x", "!dev:x", "!plain:x"}
    rooms.canonical["!dev:x"] = "#dev:x"
    bridge = await _open(tmp_path / "linked.db", rooms, {
        "libera": {"#ops": "#ops:x", "#dev": "!dev:x"},  # an alias; a room id whose room has a canonical alias
        "oftc": {"#plain": "!plain:x"},                   # a room without any alias: its id
    })
    await _until(lambda: all(s.connected for s in bridge.supervisors.values()))
    text = bridge.status_text("!ops:x")
    lines = text.splitlines()
    assert lines[0] == "**linked**"
    assert lines[1].startswith("- libera: connected (") and "libera.example.org:6697 (TLS) as relay" in lines[1]
    assert lines[2:4] == ["  - #dev ↔ #dev:x [config]", "  - #ops ↔ #ops:x (this room) [config]"]
    assert lines[4].startswith("- oftc: connected (")
    assert lines[5] == "  - #plain ↔ !plain:x [config]"
    assert "!ops:x" not in text and "!dev:x" not in text
    await _close(bridge)


# ------------------------------------------------------------------------------------------- TLS against ngircd


@pytest.fixture
def ngircd(tmp_path):
    """ngircd on 127.0.0.1; without it the test is skipped, or fails under CI=true."""
    require_tool(NgircdServer.available(), NGIRCD_MISSING)
    with NgircdServer(tmp_path / "ngircd") as server:
        yield server


async def test_tls_against_ngircds_plain_text_port_fails_at_once_with_a_hint(ngircd, caplog):
    assert await irc_connection.probe_plain_irc("127.0.0.1", ngircd.port)
    conn = irc_connection.IrcConnection("plain", host="127.0.0.1", port=ngircd.port, nick="relay", tls=True)
    # ngircd keeps a silent TLS handshake open for its 20s registration timeout; the bridge names the problem first.
    with pytest.raises(irc_connection.TlsMismatchError) as info:
        await asyncio.wait_for(conn.connect(), 12)
    await conn.close()
    assert f"127.0.0.1:{ngircd.port}" in str(info.value) and "set tls: false" in str(info.value)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "plain text" in r.getMessage()]
    assert len(errors) == 1, caplog.text
    assert errors[0].getMessage() == (
        f"plain: TLS handshake with 127.0.0.1:{ngircd.port} failed: the server answers in plain text; "
        "server does not speak TLS? set tls: false (or use its TLS port, often 6697)"
    )
    # The same server in plain text is fine.
    ok = irc_connection.IrcConnection("plain", host="127.0.0.1", port=ngircd.port, nick="relay", tls=False)
    await asyncio.wait_for(ok.connect(), 10)
    assert ok.connected and ok.describe() == f"127.0.0.1:{ngircd.port} as relay, in 0 channels"
    await ok.close()


async def test_the_probe_says_no_for_a_silent_port_or_a_closed_one(tmp_path):
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    port = server.sockets[0].getsockname()[1]
    try:
        assert not await irc_connection.probe_plain_irc("127.0.0.1", port, timeout=0.3)
    finally:
        server.close()
        await server.wait_closed()
    assert not await irc_connection.probe_plain_irc("127.0.0.1", port, timeout=0.3)


async def test_plain_text_against_a_tls_only_port_says_to_set_tls_true(tmp_path):
    from bot.testing.ircd import IrcServer, self_signed_pem

    require_tool(IrcServer.available(), "miniircd is not installed (pip install -e '.[dev]')")
    pem = self_signed_pem(tmp_path / "ircd.pem")
    with IrcServer(tmp_path / "tls", ssl_pem=pem) as ircd:
        conn = irc_connection.IrcConnection("t", host="127.0.0.1", port=ircd.port, nick="relay", tls=False)
        with pytest.raises(ConnectionError, match=r"closed the connection before saying anything .*set tls: true"):
            await asyncio.wait_for(conn.connect(), 10)
        await conn.close()
        assert not await irc_connection.probe_plain_irc("127.0.0.1", ircd.port, timeout=1)  # not plain-text IRC
