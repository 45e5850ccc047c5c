"""Message sequence numbers that only go up, across restarts: :class:`Sequencer`.

A head-end drops a message whose ``seq`` is not above the last it saw from that issuer (and type), so a number
must never be reused, even after a crash. Writing every number durably would cost an fsync per message; instead
the sequencer *reserves* a block: before handing out the first number of a block it durably records the block's
end, and after a restart it resumes from the recorded end. A crash skips at most one block of numbers (gaps are
harmless; reuse is not). The file is a single decimal number, replaced atomically (write, fsync, rename, fsync
of the directory).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from gateway.errors import ConfigError


class Sequencer:
    """Hands out strictly increasing integers, durably if given a ``path``; thread-safe.

    ``start``: the lowest number handed out (the first, when there is no file or it records less). Without a
    ``path`` numbers are kept in memory only (tests, or when the caller persists them). Construction does no I/O;
    the file is read on the first :meth:`next`, or explicitly with :meth:`load` (which reports a broken file as
    :class:`ConfigError` naming the fix).
    """

    def __init__(self, path: str | Path | None = None, *, start: int = 0, block: int = 1024) -> None:
        if start < 0 or block < 1:
            raise ConfigError(f"sequencer: start must be >= 0 and block >= 1, got {start}, {block}")
        self.path = Path(path) if path is not None else None
        self._next = start
        self._reserved = start if self.path is not None else None  # numbers below this are durably reserved
        self._block = block
        self._loaded = self.path is None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read the recorded high-water mark (idempotent)."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self._loaded or self.path is None:
            return
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise ConfigError(f"sequence file {self.path}: cannot be read ({exc.strerror}); "
                              f"fix its permissions") from exc
        if text:
            if not text.isdecimal():
                raise ConfigError(f"sequence file {self.path}: holds {text[:40]!r}, not a number; fix: write the "
                                  f"last sequence number the head-end saw (or a larger one) into it")
            self._next = max(self._next, int(text))
        self._reserved = self._next
        self._loaded = True

    def next(self) -> int:
        """The next number (raises OSError if the reservation cannot be written: never reuse a number)."""
        with self._lock:
            self._load()
            n = self._next
            if self._reserved is not None and n >= self._reserved:
                self._write(n + self._block)
                self._reserved = n + self._block
            self._next = n + 1
            return n

    @property
    def peek(self) -> int:
        """The number :meth:`next` would hand out now."""
        with self._lock:
            self._load()
            return self._next

    def _write(self, value: int) -> None:
        assert self.path is not None
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{value}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
