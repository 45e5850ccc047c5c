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
from dataclasses import dataclass
from typing import Any, NamedTuple

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

#: pysunspec2 scales as ``round(v * 10**sf, -sf)``; ``round`` on floats costs ~0.5 us. For an integer ``v``
#: with |v| < 2**50 and sf < 0, ``v * 10**sf`` is within 2**-51 relative of ``v / 10**-sf`` (two roundings),
#: far inside half a unit of the last decimal kept, so the result is the double nearest ``v / 10**-sf``: one
#: correctly rounded division gives it exactly (``int / int`` is correctly rounded in CPython, and cheaper than
#: ``int / float``; 10**20 and below are exact doubles, so both give the same double). For sf > 0 the product
#: is exact below 2**53 and already a multiple of 10**sf, so ``round`` returns it unchanged. For sf = 0 and an
#: unimplemented scale factor pysunspec2 does not scale: the raw integer. The differential test holds all
#: of it to pysunspec2.
_INTEGER_TYPES = frozenset(
    ("int16", "uint16", "count", "acc16", "int32", "uint32", "acc32", "int64", "uint64", "acc64")
)
_EXACT_BOUND = 2**50

_ScaleEntry = tuple[int | None, bool, float | None, float | None]


def _scale_entry(sf: int | None) -> _ScaleEntry:
    """(divisor, keep raw, multiplier exact for every 16-bit value, multiplier exact for every 32-bit value)."""
    if sf is None or sf == 0:
        return (None, True, None, None)
    if sf < 0:
        return (10**-sf, False, None, None)
    p = math.pow(10, sf)
    return (None, False, p if 0xFFFF * 10**sf < 2**53 else None, p if 0xFFFFFFFF * 10**sf < 2**53 else None)


#: Scale factor value -> :func:`_scale_entry`, for the values pysunspec2 can scale by (and ``None``). Any other
#: value is garbage from the wire and takes ``_SLOW``: nothing applies, so :func:`_scale_slow` decides (``None``).
_SCALE: dict[int | None, _ScaleEntry] = {sf: _scale_entry(sf) for sf in [None, *range(-20, 21)]}
_SLOW: _ScaleEntry = (None, False, None, None)

#: Groups of at least this many points build their dict by copying a template (a memcpy of its key table) and
#: setting each value; a dict display inserts key by key, which costs more from about this size on.
_TEMPLATE_MIN = 16


def _scale_slow(v: float, sf: int) -> float | None:
    p = _P10.get(sf)
    return None if p is None else round(v * p, -sf)


def _text(raw: bytes) -> str | None:
    """UTF-8 up to the trailing NULs; ``None`` if it begins with NUL or is not UTF-8 (pysunspec2's rules)."""
    if not raw[0]:
        return None
    try:
        return raw.rstrip(b"\0").decode("utf-8")  # a NUL byte is only ever U+0000 in UTF-8
    except UnicodeDecodeError:
        return None


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
    point_spans: tuple[tuple[str, int, int], ...]  # (name, first byte, byte after) for nulling missing data
    scaled: tuple[tuple[str, str], ...]  # (point, its scale factor point) for points scaled by a named factor


def _raw_expr(p: PointDef, a: str) -> str:
    """Expression giving the point's value (``None`` if unimplemented) from its unpacked raw value ``a``."""
    if p.type == "string":
        return f"_text({a})"
    if p.type == "eui48":
        return f"_eui48({a})"
    if p.type == "ipv6addr":
        return f"_ipv6({a})"
    if p.type == "pad":
        return a
    sentinel = UNIMPLEMENTED[p.type]
    if p.type in ("float32", "float64"):
        return f"(None if ({a} != {a} or {a} == {sentinel}) else {a})"
    return f"(None if {a} == {sentinel} else {a})"


