"""Poller: schedule, backoff, staleness, logging once per episode, survival of bugs in ``read``, listeners."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.devices import Poller, TcpEndpoint, UnitIO
from gateway.errors import DeviceDisconnected, DeviceTimeout
from tests.devices.conftest import ScriptedServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stop(Exception):
    """Raised by the fake sleep to end ``run()`` after a number of polls."""


class Script:
    """A ``read`` that plays a list of outcomes (a value, or an exception to raise), each taking ``elapsed`` s."""

    def __init__(self, clock: FakeClock, outcomes: list[object], elapsed: float = 0.0) -> None:
        self.clock = clock
        self.outcomes = list(outcomes)
        self.elapsed = elapsed
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        self.clock.now += self.elapsed
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def make_sleep(clock: FakeClock, delays: list[float], stop_after: int) -> Callable[[float], Awaitable[None]]:
    async def sleep(delay: float) -> None:
        delays.append(delay)
        clock.now += delay
        if len(delays) >= stop_after:
            raise Stop

    return sleep


async def test_next_delay_is_interval_minus_elapsed() -> None:
    clock = FakeClock()
    read = Script(clock, [1, 2, 3], elapsed=0.3)
    poller = Poller("inv1", 1.0, read, clock=clock)
    assert await poller.poll_once()
    assert poller.next_delay_s == pytest.approx(0.7)
    read.elapsed = 1.5  # a poll slower than the interval: the next one starts at once
    assert await poller.poll_once()
    assert poller.next_delay_s == 0.0


async def test_run_waits_interval_minus_elapsed_between_polls() -> None:
    clock = FakeClock()
    delays: list[float] = []
    read = Script(clock, [1, 2, 3, 4], elapsed=0.25)
    poller = Poller("inv1", 2.0, read, clock=clock, sleep=make_sleep(clock, delays, stop_after=4))
    with pytest.raises(Stop):
        await poller.run(initial_delay_s=0.5)
    assert delays == [0.5, 1.75, 1.75, 1.75]
    assert poller.latest == 3


async def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    clock = FakeClock()
    read = Script(clock, [DeviceTimeout("timeout")] * 8)
    poller = Poller(
        "inv1", 1.0, read, backoff_initial_s=1.0, backoff_max_s=8.0, jitter=0.2, clock=clock, rng=random.Random(7)
    )
    ratios = []
    for n, base in enumerate([1, 2, 4, 8, 8, 8, 8, 8], start=1):
        assert not await poller.poll_once()
        assert poller.consecutive_failures == n
        assert base * 0.8 <= poller.next_delay_s <= min(8.0, base * 1.2)
        ratios.append(poller.next_delay_s / base)
    assert len({round(r, 6) for r in ratios}) > 4  # really jittered


@given(
    initial=st.floats(0.01, 10),
    factor=st.floats(1, 100),
    jitter=st.floats(0, 0.99),
    failures=st.integers(1, 2000),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_bounds(initial: float, factor: float, jitter: float, failures: int, seed: int) -> None:
    poller = Poller(
        "x", 1.0, Script(FakeClock(), []), backoff_initial_s=initial, backoff_max_s=initial * factor, jitter=jitter,
        rng=random.Random(seed),
    )  # fmt: skip
    poller.consecutive_failures = failures
    base = min(initial * factor, initial * 2.0 ** min(failures - 1, 60))
    delay = poller._backoff()
    assert base * (1 - jitter) - 1e-9 <= delay <= min(initial * factor, base * (1 + jitter)) + 1e-9


async def test_failure_marks_stale_with_reason_and_keeps_last_reading() -> None:
    clock = FakeClock()
    reason = "timeout after 1.0 s reading 40000+125"
    poller = Poller("inv1", 1.0, Script(clock, [{"W": 5}, DeviceTimeout(reason)]), clock=clock)
    assert poller.stale
    assert poller.stale_reason == "no reading yet"
    assert await poller.poll_once()
    assert not poller.stale
    assert poller.last_success == 100.0
    clock.now += 1.0
    assert not await poller.poll_once()
    status = poller.status()
    assert status.stale
    assert status.stale_reason == reason
    assert status.latest == {"W": 5}
    assert status.last_success == 100.0
    assert status.consecutive_failures == 1


async def test_stale_when_no_success_for_stale_after() -> None:
    clock = FakeClock()
    poller = Poller("inv1", 1.0, Script(clock, [1]), clock=clock)  # stale_after_s defaults to 3 intervals
    await poller.poll_once()
    clock.now += 2.9
    assert not poller.stale
    clock.now += 0.6
    assert poller.stale
    assert poller.stale_reason == "no reading for 3.5 s"


async def test_logs_once_on_failure_and_once_on_recovery() -> None:
    clock = FakeClock()
    errors = [DeviceDisconnected("connection refused by 10.0.0.7:502")] * 3
    poller = Poller("inv7", 1.0, Script(clock, [1, *errors, 2, 3]), clock=clock)
    with capture_logs() as logs:
        for _ in range(6):
            await poller.poll_once()
            clock.now += 1.0
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("device_poll_failed", "warning"),
        ("device_recovered", "info"),
    ]
    assert logs[0]["device_id"] == "inv7"
    assert logs[0]["reason"] == "connection refused by 10.0.0.7:502"
    assert logs[1]["device_id"] == "inv7"
    assert logs[1]["failures"] == 3
    assert logs[1]["down_s"] == pytest.approx(3.0)  # first failure at t+1, recovery at t+4
    assert not poller.stale
    assert poller.latest == 3


async def test_unexpected_exception_does_not_kill_the_poller() -> None:
    clock = FakeClock()
    delays: list[float] = []
    read = Script(clock, [KeyError("W"), KeyError("W"), 42, 43])
    poller = Poller("inv1", 1.0, read, clock=clock, sleep=make_sleep(clock, delays, stop_after=3))
    with capture_logs() as logs, pytest.raises(Stop):
        await poller.run()
    assert read.calls == 3
    assert poller.latest == 42
    assert [entry["event"] for entry in logs] == ["device_poll_failed", "device_recovered"]
    assert isinstance(logs[0]["exc_info"], KeyError)  # logged with its traceback, once
    assert logs[0]["reason"] == "internal error: KeyError: 'W'"


async def test_internal_error_reason_and_traceback_once_per_episode() -> None:
    clock = FakeClock()
    poller = Poller("inv1", 1.0, Script(clock, [DeviceTimeout("t"), ValueError("bad"), ValueError("bad")]), clock=clock)
    with capture_logs() as logs:
        for _ in range(3):
            await poller.poll_once()
    assert poller.stale_reason == "internal error: ValueError: bad"
    assert [entry["event"] for entry in logs] == ["device_poll_failed", "device_poll_internal_error"]
    assert "exc_info" not in logs[0]
    assert isinstance(logs[1]["exc_info"], ValueError)


async def test_poll_timeout_becomes_stale_reason() -> None:
    async def hang() -> int:
        await asyncio.sleep(10)
        return 1

    poller = Poller("inv1", 1.0, hang, timeout_s=0.02)
    assert not await poller.poll_once()
    assert poller.stale_reason == "poll timeout after 0.02 s"


async def test_a_timeout_error_raised_by_read_itself_is_an_internal_error() -> None:
    clock = FakeClock()
    poller = Poller("inv1", 1.0, Script(clock, [TimeoutError("socket")]), clock=clock)
    with capture_logs():
        assert not await poller.poll_once()
    assert poller.stale_reason == "internal error: TimeoutError: socket"


async def test_cancellation_propagates_and_is_not_a_failure() -> None:
    started = asyncio.Event()

    async def hang() -> int:
        started.set()
        await asyncio.sleep(10)
        return 1

    poller = Poller("inv1", 1.0, hang)
    task = asyncio.create_task(poller.poll_once())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert poller.consecutive_failures == 0


async def test_listeners_get_each_new_reading_and_a_failing_one_is_contained() -> None:
    clock = FakeClock()
    poller = Poller("inv1", 1.0, Script(clock, [1, DeviceTimeout("t"), 2, 3]), clock=clock)
    seen: list[int] = []
    also: list[int] = []

    def broken(value: int) -> None:
        raise RuntimeError(value)

    poller.add_listener(seen.append)
    remove_broken = poller.add_listener(broken)
    remove_also = poller.add_listener(also.append)
    with capture_logs() as logs:
        await poller.poll_once()
        await poller.poll_once()
        await poller.poll_once()
        remove_also()
        remove_broken()
        await poller.poll_once()
    assert seen == [1, 2, 3]
    assert also == [1, 2]
    assert [entry["event"] for entry in logs].count("device_listener_failed") == 1


async def test_poller_over_the_transport_goes_stale_and_recovers() -> None:
    async with ScriptedServer(["silent"]) as server, TcpEndpoint("127.0.0.1", server.port, timeout_s=0.1) as ep:
        poller = Poller("meter1", 0.05, lambda: UnitIO(ep, 1).read(40000, 3))
        with capture_logs() as logs:
            assert not await poller.poll_once()
            assert poller.stale_reason == "timeout after 0.1 s reading 40000+3"
            assert await poller.poll_once()
        assert poller.latest == [40000, 40001, 40002]
        assert not poller.stale
        assert [entry["event"] for entry in logs] == ["device_poll_failed", "device_recovered"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval_s": 0},
        {"jitter": 1.0},
        {"backoff_initial_s": 10.0, "backoff_max_s": 5.0},
        {"timeout_s": 0},
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float]) -> None:
    settings: dict[str, float] = {"interval_s": 1.0, **kwargs}
    interval = settings.pop("interval_s")
    with pytest.raises(ValueError):
        Poller("x", interval, Script(FakeClock(), []), **settings)  # type: ignore[arg-type]
