"""The event loop's side of the outbox's store process: :class:`StoreProcess` starts
:mod:`gateway.uplink._outbox_store` as a child, sends it requests and awaits its answers, with no thread of its own.

If the child dies (killed, out of memory), every request in flight fails with :class:`OSError` (its transaction
rolled back: nothing in it was accepted) and the next request starts a new child, which opens the file again first.
A failure the child reports comes back as the exception it was there: :class:`sqlite3.Error` or :class:`OSError`;
a file that is not an outbox of this version, or that another process has open as its outbox, is a
:class:`~gateway.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import marshal
import sqlite3
import sys
from collections import deque
from pathlib import Path
from typing import Any

import structlog

from gateway.errors import ConfigError
from gateway.uplink import _outbox_store
from gateway.uplink._outbox_store import KINDS, frame

__all__ = ["StoreProcess"]

log = structlog.get_logger("gateway.uplink.outbox")

_SCRIPT = Path(_outbox_store.__file__).resolve()
_CLOSE_TIMEOUT_S = 5.0
_PIPE_BYTES = 4 * 1024 * 1024


class _Pipe(asyncio.SubprocessProtocol):
    """Splits the child's stdout into frames and hands each answer to the oldest request waiting."""

    def __init__(self) -> None:
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.exited = False
        self.gone = asyncio.Event()
        self._buffer = bytearray()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            end = 4 + int.from_bytes(buffer[:4], "little")
            if len(buffer) < end:
                return
            answer = marshal.loads(buffer[4:end])  # noqa: S302 (our own child's pipe, not the network)
            del buffer[:end]
            if self.waiting:
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(answer)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd != 1:
            return
        # Its stdout closed: every answer it wrote was delivered above (data comes before the loss), none will come.
        self.exited = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(OSError("the outbox store process exited before answering"))

    def process_exited(self) -> None:
        self.exited = True
        self.gone.set()


class StoreProcess:
    """``await open()`` starts the child and opens ``path``; then ``commit``, ``page``; ``close()`` at the end.

    ``rows`` and ``bytes``: what the store holds per kind, as of its last answer to ``open`` or ``commit``.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self.rows = dict.fromkeys(KINDS, 0)
        self.bytes = dict.fromkeys(KINDS, 0)
        self.top = 0  # the highest id in the file when it was last opened
        self._transport: asyncio.SubprocessTransport | None = None
        self._pipe: _Pipe | None = None
        self._opened = False  # between open() and close(): a child that died is started again
        self._restarting = asyncio.Lock()  # the writer and the sender may both find it dead
        self.restarts = 0

    async def open(self) -> None:
        """Start the child and open the file (raises ConfigError if it cannot be an outbox)."""
        try:
            await self._start()
            self._opened = True
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise ConfigError(f"outbox {self.path}: cannot be opened as SQLite ({exc}); fix the path, its "
                              f"permissions, or move the file aside") from exc
        except BaseException:
            await self.close()
            raise

    async def commit(self, inserts: list[tuple[int, str, bytes]], ack_ids: list[int], ack_kinds: list[str],
                     ack_sizes: list[int], max_rows: int, max_bytes: int) -> list[tuple[int, str, int]]:
        """One transaction (see :meth:`gateway.uplink._outbox_store.Store.commit`); returns what was dropped."""
        dropped, self.rows, self.bytes = await self._call(
            ("commit", inserts, ack_ids, ack_kinds, ack_sizes, max_rows, max_bytes))
        return dropped  # type: ignore[no-any-return]

    async def page(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        return await self._call(("page", after, limit))  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the file and let the child exit (killed if it does not within 5 s)."""
        self._opened = False
        transport, pipe, self._transport, self._pipe = self._transport, self._pipe, None, None
        if transport is None or pipe is None:
            return
        try:
            if not pipe.exited:
                with contextlib.suppress(OSError, sqlite3.Error, TimeoutError):
                    async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                        await self._send(transport, pipe, ("close",))
                        await pipe.gone.wait()
        finally:
            if transport.get_returncode() is None:
                with contextlib.suppress(ProcessLookupError):
                    transport.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                        await pipe.gone.wait()
            transport.close()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, self._pipe = await loop.subprocess_exec(
            _Pipe, sys.executable, "-I", "-S", str(_SCRIPT), str(self.path), self.synchronous, stderr=None)
        _widen(self._transport)
        try:
            self.top, self.rows, self.bytes = await self._send(self._transport, self._pipe, ("open",))
        except BaseException:
            with contextlib.suppress(ProcessLookupError):  # a child that could not open the file is of no use
                self._transport.kill()
            self._transport.close()  # the next call starts anew
            self._transport = self._pipe = None
            raise

    async def _call(self, request: tuple[Any, ...]) -> Any:
        async with self._restarting:
            if not self._opened:
                raise OSError(f"outbox store {self.path} is closed")
            stdin = self._transport.get_pipe_transport(0) if self._transport is not None else None
            if self._pipe is None or self._pipe.exited or stdin is None or stdin.is_closing():
                if self._transport is not None:
                    log.error("outbox store process died; starting a new one", path=str(self.path),
                              returncode=self._transport.get_returncode(), restarts=self.restarts + 1)
                    self._transport.close()  # kills it if it is not quite dead
                self.restarts += 1
                try:
                    await self._start()
                except ConfigError as exc:  # e.g. another process took the file meanwhile: this request fails
                    raise OSError(str(exc)) from exc
            transport, pipe = self._transport, self._pipe
        assert transport is not None
        assert pipe is not None
        return await self._send(transport, pipe, request)

    @staticmethod
    async def _send(transport: asyncio.SubprocessTransport, pipe: _Pipe, request: tuple[Any, ...]) -> Any:
        stdin = transport.get_pipe_transport(0)
        if stdin is None or stdin.is_closing() or pipe.exited:
            raise OSError("the outbox store process is not running")
        data = frame(request)  # first: a request that cannot be framed must not leave a future waiting
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pipe.waiting.append(future)
        stdin.write(data)  # type: ignore[attr-defined]
        answer = await future
        if answer[0] == 0:
            return answer[1]
        _, kind, message = answer
        if kind == "sqlite":
            raise sqlite3.OperationalError(message)
        if kind == "outbox":
            raise ConfigError(message)
        raise OSError(message)


def _widen(transport: asyncio.SubprocessTransport) -> None:
    """Make both pipes as large as the system allows (1 MiB by default on Linux): a transaction's rows, or a page
    of a backlog, go in one write instead of trickling through 64 KiB, one event-loop turn per piece (measured:
    a commit's round trip 48 ms -> 15 ms while publishing flat out)."""
    with contextlib.suppress(OSError, ValueError):
        size = min(int(Path("/proc/sys/fs/pipe-max-size").read_text()), _PIPE_BYTES)
        for fd in (0, 1):
            end = transport.get_pipe_transport(fd)
            pipe = end.get_extra_info("pipe") if end is not None else None
            if pipe is not None:
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, size)
