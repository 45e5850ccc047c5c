"""Decoding of SunSpec model blocks, value for value what pysunspec2's ``cvalue`` gives.

Unimplemented sentinels become ``None`` (0x8000, 0xFFFF, 0x80000000, accumulators at 0, float NaN, strings
beginning with NUL); scale factors come from the same read; repeating groups are counted from ``L`` (1xx) or
from their count point (7xx, nested in 705). A point that lies past the end of a short model is ``None``.

For speed each group definition is compiled once into a small Python function: one ``struct.unpack_from``
for all its points, sentinel checks and scaling inline. The source is generated from the model definitions,
never edited by hand.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from gateway.sunspec._defs import GroupDef, ModelDef, PointDef, model_def

Value = int | float | str | None
Instance = dict[str, Any]

_CODE = {
    "int16": "h", "sunssf": "h", "uint16": "H", "count": "H", "acc16": "H", "enum16": "H", "bitfield16": "H",
    "pad": "H", "int32": "i", "uint32": "I", "acc32": "I", "enum32": "I", "bitfield32": "I", "ipaddr": "I",
    "int64": "q", "uint64": "Q", "acc64": "Q", "float32": "f", "float64": "d",
}
_WIDTH_BYTES = {"h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "Q": 8, "f": 4, "d": 8}

#: The raw value that means "not implemented", per type (pysunspec2's ``SUNS_UNIMPL_*``).
UNIMPLEMENTED: dict[str, int] = {
    "int16": -0x8000, "sunssf": -0x8000, "uint16": 0xFFFF, "count": 0xFFFF, "enum16": 0xFFFF,
    "bitfield16": 0xFFFF, "acc16": 0, "int32": -0x80000000, "uint32": 0xFFFFFFFF, "enum32": 0xFFFFFFFF,
    "bitfield32": 0xFFFFFFFF, "acc32": 0, "ipaddr": 0, "int64": -0x8000000000000000,
    "uint64": 0xFFFFFFFFFFFFFFFF, "acc64": 0, "float32": 0x7FC00000, "float64": 0x7FF8000000000000,
}


#: 10**sf as pysunspec2 computes it (``math.pow``), for the scale factors SunSpec allows and a little more.
#: A scale factor outside this range is garbage from the wire: the scaled value is ``None``, never a crash.
_P10 = {sf: math.pow(10, sf) for sf in range(-20, 21)}


def _text(raw: bytes) -> str | None:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    s = s[0] + s[1:].rstrip("\0")
    return None if s[0] == "\0" else s


def _eui48(raw: bytes) -> str | None:
    if not any(raw):
        return None
    s = ":".join(f"{b:02X}" for b in raw[2:8])
    return None if s == "FF:FF:FF:FF:FF:FF" else s


def _ipv6(raw: bytes) -> str | None:
    if not any(raw):
        return None
    h = raw.hex().upper()
    return ":".join(h[i : i + 8] for i in range(0, 32, 8))


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A group definition compiled for decoding: the function and the layout facts the walker needs."""

    decode: Callable[[bytes, int, Instance | None], Instance]
    size_bytes: int
    point_ends: tuple[tuple[str, int], ...]  # (name, byte end offset) for trimming short blocks


def _raw_expr(p: PointDef, i: int) -> str:
    if p.type == "string":
        return f"_text(r[{i}])"
    if p.type == "eui48":
        return f"_eui48(r[{i}])"
    if p.type == "ipv6addr":
        return f"_ipv6(r[{i}])"
    if p.type == "pad":
        return f"r[{i}]"
    sentinel = UNIMPLEMENTED[p.type]
    if p.type in ("float32", "float64"):
        return f"(None if (r[{i}] != r[{i}] or r[{i}] == {sentinel}) else r[{i}])"
    return f"(None if r[{i}] == {sentinel} else r[{i}])"


def _struct_code(p: PointDef) -> str:
    if p.type in ("string", "eui48", "ipv6addr"):
        return f"{p.size * 2}s"
    code = _CODE[p.type]
    extra = p.size * 2 - _WIDTH_BYTES[code]
    return code + (f"{extra}x" if extra > 0 else "")


def _compile(group: GroupDef) -> _Compiled:
    fmt = ">" + "".join(_struct_code(p) for p in group.points)
    local = {p.name: f"v{i}" for i, p in enumerate(group.points)}
    lines = ["def _decode(buf, off, mp):", "    r = _S.unpack_from(buf, off)"]
    for i, p in enumerate(group.points):
        lines.append(f"    v{i} = {_raw_expr(p, i)}")
    items = []
    for i, p in enumerate(group.points):
        if p.sf is None:
            items.append(f"{p.name!r}: v{i}")
            continue
        if isinstance(p.sf, int):
            sf = str(p.sf)
        elif p.sf in local:
            sf = local[p.sf]
        else:  # pysunspec2 looks in the group first, then in the model's top-level points
            sf = f"(mp.get({p.sf!r}) if mp is not None else None)"
        lines.append(f"    s = {sf}")
        lines.append(f"    if v{i} is not None and s:")
        lines.append(f"        p = _P10.get(s)")
        lines.append(f"        v{i} = None if p is None else round(v{i} * p, -s)")
        items.append(f"{p.name!r}: v{i}")
    lines.append("    return {" + ", ".join(items) + "}")
    namespace: dict[str, Any] = {
        "_S": struct.Struct(fmt), "_text": _text, "_eui48": _eui48, "_ipv6": _ipv6, "_P10": _P10,
    }
    exec(compile("\n".join(lines), f"<sunspec group {group.name}>", "exec"), namespace)  # noqa: S102
    ends = tuple((p.name, (p.offset + p.size) * 2) for p in group.points)
    return _Compiled(namespace["_decode"], struct.calcsize(fmt), ends)


