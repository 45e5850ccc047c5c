"""Waiting in tests: :func:`until` a condition holds, and :func:`store_pids` (the outbox store processes serving
a file, found by their command line as an operator would)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` every 10 ms; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def store_pids(path: Path | None = None) -> list[int]:
    """The live (not zombie) processes serving the outbox file ``path``, or any outbox file under it when it is a
    directory, or any outbox file at all (None)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        mine = path is None or any(a == os.fsencode(path) or a.startswith(os.fsencode(path) + b"/") for a in argv)
        if any(a.endswith(b"_outbox_store.py") for a in argv) and mine and state != "Z":
            pids.append(int(proc.name))
    return pids
