"""The bridge core's pure parts (issue 6): HTML to text, splitting, relay templates, degradations, the
message map, token bucket, backoff, queue, reading Matrix events, and the connection supervisor driven with an
in-memory connection (no network)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.bridge import (
    BridgeConfig,
    ConnectionSupervisor,
    MentionLinker,
    PermanentSendError,
    RelayMatrixSide,
    RemoteConnection,
    RemoteMessage,
    RemoteSend,
    TextStyle,
    html_to_lines,
    html_to_plain,
    link_mentions,
    runs_to_html,
    sanitize_name,
    split_utf8,
)
from bot.bridge.flow import Backoff, OutboundQueue, SenderLimiter, TokenBucket
from bot.bridge.matrix import RelayFormat
from bot.bridge.messages import MappedMessage, MessageMap
from bot.bridge.model import BRIDGE_MARKER, matrix_message_from_event
from bot.bridge.relay_text import (
    apply_sed,
    check_template,
    edit_fallback,
    human_size,
    media_text,
    parse_sed,
    quote_excerpt,
    reaction_fallback,
    render_matrix_relay,
    reply_fallback,
    sed_edit,
)

# ------------------------------------------------------------------------------------------- Matrix HTML <-> text
# (IRC control codes: tests/test_irc_formatting.py, with the IRC bridge that owns them)


def test_html_to_plain_lays_out_pills_links_lists_and_quotes():
    assert html_to_plain("plain &amp; simple <strong>bold</strong> <code>c</code>") == "plain & simple bold c"
    assert html_to_plain('<a href="https://matrix.to/#/@bob:example.org">Bob</a>: hi') == "Bob: hi"
    assert html_to_plain('see <a href="https://example.org/x">the docs</a>') == "see the docs (https://example.org/x)"
    assert html_to_plain('<a href="https://example.org">https://example.org</a>') == "https://example.org"
    assert html_to_plain("<p>one</p><p>two</p>") == "one\ntwo"
    assert html_to_plain("a<br>b<br/>c") == "a\nb\nc"
    assert html_to_plain("<ul><li>x</li><li>y</li></ul><ol start=\"3\"><li>z</li></ol>") == "• x\n• y\n3. z"
    assert html_to_plain("<blockquote><p>quoted</p></blockquote><p>answer</p>") == "> quoted\nanswer"
    assert html_to_plain("<pre><code>def f():\n    pass\n</code></pre>") == "def f():\n    pass"
    assert html_to_plain("<mx-reply><blockquote>old</blockquote></mx-reply>new") == "new"


def test_html_to_lines_keeps_the_styles_and_runs_to_html_writes_them_back():
    bold, red = TextStyle(bold=True), TextStyle(fg="#ff0000")
    assert html_to_lines("a <b>x <i>y</i></b>") == [
        [("a", TextStyle()), (" ", TextStyle()), ("x", bold), (" ", bold), ("y", TextStyle(bold=True, italic=True))]
    ]
    assert html_to_lines('<h1>T</h1><font data-mx-color="#ff0000">r</font>') == [[("T", bold)], [("r", red)]]
    runs = [("a ", TextStyle()), ("b", bold), (" <c>", TextStyle(mono=True, strike=True)), ("r", red)]
    assert runs_to_html(runs) == (
        'a <strong>b</strong><del><code> &lt;c&gt;</code></del><font data-mx-color="#ff0000">r</font>'
    )
    assert runs_to_html([("x", TextStyle())], transform=lambda run, start: f"[{run}:{start}]") == "[x:True]"


# ------------------------------------------------------------------------------------------- splitting


def test_split_utf8_on_word_boundaries_and_never_inside_a_character():
    assert split_utf8("aaa bbb ccc", 7) == ["aaa bbb", "ccc"]
    assert split_utf8("a" * 10, 4) == ["aaaa", "aaaa", "aa"]
    pieces = split_utf8("é" * 7, 5)  # 2-byte characters: 2 per piece
    assert pieces == ["éé", "éé", "éé", "é"]
    family = "👨\u200d👩\u200d👧"
    assert all(len(p.encode()) <= 12 for p in split_utf8(family * 3, 12))
    assert "".join(split_utf8(family * 3, 40)) == family * 3
    assert split_utf8("", 10) == []


@given(st.text(max_size=400), st.integers(min_value=4, max_value=120))
def test_split_utf8_properties(text, limit):
    pieces = split_utf8(text, limit)
    for piece in pieces:
        assert len(piece.encode()) <= limit
        piece.encode().decode()  # valid UTF-8 on its own
    assert "".join(pieces).replace(" ", "").replace("\t", "") == text.replace(" ", "").replace("\t", "")


def test_templates_are_checked():
    check_template("<{name}> {text}", ("name", "text"))
    with pytest.raises(ValueError, match="unknown field"):
        check_template("<{nick}> {text}", ("name", "text"))
    with pytest.raises(ValueError, match="exactly once"):
        check_template("<{name}>", ("name", "text"))
    with pytest.raises(ValueError):
        BridgeConfig(remote_template="{text} {text}")
    with pytest.raises(ValueError):
        RelayFormat(message="{name}")


def test_matrix_relay_template_body_and_html():
    assert render_matrix_relay("**{name}**: {text}", "bob", "hi <3") == ("bob: hi <3", "<strong>bob</strong>: hi &lt;3")
    body, html = render_matrix_relay("**{name}**: {text}", "b&b", "x", "<em>x</em>")
    assert body == "b&b: x" and html == "<strong>b&amp;b</strong>: <em>x</em>"
    assert render_matrix_relay("[{name}] {text}", "n", "a\nb") == ("[n] a\nb", "[n] a<br>b")


# ------------------------------------------------------------------------------------------- degradations


def test_edit_fallbacks():
    assert sed_edit("the quick brown fox", "the quick red fox") == "s/brown/red/"
    assert sed_edit("teh cat", "the cat") == "s/teh/the/"
    assert sed_edit("same", "same") is None
    assert sed_edit("a/b c", "a/c c") is None  # slashes would be ambiguous
    assert edit_fallback("hello wrold, how are you", "hello world, how are you") == "s/wrold,/world,/"
    assert edit_fallback("short", "entirely different words") == "* corrected: entirely different words"
    assert edit_fallback(None, "new text") == "* corrected: new text"


def test_sed_parse_and_apply():
    assert parse_sed("s/helo/hello/") == ("helo", "hello", "")
    assert parse_sed("s/a\\/b/c/g") == ("a/b", "c", "g")
    assert parse_sed("s/x/y") == ("x", "y", "")
    assert parse_sed("so/what/") is None and parse_sed("hello") is None
    assert apply_sed("a a a", "a", "b") == "b a a"
    assert apply_sed("a a a", "a", "b", "g") == "b b b"
    assert apply_sed("Hello", "hello", "bye", "i") == "bye"
    assert apply_sed("abc", "x", "y") is None


def test_reply_reaction_media_and_names():
    quoted = "one two three four five six seven eight nine ten"
    assert quote_excerpt(quoted) == "one two three four five six seven eight…"
    assert quote_excerpt("x" * 100).endswith("…") and len(quote_excerpt("x" * 100)) == 60
    assert quote_excerpt("a\x02b\nc") == "ab c"  # one clean line
    assert reply_fallback("{text} (re @{nick}: {quote})", "sure", "carol", "hi there") == "sure (re @carol: hi there)"
    assert reaction_fallback("👍", "bob", "nice work") == 'reacted 👍 to bob: "nice work"'
    assert media_text("cat.png", 123_456, "m.image") == "sent an image: cat.png (123.5 kB)"
    assert media_text(None, None) == "sent a file: file (unknown size)"
    assert human_size(999) == "999 B" and human_size(1_000_000) == "1 MB" and human_size(2_500_000_000) == "2.5 GB"
    assert sanitize_name("Evil\nName\x01") == "Evil Name"
    assert sanitize_name("x" * 50, limit=10) == "x" * 9 + "…"


def test_link_mentions_makes_pills_only_for_clear_mentions():
    members = {"@alice:x": "Alice Liddell", "@bob:x": "Bob", "@bot:x": "Bot", "@b1:x": "Sam", "@b2:x": "Sam"}
    html, ids = link_mentions("Alice Liddell: hi, ask @bob", members, exclude={"@bot:x"})
    assert ids == ["@alice:x", "@bob:x"]
    assert html == (
        '<a href="https://matrix.to/#/@alice:x">Alice Liddell</a>: hi, ask <a href="https://matrix.to/#/@bob:x">Bob</a>'
    )
    assert link_mentions("I saw Bob yesterday", members) == (None, [])  # a bare name mid-sentence is no mention
    assert link_mentions("Bot: ping", members, exclude={"@bot:x"}) == (None, [])
    assert link_mentions("Sam: two of them", members) == (None, [])  # ambiguous
    linker = MentionLinker(members)
    assert linker.transform("bob, ", True) + linker.transform("and @Sam", False) == (
        '<a href="https://matrix.to/#/@bob:x">Bob</a>, and @Sam'
    )
    assert linker.mentioned == ["@bob:x"]


def test_mentions_are_capped_per_message():
    members = {f"@u{i}:x": f"user{i}" for i in range(30)}
    text = "user0: " + " ".join(f"@user{i}" for i in range(30)) + " @user1"
    html, ids = link_mentions(text, members, max_mentions=3)
    assert ids == ["@u0:x", "@u1:x", "@u2:x"]
    assert html.count("<a href=") == 5  # user0 twice, user1 twice, user2: already mentioned members stay pills
    assert html.endswith("@user29 <a href=\"https://matrix.to/#/@u1:x\">user1</a>")
    assert "@user3 " in html  # beyond the cap: the text as written
    assert link_mentions("@user5 hi", members, max_mentions=0) == (None, [])
    assert len(link_mentions(text, members)[1]) == 30  # no cap unless asked


# ------------------------------------------------------------------------------------------- flow control


def test_token_bucket_bursts_then_paces():
    now = [0.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.5)
    assert bucket.reserve() == pytest.approx(1.0)
    assert not bucket.try_take()
    now[0] = 10.0
    assert bucket.tokens == 3
    assert bucket.try_take()
    unlimited = TokenBucket(0)
    assert all(unlimited.reserve() == 0 for _ in range(100))
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


def test_sender_limiter_reports_one_flood_per_sender_until_they_pause():
    now = [0.0]
    limiter: SenderLimiter[str] = SenderLimiter(1.0, 3, clock=lambda: now[0], max_senders=3)
    assert [limiter.admit("mallory") for _ in range(6)] == ["ok", "ok", "ok", "flood", "dropped", "dropped"]
    assert limiter.admit("carol") == "ok" and limiter.ended is None  # others are not held back
    for _ in range(10):  # just over the rate: still the same flood
        now[0] += 0.9
        limiter.admit("mallory")
        assert limiter.ended is None
    assert limiter.flooding("mallory")
    now[0] += 10  # a pause: the bucket fills up, the flood is over
    assert limiter.admit("mallory") == "ok" and limiter.ended[0] == "mallory" and limiter.ended[1] >= 3
    assert not limiter.flooding("mallory")
    dropped = limiter.dropped
    for name in ("a", "b", "c", "d"):  # bounded: idle senders are forgotten first
        limiter.admit(name)
    assert len(limiter) <= 3 and limiter.dropped == dropped
    unlimited: SenderLimiter[str] = SenderLimiter(0, 1)
    assert all(unlimited.admit("x") == "ok" for _ in range(100)) and len(unlimited) == 0


def test_backoff_grows_caps_jitters_and_resets():
    backoff = Backoff(1.0, 10.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.next() == 1
    jittered = Backoff(1.0, 100.0, jitter=0.5, rng=random.Random(7).random)
    delays = [jittered.next() for _ in range(5)]
    assert all(0.5 * 2**i <= d <= 2**i for i, d in enumerate(delays))
    with pytest.raises(ValueError):
        Backoff(0)


def test_outbound_queue_keeps_order_and_drops_the_oldest_when_full():
    queue: OutboundQueue[int] = OutboundQueue(3)
    for i in range(3):
        assert queue.put(i) is None
    assert queue.peek() == 0 and len(queue) == 3
    assert queue.put(3) == 0 and queue.dropped == 1
    assert list(queue) == [1, 2, 3]
    assert queue.pop() == 1 and queue.peek() == 2


def test_message_map_both_ways_bounded():
    mm = MessageMap(capacity=2)

    def entry(n: int, remote: str | None, sender: str = "bob") -> MappedMessage:
        return MappedMessage("!r", f"$e{n}", "net", "#c", remote, sender, sender, "in", f"text {n}", at=n)

    mm.add(entry(1, "r1"))
    mm.add(entry(2, None))
    assert mm.by_remote("net", "#c", "r1").event_id == "$e1"
    assert mm.last_from("net", "#c", "bob").event_id == "$e2"
    mm.set_remote_id("$e2", "r2")
    assert mm.by_remote("net", "#c", "r2").event_id == "$e2"
    mm.set_text("$e2", "edited")
    assert mm.by_event("$e2").text == "edited"
    mm.add(entry(3, "r3", sender="carol"))  # evicts $e1
    assert mm.by_event("$e1") is None and mm.by_remote("net", "#c", "r1") is None and len(mm) == 2
    assert mm.forget("$e2").remote_id == "r2"
    assert mm.last_from("net", "#c", "bob") is None


def test_message_map_forgets_a_senders_last_message_when_they_go():
    mm = MessageMap()
    for n, (channel, sender) in enumerate([("#a", "Carol"), ("#b", "carol"), ("#a", "dave"), ("#a", "carol2")]):
        mm.add(MappedMessage("!r", f"$e{n}", "net", channel, None, sender, sender, "in", "hi"))
    assert mm.forget_sender("net", "carol", "#a") == 1  # case-insensitive, only in #a
    assert mm.last_from("net", "#a", "Carol") is None and mm.last_from("net", "#b", "carol").event_id == "$e1"
    assert mm.forget_sender("other", "carol") == 0
    assert mm.forget_sender("net", "carol") == 1  # every channel
    assert mm.last_from("net", "#b", "carol") is None
    assert mm.last_from("net", "#a", "dave").event_id == "$e2" and mm.last_from("net", "#a", "carol2") is not None
    assert mm.by_event("$e0") is not None  # the messages stay mapped (replies and redactions still find them)


# ------------------------------------------------------------------------------------------- Matrix events


def _source(content: dict, event_id: str = "$1") -> dict:
    return {"type": "m.room.message", "event_id": event_id, "sender": "@a:x", "origin_server_ts": 5,
            "content": content}


def test_matrix_message_from_event_reads_edits_replies_media_and_skips_bridged():
    plain = matrix_message_from_event("!r", _source({"msgtype": "m.text", "body": "hi"}), "A")
    assert (plain.body, plain.sender_name, plain.reply_to, plain.edit_of, plain.timestamp) == ("hi", "A", None, None, 5)
    reply = matrix_message_from_event("!r", _source({
        "msgtype": "m.text", "body": "> <@b:x> old\n\nnew", "format": "org.matrix.custom.html",
        "formatted_body": "<mx-reply><blockquote>old</blockquote></mx-reply>new",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$0"}},
    }), "A")
    assert (reply.body, reply.html, reply.reply_to) == ("new", "new", "$0")
    edit = matrix_message_from_event("!r", _source({
        "msgtype": "m.text", "body": "* fixed", "m.new_content": {"msgtype": "m.text", "body": "fixed"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$0"},
    }), "A")
    assert (edit.body, edit.edit_of) == ("fixed", "$0")
    media = matrix_message_from_event("!r", _source({
        "msgtype": "m.image", "body": "cat.png", "info": {"size": 2048, "mimetype": "image/png"},
        "file": {"url": "mxc://x/y", "key": {}, "iv": "", "hashes": {}, "v": "v2"},
    }), "A")
    assert media.is_media and (media.media_name, media.media_size) == ("cat.png", 2048)
    thread = matrix_message_from_event("!r", _source({
        "msgtype": "m.text", "body": "in thread",
        "m.relates_to": {"rel_type": "m.thread", "event_id": "$t", "is_falling_back": True,
                         "m.in_reply_to": {"event_id": "$t"}},
    }), "A")
    assert thread.reply_to is None  # a thread's fallback reply is no reply
    assert matrix_message_from_event("!r", _source({"msgtype": "m.text", "body": "x", BRIDGE_MARKER: {}}), "A") is None
    assert matrix_message_from_event("!r", _source({"body": "no msgtype"}), "A") is None


class _FakeApi:
    user_id = "@bot:x"


def test_relay_content_names_the_sender_marks_and_sanitizes():
    side = RelayMatrixSide(_FakeApi())  # type: ignore[arg-type]
    message = RemoteMessage("net", "#c", "bob", "bob", "hi <all>", html="hi <script>x</script><b>all</b>",
                            mentions=("@a:x",))
    content = side.content_for(message, reply_to="$r")
    assert content["body"] == "bob: hi <all>" and content["msgtype"] == "m.text"
    assert content["formatted_body"] == "<strong>bob</strong>: hi <b>all</b>"
    assert content[BRIDGE_MARKER] == {"network": "net", "channel": "#c", "sender": "bob", "sender_name": "bob"}
    assert content["m.mentions"] == {"user_ids": ["@a:x"]}
    assert content["m.relates_to"] == {"m.in_reply_to": {"event_id": "$r"}}
    action = side.content_for(RemoteMessage("net", "#c", "bob", "bob", "waves", kind="action"))
    assert action["body"] == "* bob waves"
    notice = side.content_for(RemoteMessage("net", "#c", "bob", "bob", "bob joined #c", kind="join"))
    assert notice["msgtype"] == "m.notice" and notice["body"] == "bob joined #c"
    anonymous = side.content_for(RemoteMessage("http", "ci", "ci", "ci", "deployed", anonymous=True))
    assert anonymous["body"] == "deployed"


# ------------------------------------------------------------------------------------------- supervisor


class FakeConnection(RemoteConnection):
    """An in-memory remote network: it can be taken down and brought back, and records what it was sent."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.up = True
        self.sent: list[str] = []
        self.connects = 0
        self.refuse: set[str] = set()
        self.fail_next = 0
        self._down = asyncio.Event()

    async def connect(self) -> None:
        if not self.up:
            raise ConnectionRefusedError("down")
        self.connects += 1
        self._down = asyncio.Event()

    async def run(self) -> None:
        await self._down.wait()

    async def send(self, item: RemoteSend) -> str | None:
        if not self.up:
            raise ConnectionError("down")
        if item.text in self.refuse:
            raise PermanentSendError("refused")
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("flaky")
        self.sent.append(item.text)
        return f"id-{item.text}"

    def go_down(self) -> None:
        self.up = False
        self._down.set()


