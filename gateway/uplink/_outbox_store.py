"""The outbox's SQLite side, run in a process of its own: :class:`Store`, and :func:`serve` (its main loop).

Why a process and not a thread: the event loop publishes at the pace of its one thread, and a database thread in the
same interpreter takes the GIL in many small pieces (binding, stepping, committing), each one a wait for the loop.
Measured with ``tests/benchmarks/bench_uplink.py``, that cost the loop ~8-10 us per message; in a process of its own
SQLite costs the loop one pipe write per transaction and one read per answer.

The parent (:mod:`gateway.uplink._outbox_process`) starts ``python -I -S <this file> PATH SYNCHRONOUS`` and speaks
to it over stdin/stdout in frames (a 4-byte little-endian length, then a :mod:`marshal` value: both ends are this
package on the same interpreter). One request at a time, answered in order:

* ``("open",)`` -> ``(top_id, rows_by_kind, bytes_by_kind)``
* ``("commit", inserts, ack_ids, ack_kinds, ack_sizes, max_rows, max_bytes)`` -> ``(dropped, rows_by_kind,
  bytes_by_kind)``: one transaction; ``inserts`` are ``(id, kind, payload)``, ``dropped`` are ``(id, kind, size)``
* ``("page", after, limit)`` -> ``[(id, kind, payload), ...]``
* ``("close",)`` -> ``None``, and the process exits

An answer is ``(0, value)``, or ``(1, "sqlite" | "outbox" | "os", message)`` for a failure ("os" for any other
error, a bug included: the transaction rolled back and the process stays up). The process ignores
SIGINT and SIGTERM (a Ctrl-C or a service stop reaches the whole process group: the parent closes the store in
order) and exits when its stdin closes, so it never outlives the outbox by more than its current transaction.

Imports the standard library only: it starts in ~20 ms without site-packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import signal
import sqlite3
import sys
import time
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

KINDS = ("telemetry", "events", "envelope")  # MessageKind's values
#: Which kind goes first when the outbox is full (oldest first within a kind; the newest envelope never).
DROP_ORDER = ("telemetry", "events", "envelope")

_SQL_PARAMS = 500  # ids per "IN (...)" statement, under SQLite's host-parameter limit
_INSERT_CHUNKS = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)  # rows per multi-row INSERT (cached statements)
_KIND, _PAYLOAD = itemgetter(1), itemgetter(2)
# ?1 is the commit time, shared by every row (one bound value instead of a julianday() per row).
_INSERT_SQL = {n: "INSERT INTO outbox (id, kind, payload, created) VALUES "  # noqa: S608 (placeholders only)
                  + ",".join(f"(?{3 * i + 2}, ?{3 * i + 3}, ?{3 * i + 4}, ?1)" for i in range(n))
               for n in _INSERT_CHUNKS}
_PAGE_SIZE = 16384  # fewer pages per ~1-2 KB signed message: ~15 % less CPU per stored row than 4096
_BUSY_TIMEOUT_S = 10.0  # a previous store process may still be finishing its last transaction
_OWNER_WAIT_S = 5.0  # the same, for the file's owner lock

Row = tuple[int, str, bytes]  # id, kind, payload
Dropped = tuple[int, str, int]  # id, kind, payload size


class Unusable(Exception):
    """The file cannot serve as this outbox: another process has it, or it holds rows this version cannot have
    written."""


class Store:
    """One SQLite connection to the outbox file, and the count of what it holds per kind."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self.db: sqlite3.Connection | None = None
        self._owner: int | None = None  # a descriptor holding flock(LOCK_EX) on the file while open
        self.rows = dict.fromkeys(KINDS, 0)
        self.bytes = dict.fromkeys(KINDS, 0)
        self._chunks: tuple[int, ...] = _INSERT_CHUNKS

    def open(self) -> int:
        """Open (creating) the database; return the highest id it holds (0 when empty)."""
        self._own()
        db = self.db = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_S,
                                       cached_statements=len(_INSERT_CHUNKS) + 16)
        params = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunks = tuple(n for n in _INSERT_CHUNKS if 3 * n + 1 <= params)
        db.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # new files only (a no-op on an existing one)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                   "payload BLOB NOT NULL, created REAL NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id)")
        self._recount()
        (top,) = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()
        return int(top)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._owner is not None:
            os.close(self._owner)  # and the lock with it
            self._owner = None

    def _own(self) -> None:
        """One outbox per file: two would hand out the same ids and send each other's messages. Waits a little for
        the store of a process that was just killed (it ends once its last transaction is done)."""
        if self._owner is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + _OWNER_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise Unusable(f"outbox {self.path}: in use by another process (another gridedge with the same "
                               f"state directory?); fix: stop it, or give each gateway its own state_dir") from None
            self._owner = fd
            return

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def commit(self, inserts: list[Row], ack_ids: list[int], ack_kinds: list[str], ack_sizes: list[int],
               max_rows: int, max_bytes: int) -> list[Dropped]:
        """One transaction: store ``inserts``, delete the acknowledged ids, then drop by policy until within
        bounds. Returns what the policy dropped."""
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            self._insert(db, inserts)
            self._delete_acknowledged(db, ack_ids, ack_kinds, ack_sizes)
            dropped = self._enforce(max_rows, max_bytes)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._recount()
            raise
        return dropped

    def page(self, after: int, limit: int) -> list[Row]:
        db = self.db
        assert db is not None
        return db.execute("SELECT id, kind, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                          (after, limit)).fetchall()

    def _insert(self, db: sqlite3.Connection, rows: list[Row]) -> None:
        start = 0
        now = (time.time(),)
        for size in self._chunks:
            while len(rows) - start >= size:
                db.execute(_INSERT_SQL[size], list(chain(now, chain.from_iterable(rows[start:start + size]))))
                start += size
        self._count(list(map(_KIND, rows)), list(map(len, map(_PAYLOAD, rows))), +1)

    def _delete_acknowledged(self, db: sqlite3.Connection, ids: list[int], kinds: list[str],
                             sizes: list[int]) -> None:
        """Delete by runs of consecutive ids (acknowledgements come in order: usually one statement)."""
        if not ids:
            return
        ids = sorted(ids)
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
        self._count(kinds, sizes, -1)

    def _count(self, kinds: list[str], sizes: list[int], sign: int) -> None:
        for kind, size in zip(kinds, sizes, strict=True):
            self.rows[kind] += sign
            self.bytes[kind] += sign * size

    def _delete(self, ids: list[int]) -> list[Dropped]:
        db = self.db
        assert db is not None
        gone: list[Dropped] = []
        for start in range(0, len(ids), _SQL_PARAMS):
            chunk = ids[start:start + _SQL_PARAMS]
            marks = ",".join("?" * len(chunk))
            for row_id, kind, size in db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING id, kind, length(payload)",  # noqa: S608
                    chunk):
                self.rows[kind] -= 1
                self.bytes[kind] -= int(size)
                gone.append((int(row_id), str(kind), int(size)))
        return gone

    def _enforce(self, max_rows: int, max_bytes: int) -> list[Dropped]:
        db = self.db
        assert db is not None
        dropped: list[Dropped] = []
        for kind in DROP_ORDER:
            excess_rows = self.total_rows - max_rows
            excess_bytes = self.total_bytes - max_bytes
            if excess_rows <= 0 and excess_bytes <= 0:
                break
            keep = 1 if kind == "envelope" else 0  # the newest envelope: the limits in force
            droppable = self.rows[kind] - keep
            if droppable <= 0:
                continue
            victims: list[int] = []
            freed_bytes = 0
            for row_id, size in db.execute("SELECT id, length(payload) FROM outbox WHERE kind = ? ORDER BY id "
                                           "LIMIT ?", (kind, droppable)):
                if len(victims) >= excess_rows and freed_bytes >= excess_bytes:
                    break
                victims.append(int(row_id))
                freed_bytes += int(size)
            dropped += self._delete(victims)
        return dropped

    def _recount(self) -> None:
        db = self.db
        assert db is not None
        rows = dict.fromkeys(KINDS, 0)
        size = dict.fromkeys(KINDS, 0)
        for kind, count, total in db.execute("SELECT kind, count(*), total(length(payload)) FROM outbox "
                                             "GROUP BY kind"):
            if kind not in rows:
                raise Unusable(f"outbox {self.path}: holds rows of unknown kind {kind!r}; fix: move the file "
                                  f"aside (it is not a gridedge outbox of this version)")
            rows[kind], size[kind] = int(count), int(total)
        self.rows, self.bytes = rows, size


