"""The fault proxy itself, against a tiny local upstream (no Synapse)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from bot.testing.proxy import FaultProxy


@pytest.fixture
async def upstream():
    hits: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"path": request.path, "raw": request.raw_path, "body": await request.text()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", hits
    await runner.cleanup()


async def test_rules_fail_delay_hold_drop_rewrite_and_count(upstream):
    url, hits = upstream
    async with FaultProxy(url) as proxy, aiohttp.ClientSession() as http:
        proxy.fail(r"/a$", 504, times=2)
        proxy.malformed(r"/b$", times=1)
        proxy.delay(r"/c$", 0.3, times=1)
        proxy.rewrite(r"/d$", lambda body, req: {**body, "rewritten": req.method})
        proxy.drop(r"/e$", times=1)
        proxy.drop(r"/f$", times=1, after_forward=True)
        held = proxy.hold(r"/g$")

        statuses = []
        for _ in range(3):
            async with http.get(f"{proxy.url}/x/a?q=%21x") as resp:
                statuses.append(resp.status)
        assert statuses == [504, 504, 200]
        async with http.get(f"{proxy.url}/b") as resp:
            with pytest.raises(aiohttp.ContentTypeError if resp.content_type != "application/json" else ValueError):
                await resp.json()
        t0 = time.monotonic()
        async with http.get(f"{proxy.url}/c") as resp:
            assert resp.status == 200
        assert time.monotonic() - t0 >= 0.3
        async with http.post(f"{proxy.url}/d", data=b"{}") as resp:
            assert (await resp.json())["rewritten"] == "POST"
        with pytest.raises(aiohttp.ClientError):
            async with http.post(f"{proxy.url}/e") as resp:  # (aiohttp retries a GET on a reused connection)
                await resp.read()
        assert "/e" not in hits, "dropped before forwarding"
        with pytest.raises(aiohttp.ClientError):
            async with http.post(f"{proxy.url}/f") as resp:
                await resp.read()
        assert "/f" in hits, "forwarded, then the answer dropped"
        pending = asyncio.ensure_future(http.get(f"{proxy.url}/g"))
        await held.wait_hit(5)
        await asyncio.sleep(0.1)
        assert not pending.done() and "/g" not in hits
        held.release()
        async with await pending as resp:
            assert resp.status == 200
        async with http.get(URL(f"{proxy.url}/rooms/%21r%3Ahs/a?q=%21x", encoded=True)) as resp:
            assert (await resp.json())["raw"] == "/rooms/%21r%3Ahs/a?q=%21x", "forwarded as it was encoded"

    assert proxy.count(r"/x/a$") == 3 and proxy.count(r"/a$") == 4
    assert [s.status for s in proxy.requests(r"/e$|/f$")] == [0, 0]


async def test_upstream_down_is_a_502_or_a_dropped_connection():
    async with aiohttp.ClientSession() as http:
        for mode, expected in (("502", 502), ("drop", None)):
            async with FaultProxy("http://127.0.0.1:9", upstream_down=mode) as proxy:
                if expected is None:
                    with pytest.raises(aiohttp.ClientError):
                        async with http.post(f"{proxy.url}/sync") as resp:
                            await resp.read()
                else:
                    async with http.get(f"{proxy.url}/sync") as resp:
                        assert resp.status == expected
                assert proxy.count("/sync") == 1


def test_only_a_local_upstream():
    with pytest.raises(ValueError):
        FaultProxy("http://192.0.2.1:8008")