async def _until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_supervisor_queues_during_an_outage_and_flushes_in_order_once():
    conn = FakeConnection()
    recorded: list[tuple[str, str | None]] = []

    async def on_sent(item: RemoteSend, remote_id: str | None) -> None:
        recorded.append((item.text, remote_id))

    sup = ConnectionSupervisor(conn, backoff=Backoff(0.01, 0.05), on_sent=on_sent)
    sup.start()
    assert await sup.wait_connected(2)
    sup.submit(RemoteSend("#c", "a"))
    await _until(lambda: conn.sent == ["a"])
    conn.go_down()
    await _until(lambda: sup.state != "connected")
    for text in ("b", "c", "d"):
        sup.submit(RemoteSend("#c", text))
    await asyncio.sleep(0.05)
    assert len(sup.queue) == 3 and sup.status().queued == 3 and sup.status().last_error
    conn.up = True
    await _until(lambda: conn.sent == ["a", "b", "c", "d"])
    assert recorded == [("a", "id-a"), ("b", "id-b"), ("c", "id-c"), ("d", "id-d")]
    assert conn.connects == 2 and len(sup.queue) == 0
    assert sup.status().line().startswith("fake: connected")
    await sup.stop()
    assert sup.state == "stopped"


async def test_supervisor_retries_the_failed_item_first_and_drops_refused_ones():
    conn = FakeConnection()
    sup = ConnectionSupervisor(conn, backoff=Backoff(0.01, 0.02), max_attempts=3)
    conn.fail_next = 1
    conn.refuse = {"bad"}
    for text in ("x", "bad", "y"):
        sup.submit(RemoteSend("#c", text))
    sup.start()
    await _until(lambda: conn.sent == ["x", "y"])
    assert conn.connects == 2  # the flaky send broke the connection once; "x" was sent again, first
    assert sup.queue.dropped == 1  # "bad" was refused for good
    conn.fail_next = 5
    sup.submit(RemoteSend("#c", "hopeless"))
    sup.submit(RemoteSend("#c", "z"))
    await _until(lambda: conn.sent[-1:] == ["z"])
    assert "hopeless" not in conn.sent and sup.queue.dropped == 2  # given up after max_attempts
    await sup.stop()


