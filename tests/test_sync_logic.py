"""Pure tests of sync bookkeeping: token commit order and which events reach plugins."""

from dataclasses import dataclass, field

from bot.runtime.timeline import CatchUpPolicy, TokenCommitter, select_events

BOT = "@bot:localhost"


@dataclass
class Ev:
    sender: str
    server_timestamp: int = 1_000_000
    source: dict = field(default_factory=dict)


def test_tokens_commit_in_order_even_when_batches_finish_out_of_order():
    c = TokenCommitter()
    a, b, d = c.begin("t1"), c.begin("t2"), c.begin("t3")
    assert c.finish(b) is None  # t1 not handled yet: t2 must not be persisted
    assert c.finish(d) is None
    assert c.finish(a) == "t3"  # everything up to t3 is handled now
    assert c.pending == 0


def test_token_commits_immediately_when_in_order():
    c = TokenCommitter()
    assert c.finish(c.begin("t1")) == "t1"
    assert c.finish(c.begin("t2")) == "t2"


def test_initial_sync_history_is_skipped():
    events = [Ev("@a:x"), Ev("@b:x")]
    out = select_events(events, own_user_id=BOT, initial_sync=True, resumed=False, now_ms=0, policy=CatchUpPolicy())
    assert out == []


def test_own_messages_and_pre_join_history_are_skipped():
    join = Ev(
        BOT,
        source={"type": "m.room.member", "state_key": BOT, "content": {"membership": "join"},
                "unsigned": {"prev_content": {"membership": "invite"}}},
    )
    before, after, mine = Ev("@a:x"), Ev("@a:x"), Ev(BOT)
    out = select_events(
        [before, join, after, mine], own_user_id=BOT, initial_sync=False, resumed=False, now_ms=0,
        policy=CatchUpPolicy(),
    )
    assert out == [after]


def test_profile_change_of_bot_is_not_a_join():
    rejoin = Ev(
        BOT,
        source={"type": "m.room.member", "state_key": BOT, "content": {"membership": "join"},
                "unsigned": {"prev_content": {"membership": "join"}}},
    )
    before = Ev("@a:x")
    out = select_events([before, rejoin], own_user_id=BOT, initial_sync=False, resumed=False, now_ms=0,
                        policy=CatchUpPolicy())
    assert out == [before]


def test_catch_up_window_and_switch():
    now = 10_000_000
    old, recent = Ev("@a:x", server_timestamp=now - 5000), Ev("@a:x", server_timestamp=now - 500)
    kw = dict(own_user_id=BOT, initial_sync=False, now_ms=now)
    assert select_events([old, recent], resumed=True, policy=CatchUpPolicy(True, 1000), **kw) == [recent]
    assert select_events([old, recent], resumed=True, policy=CatchUpPolicy(False, 1000), **kw) == []
    # outside the first sync after a restart, age does not matter
    assert select_events([old, recent], resumed=False, policy=CatchUpPolicy(True, 1000), **kw) == [old, recent]
