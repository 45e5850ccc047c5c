"""The fleet: every device's poller, run together, and one snapshot of the fleet's latest state.

It owns the set of pollers (one per device id) and the task group they run in; it staggers their first polls over one
interval so a thousand devices do not all fire in the same millisecond. Polling policy lives in :mod:`._poller`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from gateway.devices._poller import DeviceStatus, Poller

__all__ = ["Fleet"]

T = TypeVar("T")


class Fleet(Generic[T]):
    """Holds one :class:`Poller` per device id; :meth:`run` runs them all in one TaskGroup until cancelled."""

    def __init__(self, pollers: Iterable[Poller[T]] = ()) -> None:
        self._pollers: dict[str, Poller[T]] = {}
        self._running = False
        for poller in pollers:
            self.add(poller)

    def add(self, poller: Poller[T]) -> None:
        """Add a device's poller (before :meth:`run`); device ids are unique."""
        if self._running:
            raise RuntimeError("cannot add a poller to a running fleet")
        if poller.name in self._pollers:
            raise ValueError(f"duplicate device id {poller.name!r}")
        self._pollers[poller.name] = poller

    def __getitem__(self, device_id: str) -> Poller[T]:
        return self._pollers[device_id]

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._pollers

    def __iter__(self) -> Iterator[Poller[T]]:
        return iter(self._pollers.values())

    def __len__(self) -> int:
        return len(self._pollers)

    def snapshot(self) -> dict[str, DeviceStatus[T]]:
        """Each device's latest reading and staleness, keyed by device id."""
        return {device_id: poller.status() for device_id, poller in self._pollers.items()}

    async def run(self) -> None:
        """Run every poller until cancelled; first polls are spread evenly over each poller's interval."""
        if self._running:
            raise RuntimeError("fleet is already running")
        self._running = True
        try:
            count = len(self._pollers)
            async with asyncio.TaskGroup() as group:
                for index, poller in enumerate(self._pollers.values()):
                    group.create_task(
                        poller.run(initial_delay_s=poller.interval_s * index / count), name=f"poll {poller.name}"
                    )
        finally:
            self._running = False
