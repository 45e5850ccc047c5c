"""The durable outbox: telemetry, envelopes and events are stored in SQLite before they are sent, deleted only on
PUBACK, and replayed in order after a broker outage or a crash: :class:`Outbox`.

Durability: WAL journal with ``synchronous=FULL`` by default. A message is *accepted* when :meth:`Outbox.put`
returns (or :meth:`Outbox.durable` for its id, after :meth:`Outbox.put_nowait`): after the transaction holding
it committed, which in FULL mode means the WAL was fsynced, so it survives a crash of this process *and* a power
cut. NORMAL would survive a process crash only (the last transactions can roll back on power loss, which an edge
computer on a pole will see). FULL costs one fsync per transaction; with group commit (everything put while the previous
transaction was being written joins the next one) the fsyncs follow the disk's pace, not the message rate.
``tests/benchmarks/bench_uplink.py`` measures FULL beside NORMAL.

Order and duplicates: ids are given in put order and messages are sent in id order, never before they are
stored. After every (re)connect everything not yet acknowledged is sent again from the oldest, so the broker sees
each message at least once, in order; a message sent again carries the same signed bytes (same ``id`` and
``seq``) so a head-end drops the duplicate. Every message put before the current connection came up is sent
*historical*: MQTT v5 user property ``historical=1`` (the payload stays byte-identical, so its signature verifies).

Bounds and drop policy: at most ``max_rows`` messages and ``max_bytes`` payload bytes are kept. When a commit
would exceed either, the oldest messages are dropped in this order: telemetry first (newer readings replace it),
then events, then envelopes, but never the newest envelope (the limits in force), so envelopes go only once no
telemetry or event is left. A message dropped this way may already have been accepted: that is the policy, and
each drop is counted per kind in :attr:`Outbox.stats` and logged (the first at once, then at most one summary
line every 10 s while dropping continues, and at close). A message the broker refuses (PUBACK reason >= 0x80,
e.g. not authorised by its ACL) cannot succeed by resending: it is deleted, counted and logged.

Processes: SQLite runs in a process of its own (:mod:`gateway.uplink._outbox_store`, started and restarted by
:mod:`gateway.uplink._outbox_process`), so the loop neither waits on the disk nor shares the GIL with a database
thread; everything else runs on the event loop, with no thread. While replaying a backlog, pages are read from disk
(counted in :attr:`OutboxStats.paged`); once caught up, freshly committed messages go straight from memory to the
uplink. Acknowledged messages are deleted by ranges of ids, in the next transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from itertools import starmap
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, Protocol, Self

import structlog

from gateway.errors import ConfigError, UplinkUnavailable
from gateway.uplink import _outbox_store
from gateway.uplink._outbox_process import StoreProcess

__all__ = ["DROP_ORDER", "MessageKind", "Outbox", "OutboxStats", "Transport"]

log = structlog.get_logger("gateway.uplink.outbox")

_CONNECTION_LOST = -1  # what Transport.publish's on_ack receives when the connection dropped first
_ID, _KIND, _PAYLOAD = itemgetter(0), itemgetter(1), itemgetter(2)
_DROP_LOG_EVERY_S = 10.0
_FAILURES_KEPT = 64  # failed id ranges remembered for durable()
_RETRY_S = 0.5  # after a failed transaction or page read


class MessageKind(StrEnum):
    """What the outbox carries; the value is the MQTT topic suffix."""

    TELEMETRY = "telemetry"
    EVENTS = "events"
    ENVELOPE = "envelope"


_KINDS = {k.value: k.value for k in MessageKind}  # accepts members and plain values; maps both to the plain str

#: Which kind goes first when the outbox is full (oldest first within a kind; the newest envelope never).
DROP_ORDER = tuple(map(MessageKind, _outbox_store.DROP_ORDER))  # the store applies it; defined there


class Transport(Protocol):
    """What the outbox sends through (:class:`gateway.uplink._mqtt.MqttUplink` is one)."""

    def room(self) -> int: ...

    async def wait_room(self) -> None: ...

    def add_listener(self, listener: Callable[[bool], object]) -> None: ...

    def remove_listener(self, listener: Callable[[bool], object]) -> None: ...

    def publish(self, topic_suffix: str, payload: bytes, *, on_ack: Callable[[int], object],
                historical: bool = False) -> None: ...


class _Row(NamedTuple):
    id: int
    kind: str  # a MessageKind value
    payload: bytes


@dataclass(slots=True)
class OutboxStats:
    """Counters since open, and what the store holds now."""

    stored_rows: int = 0
    stored_bytes: int = 0
    accepted: int = 0
    sent: int = 0
    sent_historical: int = 0
    paged: int = 0  # messages read back from disk to be sent: a backlog (after an outage or a restart); 0 while live
    acked: int = 0
    refused: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in MessageKind})
    write_errors: int = 0
    commits: int = 0


class Outbox:
    """Stores messages in ``path`` (SQLite) and sends them through ``transport`` in order, until acknowledged.

    ``async with Outbox(path, uplink) as outbox: await outbox.put(MessageKind.TELEMETRY, signed_bytes)``. Construction
    does no I/O; entering opens (creating) the database and starts the writer and the sender; leaving commits what
    was accepted and acknowledged so far and closes it. ``batch_rows``: most messages per transaction;
    ``memory_rows``: most messages queued in memory for sending (the rest are paged from disk).
    """

    def __init__(self, path: str | Path, transport: Transport, *, max_rows: int = 100_000,
                 max_bytes: int = 64 * 1024 * 1024, synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 batch_rows: int = 2048, memory_rows: int = 8192, page_rows: int = 1024) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ConfigError(f"outbox bounds: max_rows ({max_rows}) and max_bytes ({max_bytes}) must be >= 1")
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(f'outbox synchronous: {synchronous!r}; fix: "FULL" (survives power loss) or "NORMAL"')
        if min(batch_rows, memory_rows, page_rows) < 1:
            raise ConfigError("outbox batch_rows, memory_rows and page_rows must be >= 1")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.stats = OutboxStats()
        self._transport = transport
        self._store = StoreProcess(self.path, synchronous)
        self._batch_rows = batch_rows
        self._memory_rows = memory_rows
        self._page_rows = page_rows
        self._tasks: list[asyncio.Task[None]] = []
        self._next_id = 1
        self._horizon = 0  # ids <= this were put before the current connection came up: sent as historical
        # writer state
        self._pending: deque[_Row] = deque()
        self._durable_upto = 0  # every id up to this one is committed (or failed: see _failed)
        self._failed: list[tuple[int, int]] = []  # id ranges whose transaction failed: never accepted
        self._failed_horizon = 0  # ids up to here may have failed in ranges no longer kept: durable() says so
        self._acked: list[_Row] = []  # acknowledged (or refused), to delete in the next transaction
        self._deleting: set[int] = set()  # in the transaction being committed now
        self._wake_writer = asyncio.Event()
        self._writer_idle = False  # waiting on _wake_writer: only then is setting it needed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._committed = asyncio.Event()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # durable(): a heap by id
        self._waiter_seq = itertools.count()
        # sender state
        self._sendq: deque[_Row] = deque()
        self._tail_live = False  # True: every committed row after _last_queued is in _sendq (no disk read needed)
        self._last_queued = 0  # highest id queued or sent on this connection
        self._inflight: dict[int, _Row] = {}
        self._epoch = 0  # bumped on each connection loss: pages read before it are stale
        self._wake_sender = asyncio.Event()
        self._closing = False
        self._drops_unlogged: dict[str, int] = {}
        self._last_drop_log = float("-inf")
        self._refusals_logged: set[tuple[str, int]] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the database (replaying whatever a previous run left) and start the writer and the sender."""
        if self._tasks:
            return
        if self._closing:
            raise RuntimeError(f"outbox {self.path} was closed: an Outbox opens once, make a new one")
        await self._store.open()
        self._loop = asyncio.get_running_loop()
        top = self._store.top
        self._next_id = top + 1
        self._horizon = top  # whatever a previous run left is historical
        self._refresh_totals()
        if self.stats.stored_rows:
            log.info("outbox has messages from before: they will be sent as historical", path=str(self.path),
                     rows=self.stats.stored_rows, bytes=self.stats.stored_bytes)
        self._transport.add_listener(self._on_connection)
        self._tasks = [asyncio.create_task(self._write_loop(), name="outbox writer"),
                       asyncio.create_task(self._send_loop(), name="outbox sender")]
        self._tasks[0].add_done_callback(lambda _: self._notify_committed())  # durable() must not wait on it

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop sending, commit what is pending (accepted messages, acknowledgements), close the database."""
        if not self._tasks:
            return
        self._closing = True
        self._loop = None
        writer, sender = self._tasks
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        with contextlib.suppress(TimeoutError):  # acknowledgements on their way save a resend next time
            async with asyncio.timeout(min(1.0, timeout_s)):
                while self._inflight:
                    await self._committed.wait()
        self._transport.remove_listener(self._on_connection)
        self._wake_writer.set()
        try:
            await asyncio.wait_for(asyncio.shield(writer), timeout_s)
        except TimeoutError:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self._pending:
            self._fail(list(self._pending), "outbox closed before they were stored")
        self._pending.clear()
        self._log_drops(time.monotonic())
        await self._store.close()
        self._tasks = []
        self._notify_committed()  # wake anyone still waiting in durable()

    # -- accepting -------------------------------------------------------------------------------------------------

    def put_nowait(self, kind: MessageKind | str, payload: bytes) -> int:
        """Queue ``payload`` (already signed) for storing and return its id at once; it is *accepted* once
        :meth:`durable` for that id returns. For producers that pipeline: fewer round trips than :meth:`put`."""
        if self._loop is None or self._closing:
            raise UplinkUnavailable(f"outbox {self.path} is not open")
        if kind not in _KINDS:
            raise ValueError(f"outbox message kind {kind!r}: use one of {', '.join(_KINDS)}")
        if payload.__class__ is not bytes:
            raise TypeError(f"outbox payload must be bytes (the signed message), not {type(payload).__name__}")
        if len(payload) > self.max_bytes:
            raise ValueError(f"outbox: a {len(payload)}-byte message can never fit max_bytes={self.max_bytes}")
        row_id = self._next_id
        self._next_id += 1
        self._pending.append(_Row(row_id, _KINDS[kind], payload))
        if self._writer_idle:
            self._writer_idle = False
            self._wake_writer.set()
        return row_id

    async def put(self, kind: MessageKind | str, payload: bytes) -> int:
        """Store ``payload`` durably and return its id; it is then sent (again after outages) until acknowledged.
        Raises :class:`UplinkUnavailable` if it could not be stored (it was not accepted)."""
        row_id = self.put_nowait(kind, payload)
        await self.durable(row_id)
        return row_id

    async def durable(self, row_id: int) -> None:
        """Until message ``row_id`` (and every one put before it) is stored durably: accepted. Raises
        :class:`UplinkUnavailable` if its transaction failed (disk full, I/O error) or the outbox closed first."""
        if self._durable_upto < row_id and self._tasks and not self._tasks[0].done():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (row_id, next(self._waiter_seq), waiter))
            await waiter  # woken once its id is durable or failed, or the writer ended (not at every commit)
        for first, last in self._failed:
            if first <= row_id <= last:
                raise UplinkUnavailable(f"outbox {self.path}: message {row_id} was not stored")
        if 0 < row_id <= self._failed_horizon:
            raise UplinkUnavailable(f"outbox {self.path}: message {row_id} is older than the {_FAILURES_KEPT} "
                                    f"failed transactions remembered; count it as not stored")
        if self._durable_upto < row_id:
            raise UplinkUnavailable(f"outbox {self.path} closed before message {row_id} was stored")

    async def wait_empty(self, timeout_s: float | None = None) -> None:
        """Until everything accepted so far was acknowledged and deleted (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while self._pending or self._acked or self._deleting or self._inflight or self.stats.stored_rows:
                await self._committed.wait()

    # -- the writer: one transaction at a time, each holding everything that queued up meanwhile --------------------

    async def _write_loop(self) -> None:
        while True:
            if not self._pending and not self._acked:
                if self._closing:
                    return
                self._wake_writer.clear()
                self._writer_idle = True
                await self._wake_writer.wait()
                continue
            if len(self._pending) <= self._batch_rows:
                rows = list(self._pending)
                self._pending.clear()
            else:
                rows = [self._pending.popleft() for _ in range(self._batch_rows)]
            acked, self._acked = self._acked, []
            self._deleting.update(map(_ID, acked))
            try:
                dropped = await self._store.commit(list(map(tuple, rows)),  # type: ignore[arg-type] # plain tuples
                                                   list(map(_ID, acked)),
                                                   list(map(_KIND, acked)), list(map(len, map(_PAYLOAD, acked))),
                                                   self.max_rows, self.max_bytes)
            except Exception as exc:  # sqlite3.Error, OSError (the store died, the disk): never the writer's end
                self._deleting.difference_update(map(_ID, acked))
                self._acked.extend(acked)  # deleted with a later transaction
                self.stats.write_errors += 1
                if rows:
                    self._fail(rows, f"write failed: {exc}")
                    self._tail_live = False  # a store process that died after committing them: read the disk
                self._notify_committed()
                if not self._closing:
                    await asyncio.sleep(_RETRY_S)
                continue
            self._deleting.difference_update(map(_ID, acked))
            self.stats.commits += 1
            self.stats.accepted += len(rows)
            self._refresh_totals()
            gone = self._note_drops(dropped)
            if rows:
                self._durable_upto = rows[-1].id
                fresh = rows if not gone and rows[0].id > self._last_queued else \
                    [r for r in rows if r.id > self._last_queued and r.id not in gone]
                if fresh and self._tail_live and len(self._sendq) + len(fresh) <= self._memory_rows:
                    self._sendq.extend(fresh)
                    self._last_queued = fresh[-1].id
                elif fresh:
                    self._tail_live = False  # the sender pages them from disk
                self._wake_sender.set()
            self._notify_committed()

    def _notify_committed(self) -> None:
        committed, self._committed = self._committed, asyncio.Event()
        committed.set()
        waiters, upto = self._waiters, self._durable_upto
        if not self._tasks or self._tasks[0].done():
            upto = sys.maxsize  # nothing more will be stored: every waiter looks at what happened
        while waiters and waiters[0][0] <= upto:
            waiter = heapq.heappop(waiters)[2]
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, rows: list[_Row], why: str) -> None:
        log.error("outbox: messages not accepted", path=str(self.path), why=why, messages=len(rows),
                  first_id=rows[0].id)
        first, last = rows[0].id, rows[-1].id
        if self._failed and self._failed[-1][1] + 1 == first:
            first = self._failed.pop()[0]  # one failure episode, one range
        self._failed.append((first, last))
        if len(self._failed) > _FAILURES_KEPT:  # callers look right away: keep the recent ones, and say so of older
            self._failed_horizon = self._failed[-_FAILURES_KEPT - 1][1]
            del self._failed[:-_FAILURES_KEPT]
        self._durable_upto = rows[-1].id  # nothing before it is still in doubt

    def _refresh_totals(self) -> None:
        self.stats.stored_rows = sum(self._store.rows.values())
        self.stats.stored_bytes = sum(self._store.bytes.values())

    def _note_drops(self, dropped: list[tuple[int, str, int]]) -> set[int]:
        """Count and log what the bound made us drop (``(id, kind, size)``); forget it in the send queue. Returns
        the dropped ids."""
        now = time.monotonic()
        for _, kind, _ in dropped:
            self.stats.dropped[kind] += 1
            self._drops_unlogged[kind] = self._drops_unlogged.get(kind, 0) + 1
        if not dropped or now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._log_drops(now)
        if not dropped:
            return set()
        gone = set(map(_ID, dropped))
        if any(r.id in gone for r in self._sendq):
            self._sendq = deque(r for r in self._sendq if r.id not in gone)
        return gone

    def _log_drops(self, now: float) -> None:
        """One line for the drops not logged yet (the first of an episode at once, then a summary at most every
        10 s, at the end of the episode, and at close)."""
        if not self._drops_unlogged:
            return
        log.warning("outbox full: dropped the oldest messages", path=str(self.path), dropped=self._drops_unlogged,
                    policy="oldest telemetry, then events, then envelopes except the newest",
                    max_rows=self.max_rows, max_bytes=self.max_bytes, stored_rows=self.stats.stored_rows,
                    stored_bytes=self.stats.stored_bytes, dropped_total=dict(self.stats.dropped))
        self._drops_unlogged = {}
        self._last_drop_log = now

    # -- the sender: in id order, within the transport's window -----------------------------------------------------

    def _on_connection(self, connected: bool) -> None:
        """A new connection resends everything unacknowledged from the oldest; all of it put before now is
        historical. A lost one makes any page being read stale."""
        if connected:
            self._horizon = self._next_id - 1
        else:
            self._epoch += 1
            self._notify_committed()  # close() may be waiting for acknowledgements that will not come now
        self._sendq.clear()
        self._tail_live = False
        self._last_queued = 0
        self._wake_sender.set()

    async def _send_loop(self) -> None:
        transport = self._transport
        while True:
            room = transport.room()
            if room == 0:
                await transport.wait_room()
                continue
            if not self._sendq:
                if self._tail_live:
                    self._wake_sender.clear()
                    await self._wake_sender.wait()
                    continue
                try:
                    await self._page()
                except Exception as exc:  # the store died or the disk failed: read the backlog again shortly
                    log.warning("outbox: reading the backlog failed; retrying", path=str(self.path), error=str(exc),
                                retry_in_s=_RETRY_S)
                    await asyncio.sleep(_RETRY_S)
                continue
            sendq, inflight, horizon, on_ack = self._sendq, self._inflight, self._horizon, self._on_ack
            sent = historical = 0
            for _ in range(min(room, len(sendq))):
                row = sendq.popleft()
                old = row.id <= horizon
                try:
                    transport.publish(row.kind, row.payload, on_ack=partial(on_ack, row), historical=old)
                except UplinkUnavailable:
                    sendq.appendleft(row)
                    break
                inflight[row.id] = row
                sent += 1
                historical += old
            self.stats.sent += sent
            self.stats.sent_historical += historical
            await asyncio.sleep(0)  # let the loop write them out and read acknowledgements

    async def _page(self) -> None:
        """Queue the next page of stored messages; once a page comes back short, every later message reaches the
        send queue from memory. (The store answers in request order: a page holds every transaction committed
        before it was asked for, and any committed after is answered after it, when the tail is live.)"""
        epoch, after = self._epoch, self._last_queued
        rows = list(starmap(_Row, await self._store.page(after, self._page_rows)))
        if epoch != self._epoch or after != self._last_queued:
            return  # the connection changed while we read: start again
        skip = self._deleting.union(r.id for r in self._acked)
        before = len(self._sendq)
        self._sendq.extend(r for r in rows if r.id not in skip and r.id not in self._inflight)
        self.stats.paged += len(self._sendq) - before
        if rows:
            self._last_queued = rows[-1].id
        if len(rows) < self._page_rows:
            self._tail_live = True

    def _on_ack(self, row: _Row, code: int) -> None:
        self._inflight.pop(row.id, None)
        if code == _CONNECTION_LOST:
            return  # still stored: the next connection sends it again
        if code >= 0x80:
            self.stats.refused += 1
            if (row.kind, code) not in self._refusals_logged:
                self._refusals_logged.add((row.kind, code))
                log.warning("outbox: the broker refused a message; deleted, resending cannot succeed",
                            kind=row.kind, reason_code=f"0x{code:02x}")
        else:
            self.stats.acked += 1
        self._acked.append(row)
        if self._writer_idle:
            self._writer_idle = False
            self._wake_writer.set()
