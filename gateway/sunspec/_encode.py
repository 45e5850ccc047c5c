"""Encoding of SunSpec values into registers: the inverse of :mod:`gateway.sunspec._decode`.

Used for control writes (scale factors applied in reverse, as pysunspec2's ``cvalue`` setter does) and by the
simulator to build register images. ``None`` encodes as the type's unimplemented sentinel.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from gateway.errors import GridedgeError
from gateway.sunspec._decode import _CODE, UNIMPLEMENTED
from gateway.sunspec._defs import GroupDef, ModelDef, PointDef


class EncodeError(GridedgeError, ValueError):
    """A value does not fit the point it is meant for (range, type, or an unusable scale factor)."""


def to_raw(value: float, sf: int | None) -> int:
    """The integer register value for an engineering ``value`` under scale factor ``sf`` (pysunspec2's rule)."""
    if not sf:
        return round(value)
    if not -20 <= sf <= 20:
        raise EncodeError(f"scale factor {sf} is outside -20..20")
    return round(round(float(value), abs(sf)) / math.pow(10, sf))


def encode_point(p: PointDef, value: Any, sf: int | None = None) -> list[int]:
    """Registers holding ``value`` for point ``p``; numeric values are scaled by ``sf`` (``10**sf`` units)."""
    n = p.size * 2
    if value is None:
        if p.type == "string" or p.type in ("eui48", "ipv6addr", "pad"):
            raw = b"\0" * n
        else:
            code = _CODE[p.type]
            sentinel = UNIMPLEMENTED[p.type]
            if code in "fd":
                code = "I" if code == "f" else "Q"
            raw = struct.pack(">" + code, sentinel).rjust(n, b"\0")
    elif p.type == "string":
        data = str(value).encode("utf-8")
        if len(data) > n:
            raise EncodeError(f"{p.name}: {len(data)} bytes do not fit {n}")
        raw = data.ljust(n, b"\0")
    elif p.type == "eui48":
        raw = b"\0\0" + bytes.fromhex(str(value).replace(":", ""))
    elif p.type == "ipv6addr":
        raw = bytes.fromhex(str(value).replace(":", ""))
    else:
        code = _CODE[p.type]
        number = float(value) if code in "fd" else to_raw(value, sf)
        try:
            raw = struct.pack(">" + code, number).rjust(n, b"\0")
        except struct.error as exc:
            raise EncodeError(f"{p.name}: {value!r} is out of range for {p.type}") from exc
    if len(raw) != n:
        raise EncodeError(f"{p.name}: encoded to {len(raw)} bytes, expected {n}")
    return list(struct.unpack(f">{p.size}H", raw))


def _resolve_sf(p: PointDef, group_values: Mapping[str, Any], model_values: Mapping[str, Any]) -> int | None:
    if p.sf is None or isinstance(p.sf, int):
        return p.sf
    sf = group_values.get(p.sf, model_values.get(p.sf))
    return sf if isinstance(sf, int) else None


def encode_group(group: GroupDef, values: Mapping[str, Any], model_values: Mapping[str, Any]) -> list[int]:
    """Registers of one group instance from engineering ``values`` (sub-group lists under their names)."""
    regs: list[int] = []
    for p in group.points:
        regs += encode_point(p, values.get(p.name), _resolve_sf(p, values, model_values))
    for sub in group.groups:
        inst = values.get(sub.name)
        if inst is None:
            continue
        for item in [inst] if isinstance(inst, Mapping) else inst:
            regs += encode_group(sub, item, model_values)
    return regs


def encode_model(mdef: ModelDef, values: Mapping[str, Any]) -> list[int]:
    """A whole model block (``ID``, ``L`` and body) from engineering ``values``; ``ID``/``L`` are filled in."""
    body = encode_group(mdef.root, {**values, "ID": mdef.id, "L": 0}, values)
    body[1] = len(body) - 2
    return body
