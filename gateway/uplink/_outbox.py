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

Threads: SQLite runs in one worker thread of its own (the loop never waits on the disk); everything else runs on
the event loop. While replaying a backlog, pages are read from disk; once caught up, freshly committed messages go
straight from memory to the uplink. Acknowledged messages are deleted by ranges of ids, in the next transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from itertools import chain
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Protocol, Self, TypeVar

import structlog

from gateway.errors import ConfigError, UplinkUnavailable

__all__ = ["DROP_ORDER", "MessageKind", "Outbox", "OutboxStats", "Transport"]

log = structlog.get_logger("gateway.uplink.outbox")

_CONNECTION_LOST = -1  # what Transport.publish's on_ack receives when the connection dropped first
_SQL_PARAMS = 500  # ids per "IN (...)" statement, under SQLite's host-parameter limit
_INSERT_CHUNKS = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)  # rows per multi-row INSERT (cached statements)
_ID, _KIND, _PAYLOAD = itemgetter(0), itemgetter(1), itemgetter(2)
# ?1 is the commit time, shared by every row (one bound value instead of a julianday() per row).
_INSERT_SQL = {n: "INSERT INTO outbox (id, kind, payload, created) VALUES "  # noqa: S608 (placeholders only)
                  + ",".join(f"(?{3 * i + 2}, ?{3 * i + 3}, ?{3 * i + 4}, ?1)" for i in range(n))
               for n in _INSERT_CHUNKS}
_DROP_LOG_EVERY_S = 10.0
_PAGE_SIZE = 16384  # fewer pages per ~1-2 KB signed message: ~15 % less CPU per stored row than 4096
T = TypeVar("T")


class MessageKind(StrEnum):
    """What the outbox carries; the value is the MQTT topic suffix."""

    TELEMETRY = "telemetry"
    EVENTS = "events"
    ENVELOPE = "envelope"


_KINDS = {k.value: k.value for k in MessageKind}  # accepts members and plain values; maps both to the plain str

#: Which kind goes first when the outbox is full (oldest first within a kind; the newest envelope never).
DROP_ORDER = (MessageKind.TELEMETRY, MessageKind.EVENTS, MessageKind.ENVELOPE)


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


class _Dropped(NamedTuple):
    id: int
    kind: str
    size: int


@dataclass(slots=True)
class OutboxStats:
    """Counters since open, and what the store holds now."""

    stored_rows: int = 0
    stored_bytes: int = 0
    accepted: int = 0
    sent: int = 0
    sent_historical: int = 0
    acked: int = 0
    refused: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in MessageKind})
    write_errors: int = 0
    commits: int = 0


