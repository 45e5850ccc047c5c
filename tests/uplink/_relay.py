"""A loopback TCP relay between a client and the broker that can hold back what the broker sends (its PUBACKs).

TLS stays end to end (the relay only moves bytes). With :meth:`Relay.hold` the client's messages still reach the
broker (and the subscribers), but no acknowledgement comes back: exactly the state a crash leaves behind when
messages were delivered but not yet acknowledged."""

from __future__ import annotations

import asyncio
import contextlib


class Relay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._held = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        """From now on, nothing the broker sends reaches the client."""
        self._held.set()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        self._writers += [client_writer, broker_writer]
        for task in (asyncio.create_task(self._pump(client_reader, broker_writer, held=False)),
                     asyncio.create_task(self._pump(broker_reader, client_writer, held=True))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, held: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if held and self._held.is_set():
                    continue  # swallowed: the client never hears of it
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            with contextlib.suppress(OSError):
                writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