async def test_supervisor_paces_with_the_token_bucket():
    conn = FakeConnection()
    sup = ConnectionSupervisor(conn, bucket=TokenBucket(50.0, 2))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(6):
        sup.submit(RemoteSend("#c", str(i)))
    sup.start()
    await _until(lambda: len(conn.sent) == 6)
    assert loop.time() - start >= 4 / 50 * 0.9  # 2 at once, then 50 per second
    assert conn.sent == [str(i) for i in range(6)]
    await sup.stop()


async def test_supervisor_bounded_queue_counts_drops():
    conn = FakeConnection()
    conn.up = False
    sup = ConnectionSupervisor(conn, backoff=Backoff(0.01, 0.02), queue_size=2)
    sup.start()
    for text in ("1", "2", "3"):
        sup.submit(RemoteSend("#c", text))
    assert [m.items[0].text for m in sup.queue] == ["2", "3"] and sup.status().dropped == 1
    assert "(1 dropped)" in sup.status().line()
    conn.up = True
    await _until(lambda: conn.sent == ["2", "3"])
    await sup.stop()


# ------------------------------------------------------------------------------------------- the kept outgoing queue


async def test_a_message_is_one_queue_entry_and_a_cut_one_says_so():
    conn = FakeConnection()
    conn.refuse = {"l2"}
    sup = ConnectionSupervisor(conn, cut_notice=lambda m: RemoteSend("#c", f"[…] {m.left} not sent"))
    sup.submit_message([RemoteSend("#c", "l1"), RemoteSend("#c", "l2"), RemoteSend("#c", "l3")])
    sup.submit_message([RemoteSend("#c", "next")])
    assert len(sup.queue) == 2  # messages, not lines
    sup.start()
    await _until(lambda: conn.sent[-1:] == ["next"])
    assert conn.sent == ["l1", "[…] 2 not sent", "next"]  # l2 refused for good: the rest of its message is dropped
    await sup.stop()


