"""measurement(): the table read as written (first match per field, rows in order), whatever blocks a device has."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.sunspec import ModelBlock, measurement
from gateway.sunspec._measure import _ROWS, INVERTERS, METERS
from gateway.types import Measurement

_POINTS = sorted({p for row in _ROWS for p in row.points})
_IDS = [*INVERTERS, *METERS, 120, 121, 124, 702, 802, 1, 160]


def _reference(device_id: str, at: float, role: str, blocks: Sequence[ModelBlock]) -> Measurement:
    """The table walked row by row, model by model, as its docstring says."""
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


def _block(mid: int, rng: random.Random) -> ModelBlock:
    points: dict[str, int | float | str | None] = {"ID": mid, "L": 10}
    for name in rng.sample(_POINTS, rng.randint(0, len(_POINTS))):
        points[name] = rng.choice([None, "text", rng.randint(0, 5), rng.uniform(-100.0, 100.0)])
    return ModelBlock(mid, 40002, 10, points, {})


def test_measurement_follows_the_table() -> None:
    rng = random.Random(7)
    for trial in range(3000):
        blocks = [_block(rng.choice(_IDS), rng) for _ in range(rng.randint(0, 6))]
        expected = _reference("d", 1.5, "inverter", blocks)
        assert measurement("d", 1.5, "inverter", blocks) == expected, f"trial {trial}: {[b.id for b in blocks]}"


def test_measurement_prefers_701_then_falls_back_per_field() -> None:
    blocks = [
        ModelBlock(103, 40002, 50, {"W": 1000.0, "VAr": 5.0, "PhVphA": 230.0, "PhVphB": None, "PhVphC": 232.0,
                                    "Hz": 50.0, "WH": 7, "St": 4}, {}),
        ModelBlock(701, 40100, 10, {"W": 990.0, "Var": None, "LNV": None, "Hz": 49.9, "TotWhInj": None, "St": None},
                   {}),
        ModelBlock(120, 40200, 26, {"WRtg": 5000}, {}),
    ]
    m = measurement("inv1", 2.0, "inverter", blocks)
    assert m == Measurement(device_id="inv1", at=2.0, role="inverter", w=990.0, var=5.0, v=231.0, hz=49.9, wh=7.0,
                            w_max=5000.0, state=4)
    assert isinstance(m.state, int)
    assert isinstance(m.wh, float)