def _struct_code(p: PointDef) -> str:
    if p.type in ("string", "eui48", "ipv6addr"):
        return f"{p.size * 2}s"
    code = _CODE[p.type]
    extra = p.size * 2 - _WIDTH_BYTES[code]
    return code + (f"{extra}x" if extra > 0 else "")


@dataclass(frozen=True, slots=True)
class _Scale:
    """The locals of one scale factor inside a generated function: its value and its :data:`_SCALE` entry."""

    value: str  # the scale factor's value (a local, or a literal for a fixed ``sf``)
    div: str
    raw: str
    mul16: str
    mul32: str


def _scaled(p: PointDef, a: str, v: str, sc: _Scale) -> tuple[list[str], str]:
    """Statements and the expression giving the scaled value of point ``p`` from its raw value ``a``.

    Integers of 16 and 32 bits take the exact fast path (see ``_EXACT_BOUND``) in one expression: the sentinel
    check, then a division (sf < 0), the raw value (sf = 0 or unimplemented), a multiplication (sf > 0) or,
    for a scale factor out of range, :func:`_scale_slow`.
    """
    width = _WIDTH_BYTES.get(_CODE.get(p.type, ""), 0)
    if p.type in _INTEGER_TYPES and width in (2, 4):
        mul = sc.mul16 if width == 2 else sc.mul32
        return [], (f"None if {a} == {UNIMPLEMENTED[p.type]} else {a} / {sc.div} if {sc.div} else {a} if {sc.raw} "
                    f"else {a} * {mul} if {mul} else _slow({a}, {sc.value})")
    lines = [f"    {v} = {_raw_expr(p, a)}"]
    if p.type in _INTEGER_TYPES:  # 64-bit values may exceed the exact range: check it
        lines += [f"    if {sc.value} and {v} is not None:",
                  f"        {v} = {v} / {sc.div} if ({sc.div} and -_B < {v} < _B) else _slow({v}, {sc.value})"]
    else:
        lines += [f"    if {sc.value} and {v} is not None:", f"        {v} = _slow({v}, {sc.value})"]
    return lines, v


def _compile(group: GroupDef) -> _Compiled:
    fmt = ">" + "".join(_struct_code(p) for p in group.points)
    raw = [f"a{i}" for i in range(len(group.points))]
    lines = ["def _decode(buf, off, mp):"]
    if raw:
        lines.append(f"    {', '.join(raw)}, = _S.unpack_from(buf, off)")
    # Scale factors first, each once: the scaled points below read them as locals. pysunspec2 looks for a
    # named scale factor in the group first, then in the model's top-level points (``mp``, the root instance).
    local = {p.name: i for i, p in enumerate(group.points)}
    scales: dict[str | int, _Scale] = {}
    for p in group.points:
        if p.sf is None or p.sf in scales:
            continue
        k = len(scales)
        if isinstance(p.sf, int):
            value = str(p.sf)
        elif p.sf in local:
            i = local[p.sf]
            value = f"v{i}"
            lines.append(f"    v{i} = {_raw_expr(group.points[i], raw[i])}")
        else:
            value = f"o{k}"
            lines.append(f"    o{k} = mp.get({p.sf!r}) if mp is not None else None")
        scales[p.sf] = sc = _Scale(value, f"d{k}", f"z{k}", f"p{k}", f"q{k}")
        lines.append(f"    {sc.div}, {sc.raw}, {sc.mul16}, {sc.mul32} = _SCALE.get({value}, _SLOW)")
    sf_locals = {local[name] for name in scales if isinstance(name, str) and name in local}
    items = []
    for i, p in enumerate(group.points):
        if i in sf_locals:
            expr = f"v{i}"
        elif p.sf is None:
            expr = _raw_expr(p, raw[i])
        else:
            pre, expr = _scaled(p, raw[i], f"v{i}", scales[p.sf])
            lines += pre
        items.append((p.name, expr))
    if len(items) >= _TEMPLATE_MIN:
        lines.append("    r = _T.copy()")
        lines += [f"    r[{name!r}] = {expr}" for name, expr in items]
        lines.append("    return r")
    else:
        lines.append("    return {" + ", ".join(f"{name!r}: {expr}" for name, expr in items) + "}")
    namespace: dict[str, Any] = {
        "_S": struct.Struct(fmt), "_text": _text, "_eui48": _eui48, "_ipv6": _ipv6, "_slow": _scale_slow,
        "_B": _EXACT_BOUND, "_SCALE": _SCALE, "_SLOW": _SLOW, "_T": dict.fromkeys(p.name for p in group.points),
    }
    exec(compile("\n".join(lines), f"<sunspec group {group.name}>", "exec"), namespace)  # noqa: S102
    spans = tuple((p.name, p.offset * 2, (p.offset + p.size) * 2) for p in group.points)
    scaled = tuple((p.name, p.sf) for p in group.points if isinstance(p.sf, str))
    return _Compiled(namespace["_decode"], struct.calcsize(fmt), spans, scaled)