async def test_the_stop_warning_counts_messages_not_lines(caplog):
    conn = FakeConnection()
    conn.up = False
    sup = ConnectionSupervisor(conn, backoff=Backoff(0.01, 0.02))
    sup.start()
    sup.submit_message([RemoteSend("#c", f"a{i}") for i in range(5)])
    sup.submit_message([RemoteSend("#c", "b")])
    await sup.stop()
    assert "fake: 2 queued messages were not sent before stopping" in caplog.text


class _BreakingConnection(FakeConnection):
    """Goes down when asked to send ``break_on``."""

    break_on = ""

    async def send(self, item: RemoteSend) -> str | None:
        if item.text == self.break_on:
            self.go_down()
        return await super().send(item)


@pytest.fixture(params=["sqlite", "postgresql"])
def kept_place(request, tmp_path):
    """Where the bridge "kept" stores its data: a SQLite file, or a fresh PostgreSQL database (its schema)."""
    if request.param == "sqlite":
        return tmp_path / "plugins" / "kept.db"
    return request.getfixturevalue("postgres_dsn")


async def _open_storage(place):
    if isinstance(place, str):
        from bot.storage.pg_plugin_storage import PostgresPluginStorage

        return await PostgresPluginStorage.open(place, plugin="kept")
    from bot.storage.plugin_storage import PluginStorage

    return await PluginStorage.open(place, plugin="kept")


