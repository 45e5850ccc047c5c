"""Where each SunSpec point sits in a register image, and reading/writing it in engineering units.

The layout walks a model block as pysunspec2 (and ``gateway.sunspec.decode``) does: the root's points, then
each group instance (count from ``L`` for the 1xx convention, from a count point for 7xx). Points are keyed
``Name`` at top level and ``Group[i].Name`` inside repeating groups (``Crv[0].Pt[2].V``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

from gateway.errors import SunSpecError
from gateway.sim._image import ModelSpan, RegisterImage
from gateway.sunspec import EncodeError, GroupDef, ModelDef, PointDef, encode_point, model_def

_SIGNED = frozenset(("int16", "sunssf", "int32", "int64"))
_FLOAT = {"float32": ">f", "float64": ">d"}
_INTEGER = frozenset(
    ("int16", "uint16", "count", "acc16", "enum16", "bitfield16", "int32", "uint32", "acc32", "enum32",
     "bitfield32", "int64", "uint64", "acc64")
)
_P10 = {sf: math.pow(10, sf) for sf in range(-20, 21)}
_NUMERIC = frozenset(
    ("int16", "uint16", "count", "acc16", "enum16", "bitfield16", "int32", "uint32", "acc32", "enum32",
     "bitfield32", "int64", "uint64", "acc64", "float32", "float64", "sunssf", "pad")
)


@cache
def _sentinel(p: PointDef) -> tuple[int, ...]:
    return tuple(encode_point(p, None))


@cache
def _raw_bounds(ptype: str, size: int) -> tuple[int, int]:
    """The raw integer range a point may hold (its unimplemented sentinel excluded)."""
    bits = 16 * size
    if ptype in _SIGNED:
        return -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1
    if ptype.startswith("acc"):
        return 1, (1 << bits) - 1
    return 0, (1 << bits) - 2


@cache
def _fast_info(ptype: str, size: int) -> tuple[int, int, int] | None:
    if ptype not in _INTEGER:
        return None
    lo, hi = _raw_bounds(ptype, size)
    return size, lo, hi


@dataclass(frozen=True, slots=True)
class PointLoc:
    """One point of one model instance in an image: absolute address, definition, scale-factor source."""

    model: int
    key: str
    addr: int
    pdef: PointDef
    sf_addr: int | None = None
    sf_const: int | None = None

    def raw(self, regs: list[int], base: int) -> int | None:
        """The point's raw integer (two's complement applied), ``None`` when unimplemented or not numeric."""
        i = self.addr - base
        chunk = regs[i : i + self.pdef.size]
        if tuple(chunk) == _sentinel(self.pdef) and self.pdef.type != "pad":
            return None
        if self.pdef.type not in _NUMERIC or self.pdef.type in _FLOAT:
            return None
        value = 0
        for r in chunk:
            value = (value << 16) | r
        if self.pdef.type in _SIGNED and value >= 1 << (16 * self.pdef.size - 1):
            value -= 1 << (16 * self.pdef.size)
        return value

    def sf(self, regs: list[int], base: int) -> int | None:
        """The scale factor in effect (``0`` for unscaled points); ``None`` when the SF is unimplemented."""
        if self.sf_addr is not None:
            raw = regs[self.sf_addr - base]
            return None if raw == 0x8000 else raw - 0x10000 if raw & 0x8000 else raw
        return self.sf_const if self.sf_const is not None else 0

    def get(self, regs: list[int], base: int) -> float | None:
        """The engineering value (scale factor applied), ``None`` when unimplemented."""
        if self.pdef.type in _FLOAT:
            i = self.addr - base
            data = struct.pack(f">{self.pdef.size}H", *regs[i : i + self.pdef.size])
            (f,) = struct.unpack(_FLOAT[self.pdef.type], data)
            return None if math.isnan(f) else float(f)
        raw = self.raw(regs, base)
        if raw is None:
            return None
        sf = self.sf(regs, base)
        if sf is None:
            return None
        return float(raw) if sf == 0 else raw * math.pow(10, sf)

    def put(self, regs: list[int], base: int, value: float | str | None) -> bool:
        """Write ``value`` (engineering units) scaled by the point's SF, clamped to the type's range.

        Returns ``False`` (and writes nothing) when the scale factor is unimplemented.
        """
        sf = 0
        if self.sf_addr is not None:
            sf = regs[self.sf_addr - base]
            if sf == 0x8000:
                return False
            if sf & 0x8000:
                sf -= 0x10000
        elif self.sf_const is not None:
            sf = self.sf_const
        i = self.addr - base
        fast = self._fast
        if fast is not None and isinstance(value, int | float):
            size, lo, hi = fast
            raw = round(value * _P10[-sf]) if sf else round(value)
            raw = lo if raw < lo else hi if raw > hi else raw
            if size == 1:
                regs[i] = raw & 0xFFFF
                return True
            if raw < 0:
                raw += 1 << (16 * size)
            for k in range(size - 1, -1, -1):
                regs[i + k] = raw & 0xFFFF
                raw >>= 16
            return True
        try:
            words = encode_point(self.pdef, value, sf if self.pdef.sf is not None else None)
        except EncodeError:
            return False
        regs[i : i + len(words)] = words
        return True

    @property
    def _fast(self) -> tuple[int, int, int] | None:
        """(size, lowest, highest raw value) for integer points written without struct; else ``None``."""
        return _fast_info(self.pdef.type, self.pdef.size)

    def put_raw(self, regs: list[int], base: int, raw: int) -> None:
        """Write a raw integer (no scaling), e.g. an enum value."""
        words = encode_point(self.pdef, raw, 0)
        i = self.addr - base
        regs[i : i + len(words)] = words


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """The points of one model instance in an image, by key."""

    span: ModelSpan
    mdef: ModelDef
    points: dict[str, PointLoc]

    def get(self, key: str) -> PointLoc | None:
        return self.points.get(key)


def _legacy_count(mdef: ModelDef, length: int) -> int:
    for g in mdef.root.groups:
        if g.count == 0 and g.points_len:
            rep = length - (mdef.root.points_len - 2)
            return rep // g.points_len if rep > 0 and rep % g.points_len == 0 else 0
    return 0


def _walk(
    mid: int, group: GroupDef, addr: int, prefix: str, root: dict[str, PointLoc], legacy: int,
    image: RegisterImage, end: int, out: dict[str, PointLoc],
) -> int:
    """Lay out one group instance at ``addr``; returns the address after it."""
    local: dict[str, PointLoc] = {}
    for p in group.points:
        a = addr + p.offset
        if a + p.size > end:
            continue
        sf_addr: int | None = None
        sf_const: int | None = None
        if isinstance(p.sf, int):
            sf_const = p.sf
        elif isinstance(p.sf, str):
            src = local.get(p.sf) or root.get(p.sf)
            if src is None:  # the SF may come later in the same group
                sfp = next((q for q in group.points if q.name == p.sf), None)
                if sfp is not None:
                    sf_addr = addr + sfp.offset
            else:
                sf_addr = src.addr
        loc = PointLoc(mid, prefix + p.name, a, p, sf_addr, sf_const)
        local[p.name] = loc
        out[loc.key] = loc
    if not prefix:
        root.update(local)
    addr += group.points_len
    for sub in group.groups:
        if sub.count is None:
            addr = _walk(mid, sub, addr, f"{prefix}{sub.name}.", root, legacy, image, end, out)
            continue
        if isinstance(sub.count, str):
            cnt = root.get(sub.count)
            n = cnt.raw(image.regs, image.base) if cnt is not None else None
            count = n or 0
        else:
            count = legacy if sub.count == 0 else sub.count
        for i in range(count):
            if addr >= end:
                break
            addr = _walk(mid, sub, addr, f"{prefix}{sub.name}[{i}].", root, legacy, image, end, out)
    return addr


def model_layout(image: RegisterImage, span: ModelSpan) -> ModelLayout:
    """The layout of the model at ``span``; :class:`SunSpecError` if the model is not defined."""
    mdef = model_def(span.id)
    out: dict[str, PointLoc] = {}
    _walk(span.id, mdef.root, span.addr, "", {}, _legacy_count(mdef, span.length), image, span.end, out)
    return ModelLayout(span, mdef, out)


def layouts(image: RegisterImage, spans: tuple[ModelSpan, ...]) -> Iterator[ModelLayout]:
    """Layouts of every defined model in the chain (vendor models without a definition are skipped)."""
    for span in spans:
        try:
            yield model_layout(image, span)
        except SunSpecError:
            continue


def _in_read_only_instance(key: str, points: dict[str, PointLoc], image: RegisterImage) -> bool:
    """Whether ``key`` lies in a group instance whose ``ReadOnly`` point says so (126/705 curves)."""
    parts = key.split(".")
    for j in range(1, len(parts)):
        ro = points.get(".".join(parts[:j]) + ".ReadOnly")
        if ro is not None and ro.raw(image.regs, image.base) == 1:
            return True
    return False


def writable_addresses(image: RegisterImage, lays: Iterable[ModelLayout]) -> frozenset[int]:
    """Addresses of points marked RW in their model definition, except in curves marked read-only."""
    out: set[int] = set()
    for lay in lays:
        for loc in lay.points.values():
            if loc.pdef.writable and not ("." in loc.key and _in_read_only_instance(loc.key, lay.points, image)):
                out.update(range(loc.addr, loc.addr + loc.pdef.size))
    return frozenset(out - image.unreadable)
