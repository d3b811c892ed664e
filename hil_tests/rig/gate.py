"""A TCP gate in front of a PLC: the place where communication faults happen.

Clients connect to the gate's port; it forwards bytes to the PLC (simulated or real). It can
delay every response, swallow requests (accept but never answer), close every connection,
or stop listening (a PLC that is down refuses connections). Because it works on bytes, the
same comm faults apply to OPC UA, Modbus, and to real PLCs placed behind it.
"""

from __future__ import annotations

import asyncio
import contextlib


class Gate:
    """Forwards 127.0.0.1:`port` (0 = pick a free one, kept across restarts) to `upstream`."""

    def __init__(
        self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.delay_s = 0.0  # slow_responses: added before every chunk sent back to a client
        self.frozen = False  # never_answers: requests are read and dropped
        self.connections = 0  # accepted since start (for tests and the report)
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> Gate:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop_listening(self) -> None:
        """Refuse new connections (the port is closed) and drop the open ones: a PLC going down."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            self.drop_connections()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def stop(self) -> None:
        """Close everything; handlers end on their own once their sockets are closed."""
        await self.stop_listening()
        self.drop_connections()
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:  # stuck on a dead upstream connect: last resort
                task.cancel()

    def drop_connections(self) -> int:
        """Close every client connection now (connection_drop); returns how many were open."""
        n = len(self._links)
        for client, upstream in list(self._links):
            client.close()
            if upstream is not None:
                upstream.close()
        self._links.clear()
        return n

    def thaw(self) -> None:
        """End never_answers; connections that were swallowed are out of sync, so they are closed."""
        self.frozen = False
        self.drop_connections()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._links.add(link)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return  # the PLC behind the gate is down: close the client's connection
            self._links.discard(link)
            link = (writer, up_writer)
            self._links.add(link)
            await asyncio.gather(
                self._pipe(reader, up_writer, upstream=True), self._pipe(up_reader, writer, upstream=False)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._links.discard(link)
            for w in link:
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self.frozen:
                    continue  # accepted, never answered
                if not upstream and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