async def _open_bridge(place, connection: FakeConnection):
    import logging
    from types import SimpleNamespace

    from bot.bridge import Bridge
    from bot.plugin.api import BotAPI

    class Kept(Bridge):
        pass

    bridge = Kept()
    bridge.name = "kept"
    bridge.config = BridgeConfig(rate_limit=0, reconnect_min_delay=0.01, reconnect_max_delay=0.02)
    bridge.storage = await _open_storage(place)
    client = SimpleNamespace(config=SimpleNamespace(pickle_key="a-pickle-key-for-the-test"), user_id="@bot:x")
    bridge.bot = BotAPI(client, admins=(), plugins=None, stats=None, trust=None, identity=None)  # type: ignore[arg-type]
    bridge.log = logging.getLogger("test.kept")
    await bridge.start()
    return bridge, bridge.add_connection(connection)


async def test_the_outgoing_queue_is_kept_encrypted_and_resent_once_in_order_after_a_restart(kept_place):
    path = kept_place
    conn = _BreakingConnection()
    conn.break_on = "paste line 3"
    bridge, sup = await _open_bridge(path, conn)
    assert await sup.wait_connected(2)
    paste = [RemoteSend("#c", f"paste line {i}") for i in range(1, 5)]
    await bridge.queue_remote(sup, paste)  # stored before it returns
    await _until(lambda: sup.state != "connected")
    await bridge.queue_remote(sup, [RemoteSend("#c", "confidential afterthought")])
    assert conn.sent == ["paste line 1", "paste line 2"] and len(sup.queue) == 2
    await bridge.stop()
    if isinstance(path, str):  # PostgreSQL: what the database holds
        rows = await bridge.storage.fetchall("SELECT network, relayed, items FROM ratchet_bridge_outbox")
        on_disk = repr(rows).encode()
    await bridge.storage.close()

    if not isinstance(path, str):
        on_disk = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))
    assert b"paste line" not in on_disk and b"confidential" not in on_disk and b"#c" not in on_disk
    assert b"ciphertext" in on_disk  # the rows are there, encrypted

    again = FakeConnection()
    bridge, sup = await _open_bridge(path, again)
    await _until(lambda: not sup.queue and len(again.sent) == 3)
    await bridge.queue_remote(sup, [RemoteSend("#c", "after the restart")])
    await _until(lambda: len(again.sent) == 4)
    # Only the lines not sent before, once, in order, before anything new.
    assert again.sent == ["paste line 3", "paste line 4", "confidential afterthought", "after the restart"]
    assert await bridge.storage.fetchall("SELECT * FROM ratchet_bridge_outbox WHERE done = 0 OR items != ''") == []
    await bridge.stop()
    await bridge.storage.close()


