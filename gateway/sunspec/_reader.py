"""Reading a discovered device: execute the read plan, learn unreadable registers, decode every wanted model.

Registers that answer exception 2 inside advertised models are found once (by halving the failing request),
remembered in the :class:`DeviceMap`, and planned around from then on; their points decode as ``None``.

Each read copies the reply bytes into one image of the wanted address range (registers no request covered stay
0x0000) and decodes every model from its slice of it: register bytes are never turned into integers and back.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from gateway.errors import DeviceExceptionResponse, DeviceProtocolError
from gateway.sunspec._decode import ModelBlock, decode_bytes
from gateway.sunspec._defs import ModelDef, all_model_ids, model_def
from gateway.sunspec._discover import DeviceMap, ModelLocation
from gateway.sunspec._io import RegisterIO
from gateway.sunspec._plan import MAX_READ, Span, plan_reads

ILLEGAL_ADDRESS = 2
_MAX_REPLANS = 8


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one wanted model sits in the read image, and its registers known to be unreadable."""

    mdef: ModelDef
    addr: int
    first: int  # byte offset of its ID register in the image
    after: int  # byte offset after its last register
    unreadable: frozenset[int]  # offsets from its ID register


class SunSpecReader:
    """Reads the wanted models of one device with the fewest requests. Not safe for concurrent ``read`` calls."""

    def __init__(self, io: RegisterIO, device_map: DeviceMap, model_ids: Collection[int] | None = None,
                 max_read: int = MAX_READ) -> None:
        self._io = io
        self._max_read = max_read
        known = set(all_model_ids())
        self.wanted: tuple[ModelLocation, ...] = tuple(
            m for m in device_map.models if (model_ids is None or m.id in model_ids) and m.id in known
        )
        self._lo = min((m.addr for m in self.wanted), default=0)
        self._size = 2 * (max((m.addr + m.length + 2 for m in self.wanted), default=self._lo) - self._lo)
        self.map = device_map
        self._slots: tuple[_Slot, ...] = ()
        self.plan = self._replan()
        self.requests = 0  # requests made by the last read()

    def _replan(self) -> tuple[Span, ...]:
        bad = self.map.unreadable
        self._slots = tuple(
            _Slot(model_def(m.id), m.addr, 2 * (m.addr - self._lo), 2 * (m.addr + m.length + 2 - self._lo),
                  frozenset(a - m.addr for a in bad if m.addr <= a < m.addr + m.length + 2))
            for m in self.wanted
        )
        return plan_reads([m.span for m in self.wanted], bad, self._max_read)

    async def _probe(self, span: Span) -> set[int]:
        """Addresses in ``span`` that answer exception 2, found by halving."""
        try:
            self.requests += 1
            await self._io.read(span.start, span.count)
        except DeviceExceptionResponse as exc:
            if exc.code != ILLEGAL_ADDRESS:
                raise
            if span.count == 1:
                return {span.start}
            half = span.count // 2
            return await self._probe(Span(span.start, half)) | await self._probe(
                Span(span.start + half, span.count - half))
        return set()

    async def _fetch(self) -> bytes:
        """The image of the wanted address range: every planned span as read, 0x0000 elsewhere."""
        image = bytearray(self._size)
        lo = self._lo
        read_bytes = self._io.read_bytes
        for _ in range(_MAX_REPLANS):
            for span in self.plan:
                try:
                    self.requests += 1
                    data = await read_bytes(span.start, span.count)
                except DeviceExceptionResponse as exc:
                    if exc.code != ILLEGAL_ADDRESS:
                        raise
                    bad = await self._probe(span)
                    if not bad:  # it failed once and then read fine: a transient refusal
                        raise
                    self.map = self.map.with_unreadable(bad)
                    self.plan = self._replan()
                    break
                if len(data) != 2 * span.count:
                    raise DeviceProtocolError(f"asked {span.count} registers at {span.start}, got {len(data)} bytes")
                i = 2 * (span.start - lo)
                image[i : i + len(data)] = data
            else:
                return bytes(image)
        raise DeviceProtocolError("the device keeps refusing registers it answered before")

    async def read(self) -> list[ModelBlock]:
        """Every wanted model, decoded from one pass over the plan, in device order."""
        self.requests = 0
        image = await self._fetch()
        return [decode_bytes(s.mdef, image[s.first : s.after], s.addr, image[s.first + 2] << 8 | image[s.first + 3],
                             s.unreadable) for s in self._slots]
