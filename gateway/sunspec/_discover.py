"""Discovery: find the 'SunS' marker and walk the model chain, tolerating what real devices do.

Tolerated: a short model 1 (L=65), models out of id order, registers inside advertised models that answer
exception 2, a missing or 0x0000 end marker, models longer than 125 registers. Discovery reads ahead in
blocks of up to 125 registers (fewer requests); where a block answers an exception it falls back to reading
each two-register model header alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.errors import DeviceExceptionResponse, DeviceProtocolError, SunSpecError
from gateway.sunspec._io import RegisterIO
from gateway.sunspec._plan import MAX_READ, Span

SUNS = (0x5375, 0x6E53)
DEFAULT_BASES = (40000, 0, 50000)
_END_IDS = (0xFFFF, 0x0000)
_MAX_MODELS = 256


@dataclass(frozen=True, slots=True)
class ModelLocation:
    """Where a model sits: ``addr`` is the address of its ``ID`` register; ``length`` is its ``L``."""

    id: int
    addr: int
    length: int

    @property
    def span(self) -> Span:
        return Span(self.addr, self.length + 2)


@dataclass(frozen=True, slots=True)
class DeviceMap:
    """A device's SunSpec map: base address, model chain in device order, registers known to be unreadable."""

    base: int
    models: tuple[ModelLocation, ...]
    unreadable: frozenset[int] = field(default_factory=frozenset)
    end_marker: bool = True

    def find(self, model_id: int) -> ModelLocation | None:
        return next((m for m in self.models if m.id == model_id), None)

    def with_unreadable(self, addrs: Iterable[int]) -> DeviceMap:
        return DeviceMap(self.base, self.models, self.unreadable | frozenset(addrs), self.end_marker)


class _ReadAhead:
    """Serves small reads out of 125-register blocks, until a block read fails."""

    def __init__(self, io: RegisterIO, max_read: int) -> None:
        self._io = io
        self._max = max_read
        self._cache: dict[int, list[int]] = {}  # block start -> registers
        self._ahead = True  # after one block fails, read headers alone: a failing block costs a request
        self.requests = 0

    async def read(self, addr: int, count: int) -> list[int]:
        for start, regs in self._cache.items():
            if start <= addr and addr + count <= start + len(regs):
                return regs[addr - start : addr - start + count]
        if self._ahead and addr + self._max <= 0x10000:
            try:
                self.requests += 1
                regs = await self._io.read(addr, self._max)
            except (DeviceExceptionResponse, DeviceProtocolError):
                self._ahead = False
            else:
                self._cache[addr] = regs
                return regs[:count]
        self.requests += 1
        return await self._io.read(addr, count)


async def find_base(io: RegisterIO, bases: Iterable[int] = DEFAULT_BASES) -> int:
    """The first of ``bases`` holding the 'SunS' marker; :class:`SunSpecError` if none does."""
    tried = []
    for base in bases:
        tried.append(str(base))
        try:
            regs = await io.read(base, 2)
        except (DeviceExceptionResponse, DeviceProtocolError):
            continue
        if tuple(regs) == SUNS:
            return base
    raise SunSpecError(f"no SunSpec 'SunS' marker at {', '.join(tried)}")


async def discover(io: RegisterIO, bases: Iterable[int] = DEFAULT_BASES, max_read: int = MAX_READ) -> DeviceMap:
    """Find the base and walk the model chain. Transport failures (timeout, disconnect) propagate."""
    base = await find_base(io, bases)
    reader = _ReadAhead(io, max_read)
    addr = base + 2
    models: list[ModelLocation] = []
    end_marker = False
    while len(models) < _MAX_MODELS and addr + 2 <= 0x10000:
        try:
            model_id, length = await reader.read(addr, 2)
        except (DeviceExceptionResponse, DeviceProtocolError):
            break  # no end marker: the map simply stops
        if model_id in _END_IDS:
            end_marker = True
            break
        models.append(ModelLocation(model_id, addr, length))
        addr += 2 + length
    if not models:
        raise SunSpecError(f"SunSpec marker at {base} but no models follow it")
    return DeviceMap(base, tuple(models), frozenset(), end_marker)
