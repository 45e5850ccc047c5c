"""Reading a discovered device: execute the read plan, learn unreadable registers, decode every wanted model.

Registers that answer exception 2 inside advertised models are found once (by halving the failing request),
remembered in the :class:`DeviceMap`, and planned around from then on; their points decode as ``None``.
"""

from __future__ import annotations

from collections.abc import Collection

from gateway.errors import DeviceExceptionResponse, DeviceProtocolError
from gateway.sunspec._decode import ModelBlock, decode_block
from gateway.sunspec._defs import all_model_ids, model_def
from gateway.sunspec._discover import DeviceMap, ModelLocation
from gateway.sunspec._io import RegisterIO
from gateway.sunspec._plan import MAX_READ, Span, plan_reads

ILLEGAL_ADDRESS = 2
_MAX_REPLANS = 8


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
        self.map = device_map
        self.plan = self._replan()
        self.requests = 0  # requests made by the last read()

    def _replan(self) -> tuple[Span, ...]:
        return plan_reads([m.span for m in self.wanted], self.map.unreadable, self._max_read)

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

    async def _fetch(self) -> dict[int, int]:
        regs: dict[int, int] = {}
        for _ in range(_MAX_REPLANS):
            for span in self.plan:
                try:
                    self.requests += 1
                    values = await self._io.read(span.start, span.count)
                except DeviceExceptionResponse as exc:
                    if exc.code != ILLEGAL_ADDRESS:
                        raise
                    bad = await self._probe(span)
                    if not bad:  # it failed once and then read fine: a transient refusal
                        raise
                    self.map = self.map.with_unreadable(bad)
                    self.plan = self._replan()
                    break
                if len(values) != span.count:
                    raise DeviceProtocolError(f"asked {span.count} registers at {span.start}, got {len(values)}")
                regs.update(zip(range(span.start, span.end), values, strict=True))
            else:
                return regs
        raise DeviceProtocolError("the device keeps refusing registers it answered before")

    async def read(self) -> list[ModelBlock]:
        """Every wanted model, decoded from one pass over the plan, in device order."""
        self.requests = 0
        regs = await self._fetch()
        blocks = []
        bad = self.map.unreadable
        for m in self.wanted:
            addrs = range(m.addr, m.addr + m.length + 2)
            data = [regs.get(a, 0) for a in addrs]
            unreadable = frozenset(a - m.addr for a in addrs if a in bad) if bad else frozenset()
            blocks.append(decode_block(model_def(m.id), data, m.addr, unreadable))
        return blocks
