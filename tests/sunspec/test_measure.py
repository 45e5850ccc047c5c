"""measurement(): the table read as written (first match per field, rows in order), whatever blocks a device has."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.devices import TcpEndpoint, UnitIO
from gateway.sim import PhysicsSettings, SimulatedDevice, build_image, serve_tcp
from gateway.sunspec import ModelBlock, SunSpecReader, discover, measurement
from gateway.sunspec._measure import _PHASE_ROWS, _ROWS, INVERTERS, METERS
from gateway.types import Measurement
from tests.shared_data import dump_paths, load_dump
from tests.sim._helpers import FakeClock
from tests.sunspec.dump_io import DumpIO

_POINTS = sorted({p for row in _ROWS for p in row.points} | {p for _, points in _PHASE_ROWS for p in points})
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
    phases: dict[str, tuple[float, float, float]] = {}
    meter = next((b for b in blocks if b.id in METERS), None)  # the first meter block, all three phases or none
    for name, points in _PHASE_ROWS:
        got = [v for v in (meter.points.get(p) for p in points) if isinstance(v, int | float)] if meter else []
        if len(got) == 3:
            phases[name] = (float(got[0]), float(got[1]), float(got[2]))
    return Measurement(device_id=device_id, at=at, role=role, state=None if state is None else int(state),
                       w_ph=phases.get("w_ph"), var_ph=phases.get("var_ph"), v_ph=phases.get("v_ph"),
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


def test_a_meter_gives_each_phase_only_when_it_has_all_three() -> None:
    three: dict[str, int | float | str | None] = {
        "W": 900.0, "WphA": 100.0, "WphB": 300, "WphC": 500.0, "VAR": 30.0, "VARphA": 10.0, "VARphB": 10.0,
        "VARphC": 10.0, "PhVphA": 230.0, "PhVphB": 231.0, "PhVphC": 232.0}
    m = measurement("m", 1.0, "meter", [ModelBlock(203, 40002, 105, three, {})])
    assert (m.w_ph, m.var_ph, m.v_ph) == ((100.0, 300.0, 500.0), (10.0, 10.0, 10.0), (230.0, 231.0, 232.0))
    assert m.w_ph is not None
    assert isinstance(m.w_ph[1], float)
    # single-phase (201: B and C unimplemented) and a meter missing one phase's var: None, never a partial tuple
    single: dict[str, int | float | str | None] = {
        "W": 100.0, "WphA": 100.0, "WphB": None, "WphC": None, "PhVphA": 230.0, "PhVphB": None, "PhVphC": None}
    m = measurement("m", 1.0, "meter", [ModelBlock(201, 40002, 105, single, {})])
    assert (m.w, m.v, m.w_ph, m.var_ph, m.v_ph) == (100.0, 230.0, None, None, None)
    m = measurement("m", 1.0, "meter", [ModelBlock(213, 40002, 124, three | {"VARphC": None}, {})])
    assert m.w_ph == (100.0, 300.0, 500.0)
    assert m.var_ph is None
    # an inverter's per-phase voltages are not a meter's phases
    m = measurement("i", 1.0, "inverter", [ModelBlock(103, 40002, 50, three, {})])
    assert (m.w_ph, m.var_ph, m.v_ph) == (None, None, None)


def _dumps_with(models: Sequence[int]) -> list[Path]:
    return [p for p in dump_paths() if {m["id"] for m in load_dump(p)["models"]} & set(models)]


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in _dumps_with(METERS)] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no dump in ../shared/sunspec-dumps holds a meter model "
                                                     "(201-204, 211-214), or the directory is absent"))])
async def test_a_real_meter_dump_gives_its_phases(path: Path) -> None:
    """A real meter's registers: each per-phase field is its three points as pysunspec2 decodes them, or None."""
    io = DumpIO(load_dump(path))
    blocks = await SunSpecReader(io, await discover(io)).read()
    m = measurement("m", 1.0, "meter", blocks)
    assert m == _reference("m", 1.0, "meter", blocks)
    meter = next(b for b in blocks if b.id in METERS)
    if all(isinstance(meter.points.get(p), int | float) for p in ("WphA", "WphB", "WphC")):
        assert m.w_ph is not None
        assert m.w is not None
        assert sum(m.w_ph) == pytest.approx(m.w, rel=0.02, abs=5.0)  # a meter's phases add up to its total


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in dump_paths()] or [
    pytest.param(None, marks=pytest.mark.skip(reason="../shared/sunspec-dumps not present"))])
async def test_a_real_device_without_a_meter_model_gives_no_phases(path: Path) -> None:
    dump = load_dump(path)
    if {m["id"] for m in dump["models"]} & set(METERS):
        pytest.skip("holds a meter model: test_a_real_meter_dump_gives_its_phases")
    io = DumpIO(dump)
    blocks = await SunSpecReader(io, await discover(io)).read()
    m = measurement("d", 1.0, "inverter", blocks)
    assert m != Measurement("d", 1.0, "inverter")  # the dump does read as something
    assert (m.w_ph, m.var_ph, m.v_ph) == (None, None, None)


async def test_the_simulated_meter_read_over_modbus_gives_its_phases() -> None:
    """The simulator's three-phase meter (203), read like any device: its own household profile split evenly over
    the phases (one voltage on all), then a co-simulation's phases imposed, each read back."""
    clock = FakeClock()
    sim = SimulatedDevice(build_image("meter", "T-PHASES"), clock=clock,
                          physics=PhysicsSettings(start_hour=12.0, v_nom=230.0, seed=5))
    async with serve_tcp([sim], tick=0) as port, TcpEndpoint("127.0.0.1", port) as tcp:
        io = UnitIO(tcp, sim.unit)
        reader = SunSpecReader(io, await discover(io))
        m = measurement("meter-1", 1.0, "meter", await reader.read())
        assert m.w is not None
        assert m.w_ph is not None
        assert m.var_ph is not None
        assert m.v_ph is not None
        assert m.w_ph == pytest.approx((m.w / 3,) * 3, abs=1.0)  # register scaling: a few W
        assert m.v_ph == pytest.approx((m.v,) * 3, abs=0.2)
        flow = ((1_000.0, 4_000.0, -2_000.0), (100.0, 300.0, -50.0))
        v_pu = (1.01, 0.99, 1.04)
        sim.impose_grid(1.0, flow_ph=flow, v_ph_pu=v_pu)
        clock.advance(1.0)
        m = measurement("meter-1", 2.0, "meter", await reader.read())
        assert m.w_ph == pytest.approx(flow[0], rel=0.005, abs=1.0)
        assert m.var_ph == pytest.approx(flow[1], rel=0.005, abs=1.0)
        assert m.v_ph == pytest.approx([230.0 * x for x in v_pu], abs=5 * 0.001 * 230.0)
        assert m.v_ph is not None
        assert m.w == pytest.approx(sum(flow[0]), rel=0.005)
        assert m.v == pytest.approx(sum(m.v_ph) / 3, abs=0.1)
