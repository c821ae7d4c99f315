"""Shared pieces of the fault and abuse suite (issue 7): own homeservers, the fault proxy, the ledger observable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import pytest

from bot.testing.proxy import FaultProxy
from bot.testing.synapse import SynapseServer


@pytest.fixture
def own_synapse(tmp_path) -> Iterable[Callable[..., SynapseServer]]:
    """Factory for a Synapse of the test's own (to stop, restart or reconfigure); all are stopped afterwards."""
    servers: list[SynapseServer] = []

    def make(**kwargs) -> SynapseServer:
        server = SynapseServer(tmp_path / f"hs{len(servers)}", **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
async def fault_proxy() -> AsyncIterator[Callable[..., FaultProxy]]:
    """Factory ``await fault_proxy(server_url)`` for started :class:`FaultProxy` instances, closed afterwards."""
    proxies: list[FaultProxy] = []

    async def make(upstream: str, **kwargs) -> FaultProxy:
        proxy = await FaultProxy(upstream, **kwargs).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()