def frame(value: Any) -> bytes:
    """One message on the pipe: its length, then its marshal bytes."""
    body = marshal.dumps(value)
    return len(body).to_bytes(4, "little") + body


def _answer(store: Store, request: tuple[Any, ...]) -> Any:
    match request:
        case ("open",):
            return store.open(), store.rows, store.bytes
        case ("commit", inserts, ack_ids, ack_kinds, ack_sizes, max_rows, max_bytes):
            dropped = store.commit(inserts, ack_ids, ack_kinds, ack_sizes, max_rows, max_bytes)
            return dropped, store.rows, store.bytes
        case ("page", after, limit):
            return store.page(after, limit)
        case ("close",):
            store.close()
            return None
    raise ValueError(f"outbox store: unknown request {request[:1]!r}")


def serve(path: Path, synchronous: str, inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests from ``inp`` on ``out`` until ``("close",)`` or end of input."""
    store = Store(path, synchronous)
    try:
        while len(head := inp.read(4)) == 4:
            size = int.from_bytes(head, "little")
            body = inp.read(size)
            if len(body) < size:
                return  # the parent died while writing: nothing of this request was done
            request = marshal.loads(body)  # noqa: S302 (from our parent)
            try:
                answer: tuple[Any, ...] = (0, _answer(store, request))
            except sqlite3.Error as exc:
                answer = (1, "sqlite", str(exc))
            except Unusable as exc:
                answer = (1, "outbox", str(exc))
            except Exception as exc:  # OSError, or a bug: the transaction rolled back; the store stays up
                answer = (1, "os", f"{type(exc).__name__}: {exc}")
            try:
                out.write(frame(answer))
                out.flush()
            except BrokenPipeError:  # the parent is gone: its transaction is done, nobody to tell
                store.close()
                os._exit(0)  # no interpreter shutdown flushing into the broken pipe again
            if request == ("close",):
                return
    finally:
        store.close()


def main(argv: list[str]) -> int:
    path, synchronous = argv
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    serve(Path(path), synchronous, sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
