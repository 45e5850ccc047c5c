"""Normalising decoded SunSpec models into a :class:`gateway.types.Measurement`.

The mapping is a table of rows (models, points in order of preference, how phases combine), not code per
model: the first model the device has that yields a value wins.

Per phase (``w_ph``, ``var_ph``, ``v_ph``): a meter's ``WphA/B/C``, ``VARphA/B/C`` and ``PhVphA/B/C`` (models
201-204, 211-214), each quantity only when all three phases read a number: a single-phase (201) or split-phase
(202) meter, or one that leaves a phase unimplemented, gives None rather than a partial tuple (the consumer, the
state estimator, wants a value on each of phases a, b, c or none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from operator import attrgetter

from gateway.sunspec._decode import ModelBlock
from gateway.types import Measurement

INVERTERS = (701, 103, 102, 101, 113, 112, 111)
METERS = (201, 202, 203, 204, 211, 212, 213, 214)


def _first(values: Sequence[float | None]) -> float | None:
    return next((v for v in values if v is not None), None)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Row:
    field: str
    models: tuple[int, ...]
    points: tuple[str, ...]
    combine: Callable[[Sequence[float | None]], float | None] = _first


_ROWS = (
    _Row(field="w", models=INVERTERS + METERS, points=("W",)),
    _Row(field="var", models=(701, *METERS), points=("Var", "VAR")),
    _Row(field="var", models=INVERTERS, points=("VAr",)),
    _Row(field="v", models=(701,), points=("LNV",)),
    _Row(field="v", models=INVERTERS[1:] + METERS, points=("PhVphA", "PhVphB", "PhVphC"), combine=_mean),
    _Row(field="hz", models=INVERTERS + METERS, points=("Hz",)),
    _Row(field="wh", models=(701,), points=("TotWhInj",)),
    _Row(field="wh", models=INVERTERS[1:], points=("WH",)),
    _Row(field="wh", models=METERS, points=("TotWhImp",)),
    _Row(field="soc_pct", models=(802,), points=("SoC",)),
    _Row(field="soc_pct", models=(124,), points=("ChaState",)),
    _Row(field="w_max", models=(702,), points=("WMax", "WMaxRtg")),
    _Row(field="w_max", models=(121,), points=("WMax",)),
    _Row(field="w_max", models=(120,), points=("WRtg",)),
    _Row(field="state", models=(701, *INVERTERS[1:]), points=("St",)),
)


#: Per-phase fields of a meter: (field, points of phases A, B, C).
_PHASE_ROWS = (("w_ph", ("WphA", "WphB", "WphC")), ("var_ph", ("VARphA", "VARphB", "VARphC")),
               ("v_ph", ("PhVphA", "PhVphB", "PhVphC")))

_Candidate = tuple[int, tuple[str, ...], Callable[[Sequence[float | None]], float | None] | None]


@cache
def _plan(model_ids: tuple[int, ...]) -> tuple[tuple[str, tuple[_Candidate, ...]], ...]:
    """Per field, in the table's order of preference: (index of the first block of that model, points, combine)
    for each model of the table that ``model_ids`` (the blocks' ids, in order) holds; combine is ``None`` for
    the first of one point. Devices keep their model list: this is worked out once per kind of device."""
    first: dict[int, int] = {}
    for i, mid in enumerate(model_ids):
        first.setdefault(mid, i)
    fields: dict[str, list[_Candidate]] = {}
    for row in _ROWS:
        combine = None if row.combine is _first and len(row.points) == 1 else row.combine
        fields.setdefault(row.field, []).extend(
            (first[mid], row.points, combine) for mid in row.models if mid in first)
    return tuple((name, tuple(c)) for name, c in fields.items() if c)


_block_id = attrgetter("id")


def measurement(device_id: str, at: float, role: str, blocks: Sequence[ModelBlock]) -> Measurement:
    """The :class:`Measurement` these decoded models give (first match per field, in the table's order)."""
    out: dict[str, float] = {}
    state = None
    for name, candidates in _plan(tuple(map(_block_id, blocks))):
        for index, points, combine in candidates:
            values = blocks[index].points
            if combine is None:
                value = values.get(points[0])
                if not isinstance(value, int | float):
                    continue
            else:
                value = combine([v if isinstance(v, int | float) else None for v in map(values.get, points)])
                if value is None:
                    continue
            if name == "state":
                state = int(value)
            else:
                out[name] = float(value)
            break
    phases = _per_phase(blocks)
    return Measurement(device_id=device_id, at=at, role=role, state=state, w_ph=phases.get("w_ph"),
                       var_ph=phases.get("var_ph"), v_ph=phases.get("v_ph"), **out)


def _per_phase(blocks: Sequence[ModelBlock]) -> dict[str, tuple[float, float, float]]:
    """The first meter block's per-phase readings that have all three phases (module docstring)."""
    meter = next((b for b in blocks if b.id in METERS), None)
    if meter is None:
        return {}
    out: dict[str, tuple[float, float, float]] = {}
    for name, points in _PHASE_ROWS:
        a, b, c = (meter.points.get(p) for p in points)
        if isinstance(a, int | float) and isinstance(b, int | float) and isinstance(c, int | float):
            out[name] = (float(a), float(b), float(c))
    return out
