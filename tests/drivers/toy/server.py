"""A tiny real TCP server speaking the toy protocol, on 127.0.0.1 (for the toy driver's tests)."""

import asyncio
import contextlib
import math


class ToyServer:
    """Tag values by name; NaN answers BAD; `token` is the only accepted HELLO."""

    def __init__(self, values: dict[str, float], writable: set[str], token: str = "") -> None:
        self.values, self.writable, self.token = dict(values), set(writable), token
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> "ToyServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port or self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._clients):
                w.close()
            await self._server.wait_closed()
            self._server = None

    def _answer(self, words: list[str], greeted: bool) -> str:
        verb = words[0] if words else ""
        if verb == "HELLO":
            return "OK" if " ".join(words[1:]) == self.token else "DENIED"
        if not greeted:
            return "ERR say HELLO first"
        if verb == "READ":
            got = [self.values.get(n, math.nan) for n in words[1:]]
            return "OK " + " ".join("BAD" if math.isnan(v) else repr(v) for v in got)
        if verb == "WRITE" and len(words) == 3:
            if words[1] not in self.writable:
                return "ERR read-only"
            self.values[words[1]] = float(words[2])
            return "OK"
        return "ERR unknown request"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        greeted = False
        with contextlib.suppress(OSError):
            while line := await reader.readline():
                words = line.decode().split()
                answer = self._answer(words, greeted)
                greeted = greeted or (words[:1] == ["HELLO"] and answer == "OK")
                writer.write(answer.encode() + b"\n")
                await writer.drain()
        self._clients.discard(writer)
        writer.close()
