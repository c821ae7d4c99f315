"""A TCP proxy on 127.0.0.1 that can cut the network like a partition does: bytes stop flowing both ways while the
sockets stay open, so neither side sees a reset, only silence (``kill -9`` of a peer closes its sockets; a cut
network does not). Used between a bot and its PostgreSQL in the failover tests::

    proxy = await TcpProxy("127.0.0.1", pg.port).start()
    url = f"postgresql://user@127.0.0.1:{proxy.port}/db"
    ...
    proxy.cut()        # a partition: silence, connections stay open, new ones hang
    proxy.restore()    # the network is back (old connections stay dead; new ones work)
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards connections on ``127.0.0.1:port`` to ``host:upstream_port`` until :meth:`cut`."""

    def __init__(self, host: str, upstream_port: int) -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """Stop forwarding, both ways, on every connection (old and new); keep the sockets open."""
        self._cut = True

    def restore(self) -> None:
        """Forward again for connections made from now on (those that lived through the cut stay silent)."""
        self._cut = False

    async def close(self) -> None:
        """Close the listener and every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._cut:
            await self._hold(reader)  # a new connection during a partition: accepted by the kernel, then silence
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        born_cut = [False]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, born_cut))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, cut_once: list[bool]) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if self._cut or cut_once[0]:
                    cut_once[0] = True  # this connection lived through a cut: it stays dead
                    continue
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if not (self._cut or cut_once[0]):
                dst.close()
