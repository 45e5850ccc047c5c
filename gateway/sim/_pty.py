"""A virtual null-modem cable: two pseudo-terminals whose data the event loop copies across.

pymodbus opens a serial port by path, and so does a client; a single pty pair has a path on one end only.
Two pairs bridged (as ``socat pty,raw pty,raw`` does) give two paths: the simulator serves on one, the
gateway opens the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator


def _forward(src: int, dst: int) -> None:
    try:
        data = os.read(src, 4096)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:  # EIO while no one holds the other end open
        return
    with contextlib.suppress(BlockingIOError, OSError):
        os.write(dst, data)


@contextlib.asynccontextmanager
async def pty_link() -> AsyncIterator[tuple[str, str]]:
    """Yields the paths of two ttys wired to each other: bytes written to one are read from the other."""
    loop = asyncio.get_running_loop()
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    fds = (master_a, slave_a, master_b, slave_b)
    try:
        for fd in (slave_a, slave_b):
            tty.setraw(fd)
        for fd in (master_a, master_b):
            os.set_blocking(fd, False)
        loop.add_reader(master_a, _forward, master_a, master_b)
        loop.add_reader(master_b, _forward, master_b, master_a)
        yield os.ttyname(slave_a), os.ttyname(slave_b)
    finally:
        for fd in (master_a, master_b):
            loop.remove_reader(fd)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
