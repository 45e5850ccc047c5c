"""The audit log: append-only, hash-chained JSON lines of what dispatch was asked, decided, wrote and read back.

Each line is one record, a JSON object in RFC 8785 canonical form (JCS, via ``rfc8785``, so a head-end in any
language can re-hash it)::

    {"event":"decision","hash":"<hex>","prev":"<hex>","seq":7,"ts":1718000000.25, ...fields}

``seq`` counts lines from 1; ``prev`` is the previous line's ``hash`` (64 zeros for the first line); ``hash``
is SHA-256 over the canonical JSON of the record without ``hash`` (so over the previous hash and the record).
:func:`verify_log` (``gridedge audit verify``) walks the chain and names the first line that is edited,
removed, inserted, reordered, cut short or not canonical. Lines removed from the *end* leave a shorter, valid
chain: only an anchor (a head hash published elsewhere, ``--anchor``) can show that.

Durability (the fsync policy): :meth:`AuditLog.record` writes the whole line with ``O_APPEND`` and returns only
after ``fdatasync``, so a record that returned is on disk before anything it describes is acted on (dispatch
records its decision before it writes a device). A crash mid-write can leave a torn last line: opening the log
then raises :class:`~gateway.errors.AuditLogError` naming it, and with ``recover_torn_tail=True`` the torn
bytes are cut off and an ``audit-recovered`` record (line number, size, SHA-256 and text of what was cut) is
the next line: the chain continues from the last good line and says so. One process at a time holds a log
(``flock``). A write that fails leaves the log refusing further records: no record, no actuation.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import rfc8785

from gateway.errors import AuditLogError

__all__ = [
    "GENESIS",
    "RESERVED",
    "AuditLog",
    "AuditProblem",
    "VerifyResult",
    "canonical",
    "record_hash",
    "verify_lines",
    "verify_log",
]

#: ``prev`` of the first line.
GENESIS = "0" * 64
#: Keys every record has; :meth:`AuditLog.record` refuses them as field names.
RESERVED = frozenset({"seq", "ts", "event", "prev", "hash"})
_TAIL_CHUNK = 64 * 1024
_TORN_TEXT_MAX = 4096  # characters of a torn line kept in the recovery record (its hash covers all of it)
_MAX_SAFE_INT = 2**53 - 1  # JCS numbers are IEEE doubles: larger integers are recorded as text


def canonical(value: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of ``value`` (UTF-8, sorted keys, no whitespace)."""
    return rfc8785.dumps(value)


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the canonical JSON of ``record`` without its ``hash`` key."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses as objects, enums by value, non-finite floats as text."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, int):
        return value if abs(value) <= _MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # "inf", "nan": recorded, never a crash
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot record a {type(value).__name__} in the audit log")


