"""One SunSpec device as the poller sees it: discovered on first use, then read with its plan every poll.

A read that fails in a way that suggests the map changed (no marker, protocol errors) drops the map, so the
next poll discovers again; transport failures keep it (the device is merely unreachable).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gateway.errors import DeviceProtocolError, SunSpecError
from gateway.sunspec import (
    DEFAULT_BASES,
    DeviceMap,
    ModelBlock,
    RegisterIO,
    SunSpecControls,
    SunSpecReader,
    discover,
    measurement,
)
from gateway.types import Measurement


@dataclass(frozen=True, slots=True)
class Reading:
    """One successful poll: every wanted model decoded, and the normalised measurement."""

    device_id: str
    at: float
    blocks: tuple[ModelBlock, ...]
    measurement: Measurement
    requests: int


class SunSpecDevice:
    """Discovers and reads one unit. Not for concurrent use: its poller calls it one poll at a time."""

    def __init__(self, device_id: str, io: RegisterIO, *, role: str = "inverter",
                 models: Collection[int] | None = None, bases: Sequence[int] = DEFAULT_BASES,
                 max_read: int = 125, known_unreadable: Sequence[tuple[int, int, int]] = ()) -> None:
        """``known_unreadable``: (model id, offset from its ID register, count) spans the profile says refuse
        reads; they are planned around from the first read instead of being found by probing."""
        self.device_id = device_id
        self.role = role
        self._io = io
        self._models = models
        self._bases = tuple(bases)
        self._max_read = max_read
        self._known_unreadable = tuple(known_unreadable)
        self._reader: SunSpecReader | None = None

    @property
    def device_map(self) -> DeviceMap | None:
        return None if self._reader is None else self._reader.map

    async def _ensure_reader(self) -> SunSpecReader:
        if self._reader is None:
            device_map = await discover(self._io, self._bases, self._max_read)
            device_map = device_map.with_unreadable(
                a for model_id, offset, count in self._known_unreadable
                for m in device_map.models if m.id == model_id
                for a in range(m.addr + offset, m.addr + offset + count))
            self._reader = SunSpecReader(self._io, device_map, self._models, self._max_read)
        return self._reader

    async def read(self) -> Reading:
        reader = await self._ensure_reader()
        try:
            blocks = await reader.read()
        except (SunSpecError, DeviceProtocolError):
            self._reader = None
            raise
        now = time.time()
        return Reading(self.device_id, now, tuple(blocks),
                       measurement(self.device_id, now, self.role, blocks), reader.requests)

    async def controls(self) -> SunSpecControls:
        """Controls for this device (discovering it first if needed)."""
        reader = await self._ensure_reader()
        return SunSpecControls(self._io, reader.map)
