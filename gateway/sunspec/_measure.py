"""Normalising decoded SunSpec models into a :class:`gateway.types.Measurement`.

The mapping is a table of rows (models, points in order of preference, how phases combine), not code per
model: the first model the device has that yields a value wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def measurement(device_id: str, at: float, role: str, blocks: Sequence[ModelBlock]) -> Measurement:
    """The :class:`Measurement` these decoded models give (first match per field, in the table's order)."""
    by_id: dict[int, ModelBlock] = {}
    for b in blocks:
        by_id.setdefault(b.id, b)
    out: dict[str, float | int | None] = {}
    for row in _ROWS:
        if out.get(row.field) is not None:
            continue
        for mid in row.models:
            block = by_id.get(mid)
            if block is None:
                continue
            raw = [block.points.get(p) for p in row.points]
            value = row.combine([v if isinstance(v, int | float) else None for v in raw])
            if value is not None:
                out[row.field] = value
                break
    state = out.pop("state", None)
    return Measurement(device_id=device_id, at=at, role=role, state=None if state is None else int(state),
                       **{k: float(v) for k, v in out.items() if v is not None})