# --- verification ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """The first bad line (1-based), a short code for what is wrong (``torn``, ``json``, ``canonical``, ``hash``,
    ``seq``, ``prev``, ...) and a sentence saying it."""

    line: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """``records`` good lines before the first problem (all of them when ``ok``); ``head`` is the last good hash."""

    records: int
    head: str
    problem: AuditProblem | None = None
    anchor_found: bool | None = None  # None: no anchor was asked for

    @property
    def ok(self) -> bool:
        return self.problem is None and self.anchor_found is not False


#: Problems a crash mid-write can leave on the last line (anything else is an edit, not a crash).
CRASH_PROBLEMS = frozenset({"torn", "json"})


def _check_line(raw: bytes, lineno: int, prev: str) -> tuple[tuple[str, str] | None, str]:
    """((code, what is wrong) or None, the line's hash) for one line that should follow ``prev`` at ``lineno``."""
    if not raw.endswith(b"\n"):
        return ("torn", "torn: the last line has no newline (a crash mid-write, or the file was cut)"), ""
    body = raw[:-1]
    try:
        record = json.loads(body)
    except (ValueError, RecursionError):  # bad UTF-8 is a ValueError too
        return ("json", "not valid JSON (cut short, joined with another line, or edited)"), ""
    if not isinstance(record, dict):
        return ("object", "not a JSON object"), ""
    digest = record.get("hash")
    if not isinstance(digest, str) or len(digest) != 64:
        return ("no-hash", "has no hash"), ""
    try:
        canonical_form = canonical(record)
    except (ValueError, TypeError):
        canonical_form = b""
    if canonical_form != body:
        return ("canonical", "not in canonical form (the line was edited)"), digest
    if record_hash(record) != digest:
        return ("hash", "hash does not match the line's content (the line was edited)"), digest
    seq = record.get("seq")
    if seq != lineno:
        return ("seq", f"seq {json.dumps(seq)} where {lineno} was expected (a line before it was removed, "
                       "inserted or reordered)"), digest
    if record.get("prev") != prev:
        where = "the start of the log" if lineno == 1 else f"line {lineno - 1}"
        return ("prev", f"does not chain to {where}: its prev hash differs (a line was removed, reordered or "
                        "edited)"), digest
    return None, digest


def verify_lines(lines: Iterable[bytes], *, anchor: str | None = None) -> VerifyResult:
    """Walk the chain over raw ``lines`` (each with its ``\\n``); stop at the first bad one.

    ``anchor``: a hash the log must contain (a head published earlier); a log cut at the end fails it.
    """
    prev, count, found = GENESIS, 0, False
    for lineno, raw in enumerate(lines, start=1):
        problem, digest = _check_line(raw, lineno, prev)
        if problem is not None:
            return VerifyResult(count, prev, AuditProblem(lineno, *problem), None if anchor is None else found)
        prev, count = digest, lineno
        found = found or digest == anchor
    return VerifyResult(count, prev, None, None if anchor is None else found)


def verify_log(path: Path | str, *, anchor: str | None = None) -> VerifyResult:
    """:func:`verify_lines` over the file at ``path`` (read as a stream: any size)."""
    with Path(path).open("rb") as f:
        return verify_lines(f, anchor=anchor)


# --- writing --------------------------------------------------------------------------------------------------------


def _last_line(fd: int, size: int) -> tuple[int, bytes]:
    """(offset, bytes) of the file's last line (with its newline, if it has one); size > 0."""
    end = size - 1 if os.pread(fd, 1, size - 1) == b"\n" else size  # skip the last line's own newline
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            offset = start + cut + 1
            return offset, os.pread(fd, size - offset, offset)
        pos = start
    return 0, os.pread(fd, size, 0)


class AuditLog:
    """An open audit log: :meth:`record` appends one chained line, durably. Thread-safe; one process per file.

    Build it with :meth:`open` (the constructor is not for use). ``clock`` stamps ``ts`` (UNIX seconds).
    """

    def __init__(self, path: Path, fd: int, seq: int, head: str, clock: Callable[[], float]) -> None:
        self.path = path
        self._fd: int | None = fd
        self._seq = seq
        self._head = head
        self._clock = clock
        self._lock = threading.Lock()
        self._broken: str | None = None

    @classmethod
    def open(
        cls, path: Path | str, *, recover_torn_tail: bool = False, clock: Callable[[], float] = time.time
    ) -> AuditLog:
        """Open (or create) the log at ``path`` and continue its chain from the last line.

        The last line must be whole, hash to itself and chain to the line before; otherwise
        :class:`AuditLogError` names it. With ``recover_torn_tail`` a last line a crash can leave (no newline,
        not JSON) is cut off and an ``audit-recovered`` record describing it comes next; an edited last line is
        never recovered. Earlier lines are not re-read here (that is :func:`verify_log`'s job).
        """
        path = Path(path)
        created = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise AuditLogError(f"{path}: cannot open the audit log ({exc.strerror or exc}) — check that its "
                                "directory exists and the gateway's user may write there") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditLogError(f"{path}: in use by another process — one gateway per audit log") from None
            if created:
                _fsync_dir(path.parent)
            seq, head, torn = cls._tail(fd, path)
            log = cls(path, fd, seq, head, clock)
            if torn is not None:
                line, data, (code, why) = torn
                if code not in CRASH_PROBLEMS:
                    raise AuditLogError(
                        f"{path}: line {line}: {why} — a crash cannot do that: the log was tampered with; keep it "
                        f"as evidence (gridedge audit verify {path}) and start a new log", line)
                if not recover_torn_tail:
                    raise AuditLogError(
                        f"{path}: line {line}: {why} — check the rest (gridedge audit verify {path}); if only this "
                        "line is bad, reopen with recovery, which records the torn line and cuts it off", line)
                os.ftruncate(fd, os.fstat(fd).st_size - len(data))
                os.fsync(fd)
                log.record(
                    "audit-recovered", line=line, problem=why, bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    text=data.decode("utf-8", "replace")[:_TORN_TEXT_MAX],
                )
        except BaseException:
            os.close(fd)
            raise
        return log

    @staticmethod
    def _tail(fd: int, path: Path) -> tuple[int, str, tuple[int, bytes, tuple[str, str]] | None]:
        """(seq, head) of the last good line, and (line, bytes, problem) of a bad last line, if any.

        Reads only the last two lines: the line before the last gives the expected ``seq`` and ``prev``.
        """
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS, None
        offset, last = _last_line(fd, size)
        lineno, prev = 1, GENESIS
        if offset > 0:
            _, before = _last_line(fd, offset)
            try:
                record = json.loads(before)
                prev, lineno = record["hash"], record["seq"] + 1
            except (ValueError, KeyError, TypeError, RecursionError):
                raise AuditLogError(
                    f"{path}: the line before the last is not a valid record — the log is damaged: run "
                    f"gridedge audit verify {path}") from None
            if not isinstance(prev, str) or not isinstance(lineno, int):
                raise AuditLogError(f"{path}: the line before the last has no hash or seq — run gridedge audit "
                                    f"verify {path}")
        problem, digest = _check_line(last, lineno, prev)
        if problem is None:
            return lineno, digest, None
        return lineno - 1, prev, (lineno, last, problem)

    @property
    def head(self) -> str:
        """Hash of the last line (``GENESIS`` for an empty log): publish it to anchor the log."""
        return self._head

    @property
    def seq(self) -> int:
        """Lines in the log."""
        return self._seq

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append ``event`` with ``fields`` as one line; returns the record written (with ``seq`` and ``hash``).

        Returns only once the line is on disk. Field values may be JSON data, dataclasses or enums; keys
        ``seq``, ``ts``, ``event``, ``prev``, ``hash`` are the log's own. Raises :class:`AuditLogError` if the
        log is closed or a previous write failed (what is not recorded must not be done).
        """
        clash = RESERVED & fields.keys()
        if clash:
            raise ValueError(f"audit field names {sorted(clash)} are reserved — rename them")
        body = {k: _jsonable(v) for k, v in fields.items()}
        with self._lock:
            if self._fd is None:
                raise AuditLogError(f"{self.path}: the audit log is closed")
            if self._broken is not None:
                raise AuditLogError(f"{self.path}: a write failed earlier ({self._broken}) — nothing more is "
                                    "recorded until the gateway restarts and checks the log")
            record = {**body, "seq": self._seq + 1, "ts": self._clock(), "event": event, "prev": self._head}
            record["hash"] = record_hash(record)
            line = canonical(record) + b"\n"
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fdatasync(self._fd)
            except OSError as exc:
                self._broken = exc.strerror or str(exc)
                raise AuditLogError(f"{self.path}: cannot append to the audit log ({self._broken})") from exc
            self._seq += 1
            self._head = record["hash"]
        return record

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # releases the flock
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
