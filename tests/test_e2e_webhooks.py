"""Issue 6: the webhooks bridge. Templates and secrets as pure functions; then end to end against the real Synapse:
HTTP requests post (encrypted) into a room, bad ones get a 4xx and post nothing, and a room's messages go out to an
HTTP endpoint with retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.plugin.loader import import_plugin

templates = __import__(import_plugin("webhooks").__module__ + ".templates", fromlist=["render_push"])

SECRET = "a-bearer-secret-0123456789"
GIT_SECRET = "a-signing-secret-9876543210"

ALERTS = {
    "version": "4",
    "status": "firing",
    "receiver": "ops",
    "alerts": [
        {"status": "firing", "labels": {"alertname": "HighLatency", "severity": "critical", "instance": "api-1"},
         "annotations": {"summary": "p99 latency above 500ms"}, "generatorURL": "https://prom.example/graph"},
        {"status": "firing", "labels": {"alertname": "DiskFull", "severity": "warning", "instance": "db-1"},
         "annotations": {"description": "disk 95% full"}},
        {"status": "resolved", "labels": {"alertname": "CPUHigh", "instance": "web-1"},
         "annotations": {"summary": "CPU back to normal"}},
    ],
}

PUSH = {
    "ref": "refs/heads/main",
    "compare": "https://git.example/acme/widgets/compare/1a2b3c4...7e8f9a0",
    "repository": {"name": "widgets", "full_name": "acme/widgets"},
    "pusher": {"name": "alice", "email": "alice@example.org"},
    "sender": {"login": "alice"},
    "commits": [
        {"id": "1a2b3c4d5e6f", "message": "Fix the frobnicator\n\nLong story.", "author": {"name": "alice"},
         "url": "https://git.example/acme/widgets/commit/1a2b3c4"},
        {"id": "5d6e7f8a9b0c", "message": "Add tests", "author": {"name": "bob", "username": "bob"}},
        {"id": "7e8f9a0b1c2d", "message": "Update docs", "author": {"name": "alice"}},
    ],
}


# ------------------------------------------------------------------------------------------- pure: templates


def test_generic_template_accepts_text_or_body_and_refuses_unknown_fields():
    assert templates.render_generic({"text": "hi"}) == templates.Rendered("hi")
    assert templates.render_generic({"body": "hi", "username": "ci", "msgtype": "m.notice"}) == templates.Rendered(
        "hi", None, "ci", "m.notice"
    )
    for bad, needle in [
        ({"text": "hi", "colour": "red"}, "unknown field 'colour'"),
        ({"text": "hi", "body": "ho"}, "not both"),
        ({}, "'text' (or 'body') is required"),
        ({"text": 3}, "'text' must be a string"),
        ([1, 2], "JSON object"),
        ({"text": "x", "msgtype": "m.emote"}, "msgtype"),
    ]:
        with pytest.raises(templates.TemplateError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            templates.render_generic(bad)


def test_alertmanager_template_summarises_firing_then_resolved():
    rendered = templates.render_alertmanager(ALERTS)
    assert rendered.text.splitlines() == [
        "Alerts: 2 firing · 1 resolved",
        "🔥 FIRING: HighLatency (critical) on api-1: p99 latency above 500ms",
        "🔥 FIRING: DiskFull (warning) on db-1: disk 95% full",
        "✅ RESOLVED: CPUHigh on web-1: CPU back to normal",
    ]
    assert '<a href="https://prom.example/graph">source</a>' in rendered.html
    one = templates.render_alertmanager({"alerts": [ALERTS["alerts"][2]]})
    assert one.text == "✅ RESOLVED: CPUHigh on web-1: CPU back to normal"
    with pytest.raises(templates.TemplateError):
        templates.render_alertmanager({"alerts": []})
    with pytest.raises(templates.TemplateError):
        templates.render_alertmanager({"alerts": [{"labels": {}}]})


def test_push_template_for_branches_tags_and_deletions():
    rendered = templates.render_push(PUSH)
    assert rendered.text == (
        "alice pushed 3 commits to acme/widgets/main:\n1a2b3c4 Fix the frobnicator\n5d6e7f8 Add tests (bob)\n"
        "7e8f9a0 Update docs"
    )
    assert '<a href="https://git.example/acme/widgets/compare/1a2b3c4...7e8f9a0">3 commits</a>' in rendered.html
    assert '<a href="https://git.example/acme/widgets/commit/1a2b3c4"><code>1a2b3c4</code></a>' in rendered.html
    assert templates.render_push({**PUSH, "ref": "refs/tags/v1.0", "commits": []}).text == (
        "alice pushed tag v1.0 to acme/widgets"
    )
    assert templates.render_push({**PUSH, "deleted": True, "commits": []}).text == (
        "alice deleted branch main of acme/widgets"
    )
    forced = templates.render_push({**PUSH, "forced": True, "commits": PUSH["commits"][:1]})
    assert forced.text.startswith("alice force-pushed 1 commit to acme/widgets/main:")
    gitea = {"ref": "refs/heads/dev", "repository": {"full_name": "o/r"}, "pusher": {"username": "gitea-user"},
             "commits": [], "total_commits": 0}
    assert templates.render_push(gitea).text == "gitea-user pushed 0 commits to o/r/dev"
    with pytest.raises(templates.TemplateError, match="'ref'"):
        templates.render_push({"repository": {"full_name": "o/r"}})


def test_secrets_bearer_and_hmac_signatures():
    assert templates.verify_bearer(SECRET, f"Bearer {SECRET}")
    assert templates.verify_bearer(SECRET, f"bearer  {SECRET} ")
    assert not templates.verify_bearer(SECRET, f"Bearer {SECRET}x")
    assert not templates.verify_bearer(SECRET, None)
    assert not templates.verify_bearer(SECRET, f"Basic {SECRET}")
    body = b'{"ref": "x"}'
    sig = hmac.new(GIT_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert templates.verify_signature(GIT_SECRET, body, {"X-Hub-Signature-256": f"sha256={sig}"})
    assert templates.verify_signature(GIT_SECRET, body, {"X-Gitea-Signature": sig})
    assert templates.verify_signature(GIT_SECRET, body, {"X-Forgejo-Signature": sig.upper()})
    assert not templates.verify_signature(GIT_SECRET, body + b" ", {"X-Hub-Signature-256": f"sha256={sig}"})
    assert not templates.verify_signature(GIT_SECRET, body, {"X-Hub-Signature-256": sig})  # prefix required
    assert not templates.verify_signature(GIT_SECRET, body, {})
    assert templates.forge_event({"X-GitHub-Event": "Push"}) == "push"
    # With a timestamp, the signature covers "<timestamp>.<body>": the timestamp cannot be changed.
    stamped = hmac.new(GIT_SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": f"sha256={stamped}"}
    assert templates.matching_signature(GIT_SECRET, body, headers, timestamp="1700000000") == stamped
    assert not templates.verify_signature(GIT_SECRET, body, headers, timestamp="1700000001")
    assert not templates.verify_signature(GIT_SECRET, body, headers)


def test_outbound_urls_are_redacted_for_logs_and_status():
    redact = templates.redact_url
    slack = "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF1/abcDEF123ghiJKL456mnoPQR"
    assert redact(slack) == "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF1/[redacted]"
    assert redact("http://user:pass@127.0.0.1:8080/in?token=abc") == "http://127.0.0.1:8080/in?[redacted]"
    assert redact("https://example.org/matrix/notifications-endpoint") == (
        "https://example.org/matrix/notifications-endpoint"  # a plain word, however long, is not a token
    )
    assert redact("https://x.example/a/0123456789abcdef0123456789abcdef01234567") == "https://x.example/a/[redacted]"
    assert templates.url_secrets(slack) == [slack, "abcDEF123ghiJKL456mnoPQR"]


# ------------------------------------------------------------------------------------------- end to end


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s")
        await asyncio.sleep(0.05)


def _body(event) -> str:
    return str(getattr(event, "body", "") or event.source.get("content", {}).get("body", ""))


async def _wait_listening(url: str) -> None:
    """The endpoint starts with the plugin; give it a moment."""
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.post(f"{url}/nothing"):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"{url} is not listening")


def _signed(body: bytes, secret: str = GIT_SECRET, timestamp: str | None = None) -> dict[str, str]:
    signed = f"{timestamp}.".encode() + body if timestamp is not None else body
    headers = {"Content-Type": "application/json",
               "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}
    if timestamp is not None:
        headers["X-Ratchet-Timestamp"] = timestamp
    return headers


async def _raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, Any], dict[str, str]]:
    """Send a request by hand (headers may promise more body than is sent); return the status, the JSON answer and
    the answer's headers (lower-case names). The rest of the body is never sent: a server that waits for it never
    answers, and the read gives up after 10 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # the server answers and closes without the rest
    finally:
        writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *lines = header.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ", 2)[1]), json.loads(payload or b"{}"), headers


