"""SunSpec model definitions, loaded from the official JSON that pysunspec2 ships (never typed by hand).

A model is a tree of groups; each group instance lays out its points first, then its sub-groups. Offsets here
are in registers from the model's ``ID`` register, as in pysunspec2, so a model block read from a device
(``ID``, ``L`` and ``L`` registers more) decodes with these offsets directly.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from gateway.errors import SunSpecError

#: Width in registers of each fixed-size SunSpec point type (strings take their ``size``).
TYPE_WIDTH: dict[str, int] = {
    "int16": 1, "uint16": 1, "count": 1, "acc16": 1, "enum16": 1, "bitfield16": 1, "pad": 1, "sunssf": 1,
    "int32": 2, "uint32": 2, "acc32": 2, "enum32": 2, "bitfield32": 2, "ipaddr": 2, "float32": 2,
    "int64": 4, "uint64": 4, "acc64": 4, "float64": 4, "eui48": 4, "ipv6addr": 8,
}

_JSON_DIR = files("sunspec2") / "models" / "json"


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point: its name, SunSpec type, width in registers and where its scale factor comes from."""

    name: str
    type: str
    size: int
    offset: int
    sf: str | int | None = None
    writable: bool = False
    mandatory: bool = False
    static: bool = False
    units: str | None = None
    symbols: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, eq=False)  # identity: definitions are loaded once and cached
class GroupDef:
    """A group: its points (offsets relative to the group instance) and sub-groups.

    ``count`` is ``None`` for a single (non-repeating) group and the model's root, an int for fixed repeats
    (0 = "as many as ``L`` holds", the 1xx convention), or the name of the model point that holds the count
    (the 7xx convention).
    """

    name: str
    points: tuple[PointDef, ...]
    groups: tuple[GroupDef, ...]
    count: int | str | None
    points_len: int

    def point(self, name: str) -> PointDef:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    def fixed_len(self, counts: dict[str, int] | None = None) -> int:
        """Registers one instance of this group takes, given the values of count points."""
        total = self.points_len
        for g in self.groups:
            n = 1 if g.count is None else g.count if isinstance(g.count, int) else (counts or {}).get(g.count, 0)
            total += n * g.fixed_len(counts)
        return total


@dataclass(frozen=True, slots=True)
class ModelDef:
    """A whole SunSpec model: id, name and its root group (which begins with the ``ID`` and ``L`` points)."""

    id: int
    name: str
    label: str
    root: GroupDef

    @property
    def fixed_len(self) -> int:
        """The model's length ``L`` when every repeating group is absent (``ID``/``L`` excluded)."""
        return self.root.points_len - 2

    def has_point(self, name: str) -> bool:
        return any(p.name == name for p in self.root.points)


def _point(raw: dict[str, Any], offset: int) -> PointDef:
    ptype = raw["type"]
    size = int(raw["size"]) if "size" in raw else TYPE_WIDTH[ptype]
    sf = raw.get("sf")
    if isinstance(sf, str):
        with contextlib.suppress(ValueError):
            sf = int(sf)
    return PointDef(
        name=raw["name"],
        type=ptype,
        size=size,
        offset=offset,
        sf=sf,
        writable=raw.get("access") == "RW",
        mandatory=raw.get("mandatory") == "M",
        static=raw.get("static") == "S",
        units=raw.get("units"),
        symbols=tuple((s["name"], int(s["value"])) for s in raw.get("symbols", ())),
    )


def _group(raw: dict[str, Any], count: int | str | None) -> GroupDef:
    points: list[PointDef] = []
    offset = 0
    for rp in raw.get("points", ()):
        p = _point(rp, offset)
        points.append(p)
        offset += p.size
    groups = []
    for rg in raw.get("groups", ()):
        c = rg.get("count")
        if isinstance(c, str) and c.isdigit():
            c = int(c)
        groups.append(_group(rg, c))
    return GroupDef(raw["name"], tuple(points), tuple(groups), count, offset)


@cache
def model_def(model_id: int) -> ModelDef:
    """The definition of SunSpec model ``model_id``; :class:`SunSpecError` if pysunspec2 does not define it."""
    path = _JSON_DIR / f"model_{model_id}.json"
    if not path.is_file():
        raise SunSpecError(f"model {model_id} is not defined by the SunSpec model set")
    raw = json.loads(path.read_text(encoding="utf-8"))
    root = _group(raw["group"], None)
    return ModelDef(int(raw["id"]), raw["group"]["name"], raw["group"].get("label", ""), root)


@cache
def all_model_ids() -> tuple[int, ...]:
    """Every model id pysunspec2 defines, ascending."""
    ids = []
    for entry in _JSON_DIR.iterdir():
        name = entry.name
        if name.startswith("model_") and name.endswith(".json"):
            ids.append(int(name[6:-5]))
    return tuple(sorted(ids))