async def test_a_replayed_handler_does_not_queue_a_message_again(kept_place):
    path = kept_place
    conn = FakeConnection()
    bridge, sup = await _open_bridge(path, conn)
    message = [RemoteSend("#c", "only once", event_id="$e1"), RemoteSend("#c", "really", event_id="$e1")]
    assert await bridge.queue_remote(sup, message) is not None
    assert await bridge.queue_remote(sup, message) is None  # still queued: not twice
    await _until(lambda: conn.sent == ["only once", "really"])
    await _until(lambda: not sup.queue)
    assert await bridge.queue_remote(sup, message) is None  # relayed already (a replay after a crash): not again
    assert await bridge.queue_remote(sup, [RemoteSend("#other", "only once", event_id="$e1")]) is not None
    await _until(lambda: len(conn.sent) == 3)
    rows = await bridge.storage.fetchall("SELECT relayed, done, items FROM ratchet_bridge_outbox ORDER BY id")
    assert rows == [("$e1\n#c", 1, ""), ("$e1\n#other", 1, "")]  # the text is gone once sent
    await bridge.stop()
    await bridge.storage.close()


async def test_a_reloaded_bridge_takes_over_the_queue_only_when_the_old_version_stopped(kept_place):
    path = kept_place
    old_conn = _BreakingConnection()
    old_conn.up = False
    old_conn.break_on = "old 2"
    old, old_sup = await _open_bridge(path, old_conn)
    await old.queue_remote(old_sup, [RemoteSend("#c", "old 1", event_id="$a")])
    await old.queue_remote(old_sup, [RemoteSend("#c", "old 2", event_id="$b")])
    new_conn = FakeConnection()
    new, new_sup = await _open_bridge(path, new_conn)  # started beside the old one, as a reload does
    await new.queue_remote(new_sup, [RemoteSend("#c", "new", event_id="$c")])
    old_conn.up = True  # the old version still sends what it can
    await _until(lambda: old_conn.sent == ["old 1"] and not old_conn.up)
    assert new_conn.sent == []  # held meanwhile: the old version owns its queue
    await old.stop()
    await old.storage.close()
    await _until(lambda: len(new_conn.sent) == 2)
    await asyncio.sleep(0.05)
    assert new_conn.sent == ["old 2", "new"]  # what the old one left, first; nothing twice
    await new.stop()
    await new.storage.close()


