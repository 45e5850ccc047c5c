"""The generic device poller (house rule 10): one poll loop per device, whose result feeds every consumer.

It owns the poll schedule (next delay = interval - time the poll took), retry policy (exponential backoff with jitter,
capped), staleness (with a reason a human can act on) and the log lines about a device's health: one when it starts
failing, one when it recovers, never one per failed poll. It knows nothing about Modbus: ``read`` is any coroutine.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

from gateway.errors import DeviceError

__all__ = ["DeviceStatus", "Poller"]

T = TypeVar("T")

_MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class DeviceStatus(Generic[T]):
    """A device's state as its poller sees it at one instant."""

    device_id: str
    latest: T | None
    """The last good reading (kept while stale, so consumers can choose to use it)."""
    last_success: float | None
    """Monotonic time of the last good reading; ``None`` before the first."""
    stale: bool
    stale_reason: str | None
    consecutive_failures: int


class Poller(Generic[T]):
    """Polls one device: calls ``read`` every ``interval_s`` and keeps the latest reading and the device's health.

    A failed poll never escapes: a :class:`~gateway.errors.DeviceError` becomes the stale reason (its ``reason``),
    a poll slower than ``timeout_s`` becomes "poll timeout after ...", and any other exception (a bug in ``read``)
    becomes "internal error: ..." and is logged with its traceback once per failure episode. After the n-th failure in
    a row the next attempt waits ``min(backoff_max_s, backoff_initial_s * 2**(n-1) * (1 +- jitter))``.

    The device is stale, with a reason, while its last poll failed, before its first good reading, and when the last
    good reading is older than ``stale_after_s`` (default 3 intervals). ``clock`` and ``sleep`` are injectable (tests);
    ``clock`` must be monotonic. The constructor starts nothing: run :meth:`run` in a task (e.g. in a TaskGroup), or
    drive :meth:`poll_once` yourself.
    """

    def __init__(
        self,
        name: str,
        interval_s: float,
        read: Callable[[], Awaitable[T]],
        *,
        timeout_s: float | None = 10.0,
        backoff_initial_s: float | None = None,
        backoff_max_s: float = 60.0,
        jitter: float = 0.1,
        stale_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        backoff_initial_s = interval_s if backoff_initial_s is None else backoff_initial_s
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_initial_s ({backoff_initial_s}) <= backoff_max_s ({backoff_max_s})")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.name = name
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.jitter = jitter
        self.stale_after_s = 3 * interval_s if stale_after_s is None else stale_after_s
        self._read = read
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._log = structlog.get_logger(__name__).bind(device_id=name)
        self._listeners: list[Callable[[T], object]] = []
        self._failed_listeners: set[int] = set()

        self.latest: T | None = None
        self.last_success: float | None = None
        self.consecutive_failures = 0
        self.next_delay_s = 0.0
        """How long :meth:`run` waits after the last poll (interval - elapsed, or the backoff after a failure)."""
        self._failure_reason: str | None = None
        self._failing_since = 0.0
        self._traceback_logged = False

    # -- health ----------------------------------------------------------------------------------------------------
    @property
    def stale_reason(self) -> str | None:
        """Why the latest reading cannot be trusted now, or ``None`` when it is fresh."""
        if self.consecutive_failures:
            return self._failure_reason
        if self.last_success is None:
            return "no reading yet"
        age = self._clock() - self.last_success
        if age > self.stale_after_s:
            return f"no reading for {age:.1f} s"
        return None

    @property
    def stale(self) -> bool:
        """Whether the latest reading is missing, failed or too old (see :attr:`stale_reason`)."""
        return self.stale_reason is not None

    def status(self) -> DeviceStatus[T]:
        """A consistent snapshot of this device's state."""
        reason = self.stale_reason
        return DeviceStatus(
            device_id=self.name,
            latest=self.latest,
            last_success=self.last_success,
            stale=reason is not None,
            stale_reason=reason,
            consecutive_failures=self.consecutive_failures,
        )

    # -- consumers -------------------------------------------------------------------------------------------------
    def add_listener(self, callback: Callable[[T], object]) -> Callable[[], None]:
        """Call ``callback(reading)`` after each good poll; returns a function that removes it.

        Callbacks run in the poll loop, so they must be quick (hand slow work to a queue or task). An exception in
        one is logged (once until it next succeeds) and does not stop the poller or the other callbacks.
        """
        self._listeners.append(callback)

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return remove

    # -- polling ---------------------------------------------------------------------------------------------------
    async def run(self, *, initial_delay_s: float = 0.0) -> None:
        """Poll forever (until cancelled). ``initial_delay_s`` staggers the first poll of many devices."""
        structlog.contextvars.bind_contextvars(device_id=self.name)  # this task's context only
        if initial_delay_s > 0:
            await self._sleep(initial_delay_s)
        while True:
            await self.poll_once()
            await self._sleep(self.next_delay_s)

    async def poll_once(self) -> bool:
        """Poll once, update the state and :attr:`next_delay_s`, notify listeners; ``True`` if the poll succeeded."""
        start = self._clock()
        deadline: asyncio.Timeout | None = None
        try:
            if self.timeout_s is None:
                value = await self._read()
            else:
                async with asyncio.timeout(self.timeout_s) as deadline:
                    value = await self._read()
        except DeviceError as exc:
            self._failed(exc.reason, None)
            return False
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                self._failed(f"poll timeout after {self.timeout_s:g} s", None)
            else:
                self._failed(f"internal error: {type(exc).__name__}: {exc}"[:_MAX_REASON], exc)
            return False
        now = self._clock()
        self._succeeded(value, now)
        self.next_delay_s = max(0.0, self.interval_s - (now - start))
        return True

    def _succeeded(self, value: T, now: float) -> None:
        if self.consecutive_failures:
            self._log.info(
                "device_recovered",
                failures=self.consecutive_failures,
                down_s=round(now - self._failing_since, 3),
                last_reason=self._failure_reason,
            )
        self.consecutive_failures = 0
        self._failure_reason = None
        self._traceback_logged = False
        self.latest = value
        self.last_success = now
        for callback in tuple(self._listeners):
            try:
                callback(value)
            except Exception:
                if id(callback) not in self._failed_listeners:
                    self._failed_listeners.add(id(callback))
                    self._log.exception("device_listener_failed", listener=repr(callback))
            else:
                self._failed_listeners.discard(id(callback))

    def _failed(self, reason: str, exc: Exception | None) -> None:
        self.consecutive_failures += 1
        self._failure_reason = reason
        traceback: dict[str, Exception] = {}
        if exc is not None and not self._traceback_logged:
            self._traceback_logged = True
            traceback["exc_info"] = exc
        if self.consecutive_failures == 1:
            self._failing_since = self._clock()
            self._log.warning("device_poll_failed", reason=reason, **traceback)
        elif traceback:
            self._log.error("device_poll_internal_error", reason=reason, **traceback)
        self.next_delay_s = self._backoff()

    def _backoff(self) -> float:
        exponent = min(self.consecutive_failures - 1, 60)
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0**exponent)
        spread = self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return min(self.backoff_max_s, base * spread)

    def __repr__(self) -> str:
        return f"Poller({self.name!r}, interval_s={self.interval_s})"