@cache
def _compiled(group: GroupDef) -> _Compiled:
    return _compile(group)


@dataclass(frozen=True, slots=True)
class ModelBlock:
    """One decoded model: where it sits, its length ``L``, its top-level points and repeating groups."""

    id: int
    start: int
    length: int
    points: dict[str, Value]
    groups: dict[str, list[Instance] | Instance] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "start": self.start, "length": self.length, "points": self.points,
                "groups": self.groups}


def _trim(inst: Instance, comp: _Compiled, avail: int) -> None:
    """Null the points of an instance that lie (partly) beyond ``avail`` bytes of real data."""
    for name, end in comp.point_ends:
        if end > avail:
            inst[name] = None


def _decode_group(group: GroupDef, buf: bytes, off: int, end: int, mp: Instance | None,
                  legacy_count: int | None) -> tuple[Instance, int]:
    """Decode one instance of ``group`` at byte ``off``; returns it and the byte offset after it."""
    comp = _compiled(group)
    inst = comp.decode(buf, off, mp)
    if off + comp.size_bytes > end:
        _trim(inst, comp, end - off)
    root = inst if mp is None else mp
    off += comp.size_bytes
    for sub in group.groups:
        if sub.count is None:
            inst[sub.name], off = _decode_group(sub, buf, off, end, root, legacy_count)
            continue
        items, off = _decode_repeats(sub, buf, off, end, root, legacy_count)
        if items:
            inst[sub.name] = items
    return inst, off


def _decode_repeats(group: GroupDef, buf: bytes, off: int, end: int, root: Instance,
                    legacy_count: int | None) -> tuple[list[Instance], int]:
    if isinstance(group.count, str):
        n = root.get(group.count)
        count = n if isinstance(n, int) else 0
    elif group.count == 0:
        count = legacy_count or 0
    else:
        count = group.count
    items: list[Instance] = []
    for _ in range(count):
        if off >= end:  # a count larger than the block holds: stop at the data
            break
        inst, off = _decode_group(group, buf, off, end, root, legacy_count)
        items.append(inst)
    return items, off


def _legacy_count(mdef: ModelDef, length: int) -> int | None:
    """Repeats of a count-0 group: (L - fixed points) / group length, as pysunspec2 computes it."""
    for g in mdef.root.groups:
        if g.count == 0 and g.points_len:
            rep = length - (mdef.root.points_len - 2)
            if rep > 0 and rep % g.points_len == 0:
                return rep // g.points_len
            return 0
    return None


def decode_block(mdef: ModelDef, regs: Sequence[int], start: int = 0) -> ModelBlock:
    """Decode a model block read from a device: ``regs`` begins at the model's ``ID`` register.

    ``regs`` holds ``L + 2`` registers (fewer when the device's model is short; missing points are ``None``).
    """
    n = len(regs)
    length = regs[1] if n > 1 else 0
    buf = struct.pack(f">{n}H", *regs)
    return decode_bytes(mdef, buf, start, length)


def decode_bytes(mdef: ModelDef, buf: bytes, start: int, length: int) -> ModelBlock:
    """As :func:`decode_block`, from big-endian register bytes."""
    end = len(buf)
    root = mdef.root
    need = max(_compiled(root).size_bytes, (length + 2) * 2)
    legacy = _legacy_count(mdef, length)
    counts_known = legacy is not None or not root.groups
    if not counts_known:  # 7xx: the count points sit in the root; decode it, then size the rest
        head = buf if end >= need else buf + bytes(need - end)
        points = _compiled(root).decode(head, 0, None)
        counts = {k: v for k, v in points.items() if isinstance(v, int)}
        need = max(need, root.fixed_len(counts) * 2)
    if end < need:
        buf = buf + bytes(need - end)
    inst, _ = _decode_group(root, buf, 0, end, None, legacy)
    groups = {g.name: inst.pop(g.name) for g in root.groups if g.name in inst}
    return ModelBlock(mdef.id, start, length, inst, groups)


def decode(model_id: int, regs: Sequence[int], start: int = 0) -> ModelBlock:
    """Decode ``regs`` (from the model's ``ID`` register on) as SunSpec model ``model_id``."""
    return decode_block(model_def(model_id), regs, start)