async def test_a_kept_message_older_than_the_retention_is_dropped_and_a_cut_one_says_so(kept_place, caplog):
    path = kept_place
    conn = _BreakingConnection()
    conn.break_on = "old b"
    bridge, sup = await _open_bridge(path, conn)
    await bridge.queue_remote(sup, [RemoteSend("#c", "old a", sender_name="Ann"), RemoteSend("#c", "old b"),
                                    RemoteSend("#c", "old c")])
    await _until(lambda: conn.sent == ["old a"] and not conn.up)
    await bridge.queue_remote(sup, [RemoteSend("#c", "never sent")])
    await bridge.stop()
    await bridge.storage.execute("UPDATE ratchet_bridge_outbox SET created_at = 1")  # 1970: beyond retention_days
    await bridge.storage.close()

    again = FakeConnection()
    bridge, sup = await _open_bridge(path, again)
    await _until(lambda: again.sent)
    await asyncio.sleep(0.05)
    assert again.sent == ["<Ann> […] (2 more lines not sent)"]  # the cut one says so; neither is sent
    assert "2 queued outgoing messages older than 30 days were dropped unsent" in caplog.text
    assert await bridge.storage.fetchall("SELECT * FROM ratchet_bridge_outbox") == []
    await bridge.stop()
    await bridge.storage.close()