class _Store:
    """The SQLite side; every method runs in the outbox's one database thread."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self.db: sqlite3.Connection | None = None
        self.rows = dict.fromkeys([k.value for k in MessageKind], 0)
        self.bytes = dict.fromkeys([k.value for k in MessageKind], 0)
        self._chunks: tuple[int, ...] = _INSERT_CHUNKS

    def open(self) -> int:
        """Open (creating) the database; return the highest id it holds (0 when empty)."""
        db = self.db = sqlite3.connect(self.path, isolation_level=None, cached_statements=len(_INSERT_CHUNKS) + 16)
        params = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunks = tuple(n for n in _INSERT_CHUNKS if 3 * n + 1 <= params)
        db.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # new files only (a no-op on an existing one)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                   "payload BLOB NOT NULL, created REAL NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id)")
        for kind, count, size in db.execute("SELECT kind, count(*), total(length(payload)) FROM outbox GROUP BY kind"):
            if kind not in self.rows:
                raise ConfigError(f"outbox {self.path}: holds rows of unknown kind {kind!r}; fix: move the file "
                                  f"aside (it is not a gridedge outbox of this version)")
            self.rows[kind], self.bytes[kind] = int(count), int(size)
        (top,) = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()
        return int(top)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def commit(self, inserts: list[_Row], deletes: list[_Row], max_rows: int, max_bytes: int) -> list[_Dropped]:
        """One transaction: store ``inserts``, delete ``deletes`` (acknowledged), then drop by policy until within
        bounds. Returns what the policy dropped."""
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            self._insert(db, inserts)
            self._delete_acknowledged(db, deletes)
            dropped = self._enforce(max_rows, max_bytes)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._recount()
            raise
        return dropped

    # This thread holds the GIL for every Python step it takes, and the event loop waits meanwhile: per-row work
    # here goes through C iteration (chain, map, sorted), never a Python loop over rows.

    def _insert(self, db: sqlite3.Connection, rows: list[_Row]) -> None:
        start = 0
        now = (time.time(),)
        for size in self._chunks:
            while len(rows) - start >= size:
                db.execute(_INSERT_SQL[size], list(chain(now, chain.from_iterable(rows[start:start + size]))))
                start += size
        self._count(rows, +1)

    def _delete_acknowledged(self, db: sqlite3.Connection, rows: list[_Row]) -> None:
        """Delete by runs of consecutive ids (acknowledgements come in order: usually one statement)."""
        if not rows:
            return
        ids = sorted(map(_ID, rows))
        if ids[-1] - ids[0] + 1 == len(ids):
            runs = [(ids[0], ids[-1])]
        else:
            runs = []
            first = last = ids[0]
            for i in ids[1:]:
                if i != last + 1:
                    runs.append((first, last))
                    first = i
                last = i
            runs.append((first, last))
        before = db.total_changes
        db.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", runs)
        if db.total_changes - before != len(ids):  # some were dropped meanwhile: count again
            self._recount()
            return
        self._count(rows, -1)

    def _count(self, rows: list[_Row], sign: int) -> None:
        kinds = set(map(_KIND, rows))
        for kind in kinds:
            mine = rows if len(kinds) == 1 else [r for r in rows if r.kind == kind]
            self.rows[kind] += sign * len(mine)
            self.bytes[kind] += sign * sum(map(len, map(_PAYLOAD, mine)))

    def _delete(self, ids: list[int]) -> list[_Dropped]:
        db = self.db
        assert db is not None
        gone: list[_Dropped] = []
        for start in range(0, len(ids), _SQL_PARAMS):
            chunk = ids[start:start + _SQL_PARAMS]
            marks = ",".join("?" * len(chunk))
            for row_id, kind, size in db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING id, kind, length(payload)",  # noqa: S608
                    chunk):
                self.rows[kind] -= 1
                self.bytes[kind] -= int(size)
                gone.append(_Dropped(int(row_id), str(kind), int(size)))
        return gone

    def _enforce(self, max_rows: int, max_bytes: int) -> list[_Dropped]:
        db = self.db
        assert db is not None
        dropped: list[_Dropped] = []
        for kind in DROP_ORDER:
            excess_rows = self.total_rows - max_rows
            excess_bytes = self.total_bytes - max_bytes
            if excess_rows <= 0 and excess_bytes <= 0:
                break
            keep = 1 if kind is MessageKind.ENVELOPE else 0  # the newest envelope: the limits in force
            droppable = self.rows[kind] - keep
            if droppable <= 0:
                continue
            victims: list[int] = []
            freed_bytes = 0
            for row_id, size in db.execute("SELECT id, length(payload) FROM outbox WHERE kind = ? ORDER BY id "
                                           "LIMIT ?", (kind.value, droppable)):
                if len(victims) >= excess_rows and freed_bytes >= excess_bytes:
                    break
                victims.append(int(row_id))
                freed_bytes += int(size)
            dropped += self._delete(victims)
        return dropped

    def _recount(self) -> None:
        db = self.db
        assert db is not None
        self.rows = dict.fromkeys([k.value for k in MessageKind], 0)
        self.bytes = dict.fromkeys([k.value for k in MessageKind], 0)
        for kind, count, size in db.execute("SELECT kind, count(*), total(length(payload)) FROM outbox GROUP BY kind"):
            self.rows[kind], self.bytes[kind] = int(count), int(size)

    def page(self, after: int, limit: int) -> list[_Row]:
        db = self.db
        assert db is not None
        return [_Row(int(i), str(k), bytes(p)) for i, k, p in
                db.execute("SELECT id, kind, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit))]


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
        self._store = _Store(self.path, synchronous)
        self._batch_rows = batch_rows
        self._memory_rows = memory_rows
        self._page_rows = page_rows
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_id = 1
        self._horizon = 0  # ids <= this were put before the current connection came up: sent as historical
        # writer state
        self._pending: deque[_Row] = deque()
        self._durable_upto = 0  # every id up to this one is committed (or failed: see _failed)
        self._failed: list[tuple[int, int]] = []  # id ranges whose transaction failed: never accepted
        self._acked: list[_Row] = []  # acknowledged (or refused), to delete in the next transaction
        self._deleting: set[int] = set()  # in the transaction being committed now
        self._wake_writer = asyncio.Event()
        self._writer_idle = False  # waiting on _wake_writer: only then is setting it needed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._committed = asyncio.Event()
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
        self._insert_commits = 0
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
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db")
        self._loop = asyncio.get_running_loop()
        try:
            top = await self._db(self._store.open)
        except sqlite3.Error as exc:
            await self._shutdown_executor()
            raise ConfigError(f"outbox {self.path}: cannot be opened as SQLite ({exc}); fix the path or move the "
                              f"file aside") from exc
        self._next_id = top + 1
        self._horizon = top  # whatever a previous run left is historical
        self._refresh_totals()
        if self.stats.stored_rows:
            log.info("outbox has messages from before: they will be sent as historical", path=str(self.path),
                     rows=self.stats.stored_rows, bytes=self.stats.stored_bytes)
        self._transport.add_listener(self._on_connection)
        self._tasks = [asyncio.create_task(self._write_loop(), name="outbox writer"),
                       asyncio.create_task(self._send_loop(), name="outbox sender")]

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop sending, commit what is pending (accepted messages, acknowledgements), close the database."""
        if self._executor is None:
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
        await self._db(self._store.close)
        await self._shutdown_executor()
        self._tasks = []
        self._notify_committed()  # wake anyone still waiting in durable()

    async def _shutdown_executor(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, partial(executor.shutdown, wait=True))

    def _db(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self._executor is None:
            raise UplinkUnavailable(f"outbox {self.path} is not open")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

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
        while self._durable_upto < row_id:
            if self._loop is None and not self._tasks:
                break
            await self._committed.wait()
        for first, last in self._failed:
            if first <= row_id <= last:
                raise UplinkUnavailable(f"outbox {self.path}: message {row_id} was not stored")
        if self._durable_upto < row_id:
            raise UplinkUnavailable(f"outbox {self.path} closed before message {row_id} was stored")

    async def wait_empty(self, timeout_s: float | None = None) -> None:
        """Until everything accepted so far was acknowledged and deleted (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while self._pending or self._acked or self._deleting or self._inflight or self.stats.stored_rows:
                await self._committed.wait()

    # -- the writer: one transaction at a time, each holding everything that queued up meanwhile --------------------

    async def _write_loop(self) -> None:
        inserts_committed = 0
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
                dropped = await self._db(self._store.commit, rows, acked, self.max_rows, self.max_bytes)
            except (sqlite3.Error, OSError) as exc:
                self._deleting.difference_update(map(_ID, acked))
                self._acked.extend(acked)  # deleted with a later transaction
                self.stats.write_errors += 1
                if rows:
                    self._fail(rows, f"write failed: {exc}")
                self._notify_committed()
                if not self._closing:
                    await asyncio.sleep(0.5)
                continue
            self._deleting.difference_update(map(_ID, acked))
            self.stats.commits += 1
            self.stats.accepted += len(rows)
            self._refresh_totals()
            gone = self._note_drops(dropped)
            if rows:
                self._durable_upto = rows[-1].id
                inserts_committed += 1
                self._insert_commits = inserts_committed
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

    def _fail(self, rows: list[_Row], why: str) -> None:
        log.error("outbox: messages not accepted", path=str(self.path), why=why, messages=len(rows),
                  first_id=rows[0].id)
        self._failed.append((rows[0].id, rows[-1].id))
        del self._failed[:-64]  # callers look right away; keep only the recent ones
        self._durable_upto = rows[-1].id  # nothing before it is still in doubt

    def _refresh_totals(self) -> None:
        self.stats.stored_rows = self._store.total_rows
        self.stats.stored_bytes = self._store.total_bytes

    def _note_drops(self, dropped: list[_Dropped]) -> set[int]:
        """Count and log what the bound made us drop; forget it in the send queue. Returns the dropped ids."""
        now = time.monotonic()
        for d in dropped:
            self.stats.dropped[d.kind] += 1
            self._drops_unlogged[d.kind] = self._drops_unlogged.get(d.kind, 0) + 1
        if not dropped or now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._log_drops(now)
        if not dropped:
            return set()
        gone = {d.id for d in dropped}
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
                else:
                    await self._page()
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
        """Queue the next page of stored messages; once a short page was read with no insert committing
        meanwhile, every later message reaches the send queue from memory."""
        epoch, inserts, after = self._epoch, self._insert_commits, self._last_queued
        rows = await self._db(self._store.page, after, self._page_rows)
        if epoch != self._epoch or after != self._last_queued:
            return  # the connection changed while we read: start again
        skip = self._deleting.union(r.id for r in self._acked)
        self._sendq.extend(r for r in rows if r.id not in skip and r.id not in self._inflight)
        if rows:
            self._last_queued = rows[-1].id
        if len(rows) < self._page_rows and inserts == self._insert_commits:
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
