"""Control writes: scale factors in reverse, reversion timers with every limit, read-after-write verification."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from gateway.devices import TcpEndpoint, UnitIO
from gateway.errors import UnsupportedControl, WriteVerificationError
from gateway.sim import simulated_fleet
from gateway.sunspec import DeviceMap, SunSpecControls, SunSpecReader, discover, model_def
from tests.shared_data import DUMPS, load_dump
from tests.sunspec.dump_io import DumpIO


def _io(name: str) -> DumpIO:
    path = DUMPS / f"{name}.json"
    if not path.exists():
        pytest.skip("../shared/sunspec-dumps is not present: a fresh clone has no shared test data")
    return DumpIO(load_dump(path))


async def _points(io: DumpIO, model_id: int) -> dict:
    device_map = await discover(io)
    (block,) = await SunSpecReader(io, device_map, {model_id}).read()
    return {**block.points, **block.groups}


async def test_curtailment_704_programs_reversion_timer() -> None:
    io = _io("EmulatedDER")
    controls = SunSpecControls(io, await discover(io))
    result = await controls.limit_active_power_pct(42.5, revert_s=120)
    assert result.model == 704
    assert result.reversion_s == 120
    p = await _points(io, 704)
    assert p["WMaxLimPct"] == pytest.approx(42.5)
    assert p["WMaxLimPctEna"] == 1
    assert p["WMaxLimPctRvrtTms"] == 120


async def test_curtailment_123_scales_in_reverse() -> None:
    io = _io("DeviceFimerPVSDated20240722")
    device_map = await discover(io)
    before = await _points(io, 123)
    controls = SunSpecControls(io, device_map)
    result = await controls.limit_active_power_pct(37.0, revert_s=60)
    assert result.model == 123
    after = await _points(io, 123)
    assert after["WMaxLimPct"] == pytest.approx(37.0)
    assert after["WMaxLim_Ena"] == 1
    sf = before["WMaxLimPct_SF"]
    addr = device_map.find(123).addr + 2 + 3  # WMaxLimPct is the 4th point after ID/L
    assert io.regs[addr - io.base] == round(37.0 / 10**sf)
    assert result.reversion_s == (60 if before["WMaxLimPct_RvrtTms"] is not None else None)


async def test_active_power_setpoint_704() -> None:
    io = _io("EmulatedDER")
    controls = SunSpecControls(io, await discover(io))
    await controls.set_active_power_w(-2500, revert_s=30)
    p = await _points(io, 704)
    assert (p["WSetEna"], p["WSetMod"], p["WSet"], p["WSetRvrtTms"]) == (1, 1, -2500, 30)


async def test_power_factor_704_group() -> None:
    io = _io("EmulatedDER")
    controls = SunSpecControls(io, await discover(io))
    await controls.set_power_factor(0.95, revert_s=30, absorbing=True)
    p = await _points(io, 704)
    assert p["PFWInj"]["PF"] == pytest.approx(0.95)
    assert p["PFWInj"]["Ext"] == 1
    assert p["PFWInjEna"] == 1


async def test_volt_var_126_curve() -> None:
    io = _io("DeviceFimerPVSDated20240722")
    controls = SunSpecControls(io, await discover(io))
    curve = [(92.0, 44.0), (98.0, 0.0), (102.0, 0.0), (108.0, -44.0)]
    await controls.set_volt_var(curve, revert_s=300)
    p = await _points(io, 126)
    last = p["curve"][-1]
    assert [(last[f"V{i}"], last[f"VAr{i}"]) for i in range(1, 5)] == curve
    assert p["ActCrv"] == len(p["curve"])
    assert p["ModEna"] == 1


async def test_limit_requires_reversion_time() -> None:
    io = _io("EmulatedDER")
    controls = SunSpecControls(io, await discover(io))
    with pytest.raises(ValueError, match="reversion"):
        await controls.limit_active_power_pct(50, revert_s=0)


async def test_missing_model_is_unsupported() -> None:
    io = _io("DeviceSolarEdgeDated20191001")
    controls = SunSpecControls(io, await discover(io))
    with pytest.raises(UnsupportedControl):
        await controls.limit_active_power_pct(50, revert_s=60)


class _IgnoresWrites(DumpIO):
    async def write(self, address: int, values: Sequence[int]) -> None:
        del address, values  # accepts the write, keeps nothing: what a busy inverter sometimes does


async def test_write_not_held_fails_verification() -> None:
    dump = load_dump(DUMPS / "EmulatedDER.json") if DUMPS.exists() else pytest.skip("no shared dumps")
    io = _IgnoresWrites(dump)
    controls = SunSpecControls(io, await discover(io))
    with pytest.raises(WriteVerificationError, match="read back"):
        await controls.limit_active_power_pct(10, revert_s=60)


# --- 124 storage: a limit window [-InWRte, +OutWRte] % of WChaMax (see gateway.sunspec._controls) -------------------


@contextlib.asynccontextmanager
async def _battery() -> AsyncIterator[tuple[SunSpecControls, UnitIO, DeviceMap]]:
    """Controls over Modbus TCP to a simulated battery (pymodbus server; 124 with InOutWRte_SF = -1)."""
    async with simulated_fleet(1, "battery") as [endpoint], TcpEndpoint(endpoint.host, endpoint.port) as tcp:
        io = UnitIO(tcp, endpoint.unit)
        device_map = await discover(io)
        yield SunSpecControls(io, device_map), io, device_map


async def _124(io: UnitIO, device_map: DeviceMap) -> dict[str, Any]:
    (block,) = await SunSpecReader(io, device_map, {124}).read()
    return block.points


@pytest.mark.parametrize(("pct", "out", "into"), [(40.0, 40.0, -40.0), (-25.5, -25.5, 25.5), (0.0, 0.0, 0.0)])
async def test_storage_setpoint_is_a_single_point_window(pct: float, out: float, into: float) -> None:
    async with _battery() as (controls, io, device_map):
        result = await controls.set_storage_rate_pct(pct, revert_s=45)
        p = await _124(io, device_map)
        loc = device_map.find(124)
        assert loc is not None
        raw = await io.read(loc.addr + model_def(124).root.point("InWRte").offset, 1)
    assert (result.model, result.reversion_s, result.reversion_value) == (124, 45, None)
    assert (p["OutWRte"], p["InWRte"], p["StorCtl_Mod"], p["InOutWRte_RvrtTms"]) == (out, into, 3, 45)
    assert raw == [round(into * 10) & 0xFFFF]  # signed int16 on the wire, InOutWRte_SF = -1


async def test_storage_window_writes_both_limits_with_both_bits() -> None:
    async with _battery() as (controls, io, device_map):
        await controls.set_storage_window_pct(70.0, 40.0, revert_s=90)
        p = await _124(io, device_map)
    assert (p["OutWRte"], p["InWRte"], p["StorCtl_Mod"], p["InOutWRte_RvrtTms"]) == (70.0, 40.0, 3, 90)


@pytest.mark.parametrize(("out", "into", "match"), [
    (-30.0, 20.0, "window .* is empty"),  # at least 1500 W charging and at least 1000 W discharging at once
    (120.0, 0.0, "OutWRte 120"),
    (0.0, -100.5, "InWRte -100.5"),
])
async def test_a_storage_window_the_device_cannot_hold_is_refused_unwritten(out: float, into: float,
                                                                            match: str) -> None:
    async with _battery() as (controls, io, device_map):
        before = await _124(io, device_map)
        with pytest.raises(ValueError, match=match):
            await controls.set_storage_window_pct(out, into, revert_s=60)
        assert await _124(io, device_map) == before
