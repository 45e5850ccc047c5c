"""An in-memory RegisterIO over a register dump: null registers answer exception 2, as on the device."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from gateway.errors import DeviceExceptionResponse


class DumpIO:
    def __init__(self, dump: dict[str, Any]) -> None:
        self.base: int = dump["base"]
        self.regs: list[int | None] = list(dump["regs"])
        self.requests = 0

    async def read(self, address: int, count: int) -> list[int]:
        self.requests += 1
        assert 1 <= count <= 125
        out = []
        for a in range(address, address + count):
            i = a - self.base
            v = self.regs[i] if 0 <= i < len(self.regs) else None
            if v is None:
                raise DeviceExceptionResponse(f"exception 2 reading {address}+{count}", 2)
            out.append(v)
        return out

    async def read_bytes(self, address: int, count: int) -> bytes:
        return struct.pack(f">{count}H", *await self.read(address, count))

    async def write(self, address: int, values: Sequence[int]) -> None:
        for i, v in enumerate(values):
            self.regs[address - self.base + i] = v