@pytest.mark.both_engines  # the bridge's portals, message map and queue on SQLite and PostgreSQL
@pytest.mark.e2e
async def test_webhooks_post_encrypted_messages_and_refuse_bad_requests(ratchet):
    member = await ratchet.member("ops")
    room = await ratchet.room(plugins={"ping": {}}, member=member)
    await ratchet.stop_bot()
    port = _free_port()
    hooks = {
        "ci": {"room": room.room_id, "secret": SECRET},
        "alerts": {"room": room.room_id, "secret": SECRET, "template": "alertmanager", "msgtype": "m.notice"},
        "git": {"room": room.room_id, "secret": GIT_SECRET, "auth": "hmac", "template": "push"},
    }
    await ratchet.start_bot({"webhooks": {"port": port, "hooks": hooks, "max_body_bytes": 4096}})
    url = f"http://127.0.0.1:{port}/hooks"
    auth = {"Authorization": f"Bearer {SECRET}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the endpoint starts with the plugin; give it a moment
            try:
                async with http.post(f"{url}/nothing") as resp:
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)

        # A good secret: posted (encrypted), the answer names the event.
        async with http.post(f"{url}/ci", json={"text": "deploy finished", "username": "ci"}, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        posted = await room.expect(lambda e: e.event_id == answer["event_id"])
        assert posted.decrypted and posted.body == "ci: deploy finished"
        assert posted.source["content"]["formatted_body"] == "<strong>ci</strong>: deploy finished"

        # Bad requests: a 4xx with a JSON reason, nothing posted.
        async def refused(path: str, status: int, needle: str, **kwargs: Any) -> None:
            async with http.post(f"{url}/{path}", **kwargs) as resp:
                data = await resp.json()
                assert resp.status == status, data
                assert data["ok"] is False and needle in data["error"], data

        await refused("ci", 401, "secret", json={"text": "nope"}, headers={"Authorization": "Bearer wrong"})
        await refused("ci", 401, "secret", json={"text": "nope"})
        await refused("nope", 401, "unknown hook, or a missing or wrong secret", json={"text": "x"}, headers=auth)
        await refused("ci", 415, "application/json", data="text=hi", headers={**auth, "Content-Type": "text/plain"})
        await refused("ci", 400, "malformed JSON", data=b"{not json", headers={**auth,
                                                                              "Content-Type": "application/json"})
        await refused("ci", 400, "unknown field 'colour'", json={"text": "x", "colour": "red"}, headers=auth)
        await refused("git", 401, "signature", json=PUSH, headers={"X-GitHub-Event": "push"})
        bad_sig = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64}
        await refused("git", 401, "wrong secret or signature", json=PUSH, headers=bad_sig)

    # Oversize: refused from Content-Length before the body is read (only 10 of the promised bytes are sent)...
    status, data, headers = await _raw_request(
        port,
        f"POST /hooks/ci HTTP/1.1\nHost: x\nAuthorization: Bearer {SECRET}\nContent-Type: application/json\n"
        "Content-Length: 10000000\n",
        b'{"text": "',
    )
    assert status == 413 and "at most 4096" in data["error"], data
    # ...answered while the body is still incomplete, and the server hangs up rather than read the rest (order, not a
    # time limit: a server waiting for the body would not answer at all).
    assert headers.get("connection", "").lower() == "close", headers
    # ...and a chunked body (no length given) as soon as it passes the limit.
    chunk = b"x" * 3000
    status, data, _ = await _raw_request(
        port,
        f"POST /hooks/ci HTTP/1.1\nHost: x\nAuthorization: Bearer {SECRET}\nContent-Type: application/json\n"
        "Transfer-Encoding: chunked\n",
        b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2)),
    )
    assert status == 413, data

    async with aiohttp.ClientSession() as http:
        # Alertmanager and a signed push render through their templates.
        async with http.post(f"{url}/alerts", json=ALERTS, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
        alert = await room.expect(lambda e: _body(e).startswith("Alerts:"))
        assert alert.decrypted and alert.source["content"]["msgtype"] == "m.notice"
        assert "🔥 FIRING: HighLatency (critical) on api-1: p99 latency above 500ms" in alert.body
        assert "✅ RESOLVED: CPUHigh on web-1" in alert.body

        body = json.dumps(PUSH).encode()
        signature = "sha256=" + hmac.new(GIT_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature, "Content-Type": "application/json"}
        async with http.post(f"{url}/git", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        push = await room.expect(lambda e: _body(e).startswith("alice pushed"))
        assert push.decrypted
        assert push.body.splitlines()[0] == "alice pushed 3 commits to acme/widgets/main:"
        ping = json.dumps({"zen": "hi"}).encode()
        ping_headers = {"X-GitHub-Event": "ping", "Content-Type": "application/json",
                        "X-Hub-Signature-256": "sha256=" + hmac.new(GIT_SECRET.encode(), ping, "sha256").hexdigest()}
        async with http.post(f"{url}/git", data=ping, headers=ping_headers) as resp:
            assert resp.status == 200 and (await resp.json())["pong"] is True

        # A later good request instead of a pause: the member has its message once everything before it is seen.
        async with http.post(f"{url}/ci", json={"text": "sentinel"}, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            sentinel = (await resp.json())["event_id"]
        await room.expect(lambda e: e.event_id == sentinel)

    bot_events = room.bot_messages()
    bodies = [_body(e) for e in bot_events]
    assert len(bodies) == 4 and bot_events[-1].event_id == sentinel, bodies  # the three good requests, nothing else
    assert not any("nope" in b or "colour" in b for b in bodies)
    assert member.undecryptable(room.room_id) == []


URL_TOKEN = "AbCdEf0123456789xyzTOKEN"


@pytest.mark.both_engines  # the bridge's portals, message map and queue on SQLite and PostgreSQL
@pytest.mark.e2e
async def test_outbound_hook_posts_room_messages_with_retries_and_no_loop(ratchet, caplog):
    caplog.set_level(logging.INFO)
    received: list[dict[str, Any]] = []
    signatures: list[str] = []
    statuses = iter([500])  # the first POST fails: it must be retried

    async def collect(request: web.Request) -> web.Response:
        raw = await request.read()
        received.append(json.loads(raw))
        signatures.append(request.headers.get("X-Ratchet-Signature-256", ""))
        return web.Response(status=next(statuses, 200))

    app = web.Application()
    app.router.add_post(f"/in/{URL_TOKEN}", collect)
    runner = web.AppRunner(app, access_log=None)  # (the receiving end's log has the URL, of course)
    await runner.setup()
    out_port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", out_port).start()
    try:
        admin = await ratchet.member("admin")
        room = await ratchet.room(plugins={"ping": {}}, member=admin)
        await ratchet.stop_bot()
        port = _free_port()
        key = "outbound-signing-key-42"
        options = {
            "port": port,
            "hooks": {"ci": {"secret": SECRET}},  # no room: linked below with the command
            "outbound": {"archive": {"room": room.room_id, "secret": key,
                                     "url": f"http://127.0.0.1:{out_port}/in/{URL_TOKEN}?key=sekrit-api-key"}},
            "reconnect_min_delay": 0.2,
            "reconnect_max_delay": 1.0,
        }
        await ratchet.start_bot({"webhooks": options}, admins=[admin.user_id])
        assert (await room.ask("!webhooks link ci")).body == "✅ Linked this room to http ci."

        first = await room.send("first message")
        second = await room.send("", content={"msgtype": "m.text", "body": "**second**",
                                              "format": "org.matrix.custom.html",
                                              "formatted_body": "<strong>second</strong>"})
        await _until(lambda: len(received) >= 3)
        assert [r["body"] for r in received] == ["first message", "first message", "**second**"]
        assert received[1]["event_id"] == first and received[2]["event_id"] == second
        assert received[1]["sender"] == admin.user_id and received[1]["room"] == room.room_id
        assert received[2]["formatted_body"] == "<strong>second</strong>"
        for payload, signature in zip(received, signatures, strict=True):
            expected = hmac.new(key.encode(), json.dumps(payload, ensure_ascii=False).encode(), "sha256")
            assert signature == "sha256=" + expected.hexdigest()

        # A message an inbound hook posts into the room is not sent back out (no loop).
        async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{port}/hooks/ci", json={"text": "from a hook"},
            headers={"Authorization": f"Bearer {SECRET}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        await room.expect(lambda e: _body(e) == "from a hook")
        await room.send("third")
        await room.send("fourth")  # a later message instead of a pause: the outbound queue keeps the room's order
        await _until(lambda: len(received) >= 5)
        assert [r["body"] for r in received][3:] == ["third", "fourth"]

        status = await room.ask("!webhooks status")
        assert "out:archive: connected" in status.body and "http: connected" in status.body, status.body
        # The URL's credentials (a token-like path segment, the query string) are in neither the status nor the log.
        assert f"POST http://127.0.0.1:{out_port}/in/[redacted]?[redacted]" in status.body, status.body
        assert URL_TOKEN not in status.body and "sekrit" not in status.body
        assert URL_TOKEN not in caplog.text and "sekrit" not in caplog.text
        assert f"http://127.0.0.1:{out_port}/in/[redacted]?[redacted] answered 500" in caplog.text  # the retry
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------------------------------- hostile senders
# (issue 12, finding 7: which hooks exist, replays, floods, an unbounded queue)


@pytest.mark.e2e
async def test_unknown_hooks_and_bad_credentials_get_the_same_answer(ratchet):
    room = await ratchet.room(plugins={"ping": {}})
    await ratchet.stop_bot()
    port = _free_port()
    hooks = {"ci": {"room": room.room_id, "secret": SECRET},
             "git": {"room": room.room_id, "secret": GIT_SECRET, "auth": "hmac", "template": "push"}}
    await ratchet.start_bot({"webhooks": {"port": port, "hooks": hooks}})
    url = f"http://127.0.0.1:{port}/hooks"
    await _wait_listening(url)
    body = json.dumps({"text": "probe"}).encode()
    bearer = {"Content-Type": "application/json", "Authorization": "Bearer wrong-but-long-enough-0000"}
    unsigned = {"Content-Type": "application/json"}
    answers = []
    async with aiohttp.ClientSession() as http:
        for hook in ("ci", "git", "nope", "also-nope"):
            for headers in (bearer, _signed(body, "not-the-secret-000000000"), unsigned):
                async with http.post(f"{url}/{hook}", data=body, headers=headers) as resp:
                    answers.append((resp.status, await resp.json()))
            async with http.get(f"{url}/{hook}") as resp:
                answers.append((resp.status, await resp.json()))
    probes = [a for i, a in enumerate(answers) if i % 4 != 3]
    assert {status for status, _ in probes} == {401}
    assert len({json.dumps(data, sort_keys=True) for _, data in probes}) == 1, probes  # the very same answer
    assert {status for i, (status, _) in enumerate(answers) if i % 4 == 3} == {405}  # GET: known or not
    assert not [e for e in room.bot_messages() if "probe" in _body(e)]


@pytest.mark.e2e
async def test_signed_hooks_refuse_replays_and_stale_timestamps(ratchet):
    room = await ratchet.room(plugins={"ping": {}})
    await ratchet.stop_bot()
    port = _free_port()
    hooks = {
        "git": {"room": room.room_id, "secret": GIT_SECRET, "auth": "hmac", "template": "push", "max_age": 120},
        "strict": {"room": room.room_id, "secret": GIT_SECRET, "auth": "hmac", "require_timestamp": True},
    }
    await ratchet.start_bot({"webhooks": {"port": port, "hooks": hooks}})
    url = f"http://127.0.0.1:{port}/hooks"
    await _wait_listening(url)
    push = json.dumps(PUSH).encode()

    async def post(hook: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.post(f"{url}/{hook}", data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    # A GitHub-style body-only signature: posted once; the same request again is a replay.
    headers = {**_signed(push), "X-GitHub-Event": "push"}
    status, first = await post("git", push, headers)
    assert status == 200, first
    status, again = await post("git", push, headers)
    assert status == 409 and "already received" in again["error"], again

    # A signed timestamp: fresh is posted, replayed is refused, old is refused, changed is a wrong signature.
    now = str(int(time.time()))
    generic = json.dumps({"text": "stamped"}).encode()
    stamped = _signed(generic, timestamp=now)
    status, answer = await post("strict", generic, stamped)
    assert status == 200, answer
    assert (await post("strict", generic, stamped))[0] == 409
    old = str(int(time.time()) - 600)
    status, answer = await post("strict", json.dumps({"text": "old"}).encode(),
                                _signed(json.dumps({"text": "old"}).encode(), timestamp=old))
    assert status == 401 and "s old; at most 300s is accepted" in answer["error"], answer
    forged = {**stamped, "X-Ratchet-Timestamp": str(int(time.time()) + 1)}
    assert (await post("strict", generic, forged))[0] == 401
    status, answer = await post("strict", json.dumps({"text": "bare"}).encode(),
                                _signed(json.dumps({"text": "bare"}).encode()))
    assert status == 401 and "X-Ratchet-Timestamp is required" in answer["error"], answer

    # Exactly the two good requests were posted.
    async with aiohttp.ClientSession() as http, http.post(
        f"{url}/strict", data=json.dumps({"text": "sentinel"}).encode(),
        headers=_signed(json.dumps({"text": "sentinel"}).encode(), timestamp=str(int(time.time()))),
    ) as resp:
        sentinel = (await resp.json())["event_id"]
    await room.expect(lambda e: e.event_id == sentinel)
    bodies = [_body(e) for e in room.bot_messages()]
    assert len(bodies) == 3 and bodies[0].startswith("alice pushed") and bodies[1] == "stamped", bodies


@pytest.mark.e2e
async def test_a_flooding_hook_gets_429_and_a_full_queue_503(ratchet, caplog):
    caplog.set_level(logging.INFO, "ratchet")
    room = await ratchet.room(plugins={"ping": {}})
    await ratchet.stop_bot()
    port = _free_port()
    hooks = {"ci": {"room": room.room_id, "secret": SECRET}, "ops": {"room": room.room_id, "secret": SECRET}}
    options = {"port": port, "hooks": hooks, "sender_rate_limit": 0.1, "sender_rate_burst": 4,
               "inbound_queue_size": 2}
    await ratchet.start_bot({"webhooks": options})
    url = f"http://127.0.0.1:{port}/hooks"
    await _wait_listening(url)
    auth = {"Authorization": f"Bearer {SECRET}"}
    async with aiohttp.ClientSession() as http:
        statuses = []
        for i in range(6):
            async with http.post(f"{url}/ci", json={"text": f"ci {i}"}, headers=auth) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert resp.headers["Retry-After"] and "too fast" in (await resp.json())["error"]
        assert statuses == [200, 200, 200, 200, 429, 429], statuses
        notice = await room.expect(lambda e: "sending too fast" in _body(e))
        assert notice.body == "⚠️ ci is sending too fast: their messages are not relayed until they slow down."

        # The queue toward Matrix: the bridge is held while "ops" posts; one message is being posted, two wait,
        # the next is refused with 503 at once.
        bridge = ratchet.bot.runtime.host.plugins["webhooks"].instance
        release = asyncio.Event()
        real = bridge.handle_remote

        async def held(message):
            await release.wait()
            return await real(message)

        bridge.handle_remote = held
        pending = [asyncio.create_task(http.post(f"{url}/ops", json={"text": f"ops {i}"}, headers=auth))
                   for i in range(3)]
        await _until(lambda: bridge._inbound.qsize() == 2)
        async with http.post(f"{url}/ops", json={"text": "ops 3"}, headers=auth) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"], await resp.text()
        release.set()
        for task in pending:
            async with await task as resp:
                assert resp.status == 200, await resp.text()
    for i in range(3):  # (the three requests ran concurrently: in any order)
        await room.expect(lambda e, i=i: _body(e) == f"ops {i}")
    bodies = [_body(e) for e in room.bot_messages()]
    assert [b for b in bodies if b.startswith("ci ")] == ["ci 0", "ci 1", "ci 2", "ci 3"]
    assert sorted(b for b in bodies if b.startswith("ops ")) == ["ops 0", "ops 1", "ops 2"]  # not "ops 3"
    full = [r for r in caplog.records if "refusing new ones" in r.getMessage()]
    flood = [r for r in caplog.records if "sending faster than" in r.getMessage()]
    assert len(full) == 1 and len(flood) == 1 and full[0].levelname == flood[0].levelname == "WARNING"


# ------------------------------------------------------------------------------------------- one port with /metrics
# (issue 14: one aiohttp server shared with the webhooks bridge where both run)


@pytest.mark.e2e
async def test_hooks_share_the_bots_http_listener_with_metrics(ratchet, caplog):
    caplog.set_level(logging.INFO, "ratchet")
    room = await ratchet.room(plugins={"ping": {}})
    await ratchet.stop_bot()
    own_port = _free_port()  # the plugin's own port: not used while the bot's listener runs
    hooks = {"ci": {"room": room.room_id, "secret": SECRET}}
    # Larger than the listener's own body bound (64 KiB for its routes): the hooks read their body themselves.
    max_body = 200_000
    await ratchet.start_bot({"ping": {}, "webhooks": {"port": own_port, "hooks": hooks, "max_body_bytes": max_body}},
                            http={"port": 0})
    listener = ratchet.bot.runtime.http
    port = listener.bound_port
    url = f"http://127.0.0.1:{port}/hooks"
    await _wait_listening(url)
    assert f"http: mounted on the bot's HTTP listener (http://127.0.0.1:{port}/hooks/<hook>" in caplog.text
    with pytest.raises(OSError):  # nothing listens on the plugin's own port
        await asyncio.open_connection("127.0.0.1", own_port)
    auth = {"Authorization": f"Bearer {SECRET}"}

    async with aiohttp.ClientSession() as http:
        # An inbound hook post reaches the room (encrypted)...
        async with http.post(f"{url}/ci", json={"text": "shared port"}, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            first = (await resp.json())["event_id"]
        posted = await room.expect(lambda e: e.event_id == first)
        assert posted.decrypted and posted.body == "shared port"
        # ...and /metrics answers on the same port, with the bridge's connection and the hook's post counted.
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            metrics = await resp.text()
        assert 'ratchet_bridge_connected{network="http",plugin="webhooks"} 1.0' in metrics, metrics
        assert 'ratchet_plugin_up{plugin="webhooks",state="running"} 1.0' in metrics
        async with http.get(f"http://127.0.0.1:{port}/health/live") as resp:
            assert resp.status == 200
        # The hooks' own rules hold on the shared listener: POST only, the same 401 for unknown hooks.
        async with http.get(f"{url}/ci") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
        async with http.post(f"{url}/nope", json={"text": "x"}, headers=auth) as resp:
            assert resp.status == 401
        # A body above the listener's 64 KiB but within the hook's max_body_bytes is read and posted.
        padded = b'{"text": "padded"}' + b" " * 100_000
        async with http.post(f"{url}/ci", data=padded,
                             headers={**auth, "Content-Type": "application/json"}) as resp:
            assert resp.status == 200, await resp.text()
            padded_id = (await resp.json())["event_id"]
        await room.expect(lambda e: e.event_id == padded_id)

    # The hook's max_body_bytes still bounds what it reads: refused from Content-Length before the body is read...
    status, data, headers = await _raw_request(
        port,
        f"POST /hooks/ci HTTP/1.1\nHost: x\nAuthorization: Bearer {SECRET}\nContent-Type: application/json\n"
        "Content-Length: 10000000\n",
        b'{"text": "',
    )
    assert status == 413 and f"at most {max_body}" in data["error"], data
    assert headers.get("connection", "").lower() == "close", headers
    # ...and a chunked body as soon as it passes the limit.
    chunk = b"x" * 60_000
    status, data, _ = await _raw_request(
        port,
        f"POST /hooks/ci HTTP/1.1\nHost: x\nAuthorization: Bearer {SECRET}\nContent-Type: application/json\n"
        "Transfer-Encoding: chunked\n",
        b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)),
    )
    assert status == 413, data

    # A reload unmounts the old endpoint and mounts the new one on the same listener.
    await ratchet.bot.runtime.manager.reload("webhooks")
    assert ratchet.bot.runtime.http is listener and listener.bound_port == port
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the new version's endpoint is mounted when its connection is up
            async with http.post(f"{url}/ci", json={"text": "after reload"}, headers=auth) as resp:
                if resp.status != 404:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 200, await resp.text()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
    await room.expect(lambda e: _body(e) == "after reload")
    bodies = [_body(e) for e in room.bot_messages()]
    assert bodies == ["shared port", "padded", "after reload"], bodies


@pytest.mark.e2e
async def test_hooks_keep_their_own_port_without_the_bots_listener(ratchet, caplog):
    caplog.set_level(logging.INFO, "ratchet")
    room = await ratchet.room(plugins={"ping": {}})
    await ratchet.stop_bot()
    port = _free_port()
    await ratchet.start_bot({"webhooks": {"port": port, "hooks": {"ci": {"room": room.room_id, "secret": SECRET}}}})
    assert ratchet.bot.runtime.http is None
    url = f"http://127.0.0.1:{port}/hooks"
    await _wait_listening(url)
    assert f"http: listening on http://127.0.0.1:{port}/hooks/<hook>" in caplog.text
    assert "mounted on the bot's HTTP listener" not in caplog.text
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/ci", json={"text": "own port"}, headers={"Authorization": f"Bearer {SECRET}"}
                             ) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 404  # the bot's endpoints are not served there
    await room.expect(lambda e: _body(e) == "own port")