#: Compiled groups, by definition (``GroupDef`` hashes by identity: definitions are loaded once).
_COMPILED: dict[GroupDef, _Compiled] = {}


def _compiled(group: GroupDef) -> _Compiled:
    comp = _COMPILED.get(group)
    if comp is None:
        comp = _COMPILED[group] = _compile(group)
    return comp


class ModelBlock(NamedTuple):
    """One decoded model: where it sits, its length ``L``, its top-level points and repeating groups.

    A named tuple: immutable, and built (with ``_new_block``) in about a fifth of a frozen dataclass's time.
    """

    id: int
    start: int
    length: int
    points: dict[str, Value]
    groups: dict[str, list[Instance] | Instance]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "start": self.start, "length": self.length, "points": self.points,
                "groups": self.groups}


#: ``tuple.__new__(ModelBlock, fields)`` builds a block without the named tuple's Python-level ``__new__``.
_new_block: Callable[[type[ModelBlock], tuple[int, int, int, dict[str, Value], dict[str, Any]]], ModelBlock]
_new_block = tuple.__new__


def _null_missing(inst: Instance, comp: _Compiled, off: int, end: int, unreadable: frozenset[int],
                  refused: set[str], is_root: bool) -> None:
    """Null the points of an instance at byte ``off`` that lie past ``end`` or on an unreadable register.

    A point whose scale factor sits on an unreadable register is nulled too: a value without its scale is
    no value. ``refused`` collects the names of the model's top-level points that were unreadable.
    """
    local_refused = set()
    for name, first, after in comp.point_spans:
        if any(r in unreadable for r in range((off + first) // 2, (off + after) // 2)):
            inst[name] = None
            local_refused.add(name)
        elif off + after > end:
            inst[name] = None
    if is_root:
        refused |= local_refused
    for name, sf in comp.scaled:
        if sf in local_refused or (sf not in inst and sf in refused):
            inst[name] = None


def _decode_group(group: GroupDef, buf: bytes, off: int, end: int, mp: Instance | None,
                  legacy_count: int | None, unreadable: frozenset[int],
                  refused: set[str]) -> tuple[Instance, int]:
    """Decode one instance of ``group`` at byte ``off``; returns it and the byte offset after it."""
    comp = _COMPILED.get(group) or _compiled(group)
    inst = comp.decode(buf, off, mp)
    if off + comp.size_bytes > end or unreadable:
        _null_missing(inst, comp, off, end, unreadable, refused, mp is None)
    root = inst if mp is None else mp
    off += comp.size_bytes
    for sub in group.groups:
        if sub.count is None:
            inst[sub.name], off = _decode_group(sub, buf, off, end, root, legacy_count, unreadable, refused)
            continue
        items, off = _decode_repeats(sub, buf, off, end, root, legacy_count, unreadable, refused)
        if items:
            inst[sub.name] = items
    return inst, off


def _decode_repeats(group: GroupDef, buf: bytes, off: int, end: int, root: Instance,
                    legacy_count: int | None, unreadable: frozenset[int],
                    refused: set[str]) -> tuple[list[Instance], int]:
    if isinstance(group.count, str):
        n = root.get(group.count)
        count = n if isinstance(n, int) else 0
    elif group.count == 0:
        count = legacy_count or 0
    else:
        count = group.count or 1
    comp = _COMPILED.get(group) or _compiled(group)
    size = comp.size_bytes
    if not group.groups and not unreadable and size:  # the common case: flat instances, all read
        # Instances wholly inside the data need no nulling: decode them in one go. The loop below takes the
        # rest (an instance cut by the end of the data, and stops at the data's end).
        full = max(0, min(count, (end - off) // size))
        dec = comp.decode
        items = [dec(buf, o, root) for o in range(off, off + full * size, size)]
        off += full * size
        count -= full
    else:
        items = []
    for _ in range(count):
        if off >= end:  # a count larger than the block holds: stop at the data
            break
        inst, off = _decode_group(group, buf, off, end, root, legacy_count, unreadable, refused)
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


def decode_block(mdef: ModelDef, regs: Sequence[int], start: int = 0,
                 unreadable: frozenset[int] = frozenset()) -> ModelBlock:
    """Decode a model block read from a device: ``regs`` begins at the model's ``ID`` register.

    ``regs`` holds ``L + 2`` registers (fewer when the device's model is short; missing points are ``None``).
    ``unreadable`` holds offsets (from the ``ID`` register) of registers the device refused: their points are
    ``None`` whatever ``regs`` holds there.
    """
    n = len(regs)
    length = regs[1] if n > 1 else 0
    buf = struct.pack(f">{n}H", *regs)
    return decode_bytes(mdef, buf, start, length, unreadable)


def decode_bytes(mdef: ModelDef, buf: bytes, start: int, length: int,
                 unreadable: frozenset[int] = frozenset()) -> ModelBlock:
    """As :func:`decode_block`, from big-endian register bytes."""
    end = len(buf)
    root = mdef.root
    comp = _COMPILED.get(root) or _compiled(root)
    if not root.groups and end >= comp.size_bytes and not unreadable:  # the common case: one flat block, all of it read
        return _new_block(ModelBlock, (mdef.id, start, length, comp.decode(buf, 0, None), {}))
    need = max(comp.size_bytes, (length + 2) * 2)
    legacy = _legacy_count(mdef, length)
    if end < need:
        buf = buf + bytes(need - end)
    # The root instance, as _decode_group decodes any instance, with its groups kept apart from its points.
    points = comp.decode(buf, 0, None)
    if legacy is None and root.groups:  # 7xx: the count points sit in the root: they size the rest
        counts = {k: v for k, v in points.items() if isinstance(v, int)}
        more = root.fixed_len(counts) * 2 - len(buf)
        if more > 0:
            buf = buf + bytes(more)
    refused: set[str] = set()
    if comp.size_bytes > end or unreadable:
        _null_missing(points, comp, 0, end, unreadable, refused, True)
    off = comp.size_bytes
    groups: dict[str, list[Instance] | Instance] = {}
    for sub in root.groups:
        if sub.count is None:
            groups[sub.name], off = _decode_group(sub, buf, off, end, points, legacy, unreadable, refused)
            continue
        items, off = _decode_repeats(sub, buf, off, end, points, legacy, unreadable, refused)
        if items:
            groups[sub.name] = items
    return _new_block(ModelBlock, (mdef.id, start, length, points, groups))


def decode(model_id: int, regs: Sequence[int], start: int = 0) -> ModelBlock:
    """Decode ``regs`` (from the model's ``ID`` register on) as SunSpec model ``model_id``."""
    return decode_block(model_def(model_id), regs, start)