async def test_portals_and_the_message_map_are_stored_replaced_and_read_back(kept_place):
    from bot.bridge.model import Portal

    bridge, _ = await _open_bridge(kept_place, FakeConnection())
    await bridge.add_portal(Portal("net", "#c", "!old:x", created_by="@a:x", created_at=1.0))
    await bridge.add_portal(Portal("net", "#c", "!new:x", origin="config", created_at=2.0))  # replaces it
    await bridge.add_portal(Portal("net", "#d", "!d:x", created_at=3.0))
    await bridge.remove_portal(bridge.portals[("net", "#d")])
    await bridge._remember(MappedMessage("!new:x", "$e", "net", "#c", None, "@a:x", "Ann", "out", "hi", 10.0))
    await bridge._remember(MappedMessage("!new:x", "$e", "net", "#c", "r1", "@a:x", "Ann", "out", "hi", 11.0))
    await bridge.stop()
    await bridge.storage.close()

    bridge, _ = await _open_bridge(kept_place, FakeConnection())  # portals load from storage; the map is empty
    assert list(bridge.portals.values()) == [Portal("net", "#c", "!new:x", "config", None, 2.0)]
    stored = MappedMessage("!new:x", "$e", "net", "#c", "r1", "@a:x", "Ann", "out", None, 11.0)
    assert await bridge._lookup_event("$e") == stored
    assert await bridge._lookup_remote(bridge.portals[("net", "#c")], "r1") == stored
    assert await bridge.storage.fetchone("SELECT count(*) FROM ratchet_bridge_message") == (1,)
    await bridge.stop()
    await bridge.storage.close()


def test_data_encrypted_at_rest_needs_the_same_pickle_key_and_purpose():
    from types import SimpleNamespace

    from bot.errors import StorageError
    from bot.plugin.api import BotAPI

    def api(key: str) -> BotAPI:
        client = SimpleNamespace(config=SimpleNamespace(pickle_key=key), user_id="@bot:x")
        return BotAPI(client, admins=(), plugins=None, stats=None, trust=None, identity=None)  # type: ignore[arg-type]

    stored = api("pickle-key-number-one").encrypt_at_rest("kept.outbox", "a private line")
    assert "private" not in stored
    assert api("pickle-key-number-one").decrypt_at_rest("kept.outbox", stored) == "a private line"
    for reader, purpose in ((api("pickle-key-number-two"), "kept.outbox"), (api("pickle-key-number-one"), "other")):
        with pytest.raises(StorageError):
            reader.decrypt_at_rest(purpose, stored)
    with pytest.raises(StorageError):
        api("").encrypt_at_rest("kept.outbox", "no key, no storage")
