"""The seam between SunSpec logic and the Modbus transport: a unit's holding registers.

``gateway.devices`` implements :class:`RegisterIO` over pymodbus; tests and the simulator can implement it over
anything. Implementations raise :class:`gateway.errors.DeviceError` subclasses, never return error objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RegisterIO(Protocol):
    """Holding registers of one Modbus unit (one SunSpec device)."""

    async def read(self, address: int, count: int) -> list[int]:
        """``count`` (<= 125) registers from ``address``."""
        ...

    async def read_bytes(self, address: int, count: int) -> bytes:
        """As :meth:`read`, the registers as big-endian bytes (``2 * count``), as the reply carries them."""
        ...

    async def write(self, address: int, values: Sequence[int]) -> None:
        """Write ``values`` from ``address`` (the unit's write function code is the implementation's concern)."""
        ...
