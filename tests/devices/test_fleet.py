"""Fleet: pollers run together in one TaskGroup; one device's trouble is a stale status, not a dead fleet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from gateway.devices import Fleet, Poller
from gateway.errors import DeviceDisconnected


async def test_snapshot_shows_each_device_and_one_failing_device_does_not_stop_the_others() -> None:
    count = 0
    five_polls = asyncio.Event()

    async def good() -> int:
        nonlocal count
        count += 1
        if count == 5:
            five_polls.set()
        return count

    async def unplugged() -> int:
        raise DeviceDisconnected("connection refused by 10.0.0.9:502")

    async def buggy() -> int:
        raise ZeroDivisionError("division by zero")

    fleet: Fleet[int] = Fleet(Poller(name, 0.01, read) for name, read in [("a", good), ("b", unplugged), ("c", buggy)])
    with capture_logs():
        task = asyncio.create_task(fleet.run())
        await five_polls.wait()
        snapshot = fleet.snapshot()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert set(snapshot) == {"a", "b", "c"}
    assert not snapshot["a"].stale
    assert snapshot["a"].latest is not None
    assert snapshot["a"].latest >= 5
    assert snapshot["b"].stale
    assert snapshot["b"].stale_reason == "connection refused by 10.0.0.9:502"
    assert snapshot["b"].latest is None
    assert snapshot["c"].stale_reason == "internal error: ZeroDivisionError: division by zero"
    assert task.cancelled()


async def test_first_polls_are_staggered_over_the_interval() -> None:
    first_sleeps: dict[str, float] = {}
    all_slept = asyncio.Event()

    def recorder(name: str) -> Callable[[float], Awaitable[None]]:
        async def sleep(delay: float) -> None:
            first_sleeps.setdefault(name, delay)
            if len(first_sleeps) == 4:
                all_slept.set()
            await asyncio.sleep(3600)

        return sleep

    async def read() -> int:
        return 1

    fleet: Fleet[int] = Fleet(Poller(f"d{i}", 2.0, read, sleep=recorder(f"d{i}")) for i in range(4))
    task = asyncio.create_task(fleet.run())
    await all_slept.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # d0 has no initial delay: its first sleep is the one after its first poll (interval - elapsed).
    assert first_sleeps["d0"] == pytest.approx(2.0, abs=0.01)
    assert [first_sleeps[f"d{i}"] for i in (1, 2, 3)] == [0.5, 1.0, 1.5]


async def test_device_ids_are_unique() -> None:
    async def read() -> int:
        return 1

    fleet: Fleet[int] = Fleet([Poller("a", 1.0, read)])
    with pytest.raises(ValueError, match="duplicate device id 'a'"):
        fleet.add(Poller("a", 1.0, read))
    assert "a" in fleet
    assert len(fleet) == 1
    assert fleet["a"].name == "a"
