"""Reversion values: what a 704 device falls back to when its timer runs out, programmed with the limit (all of a
function's reversion points or none), and nothing of the kind on 123 or 124, which have no such point: their timers
hand the function back to the device."""

from __future__ import annotations

import time

import pytest

from gateway.devices import TcpEndpoint, UnitIO
from gateway.sim import PhysicsSettings, make_devices, serve_tcp
from gateway.sunspec import SunSpecControls, discover, model_def
from tests.shared_data import DUMPS, load_dump
from tests.sim._helpers import FakeClock
from tests.sunspec.dump_io import DumpIO

from .test_controls import _points

UNIMPLEMENTED_ENUM16 = 0xFFFF


def _io(name: str) -> DumpIO:
    path = DUMPS / f"{name}.json"
    if not path.exists():
        pytest.skip("../shared/sunspec-dumps is not present: a fresh clone has no shared test data")
    return DumpIO(load_dump(path))


async def test_704_limit_programs_its_reversion_value_enabled() -> None:
    io = _io("EmulatedDER")
    controls = SunSpecControls(io, await discover(io))
    result = await controls.limit_active_power_pct(70.0, revert_s=60, revert_pct=30.0)
    assert (result.model, result.reversion_s, result.reversion_value) == (704, 60, 30.0)
    p = await _points(io, 704)
    assert (p["WMaxLimPct"], p["WMaxLimPctEna"], p["WMaxLimPctRvrtTms"]) == (pytest.approx(70.0), 1, 60)
    assert (p["WMaxLimPctRvrt"], p["WMaxLimPctEnaRvrt"]) == (pytest.approx(30.0), 1)
    assert {"WMaxLimPctRvrt", "WMaxLimPctEnaRvrt", "WMaxLimPctRvrtTms"} <= set(result.points)


async def test_without_a_reversion_value_asked_none_is_written() -> None:
    io = _io("EmulatedDER")
    controls = SunSpecControls(io, await discover(io))
    before = await _points(io, 704)
    result = await controls.limit_active_power_pct(70.0, revert_s=60)
    assert result.reversion_value is None
    after = await _points(io, 704)
    assert (after["WMaxLimPctRvrt"], after["WMaxLimPctEnaRvrt"]) == (before["WMaxLimPctRvrt"],
                                                                     before["WMaxLimPctEnaRvrt"])


async def test_704_setpoint_reverts_to_a_value_with_the_setpoint_off() -> None:
    io = _io("EmulatedDER")
    controls = SunSpecControls(io, await discover(io))
    result = await controls.set_active_power_w(-2500, revert_s=30, revert_w=1500)
    assert result.reversion_value == 1500
    p = await _points(io, 704)
    assert (p["WSet"], p["WSetEna"], p["WSetRvrtTms"]) == (-2500, 1, 30)
    assert (p["WSetRvrt"], p["WSetEnaRvrt"]) == (1500, 0)
    await controls.set_active_power_w(800, revert_s=30, revert_w=1500, revert_enabled=True)
    assert (await _points(io, 704))["WSetEnaRvrt"] == 1


async def test_a_device_without_every_reversion_point_gets_none_of_them() -> None:
    io = _io("EmulatedDER")
    device_map = await discover(io)
    addr = device_map.find(704).addr + model_def(704).root.point("WMaxLimPctEnaRvrt").offset  # type: ignore[union-attr]
    io.regs[addr - io.base] = UNIMPLEMENTED_ENUM16  # the device does not implement the enable
    before = await _points(io, 704)
    controls = SunSpecControls(io, device_map)
    result = await controls.limit_active_power_pct(55.0, revert_s=60, revert_pct=30.0)
    assert result.reversion_value is None
    after = await _points(io, 704)
    assert after["WMaxLimPct"] == pytest.approx(55.0)  # the limit itself is written all the same
    assert after["WMaxLimPctRvrt"] == before["WMaxLimPctRvrt"]  # a value that could not be enabled is not written
    assert after["WMaxLimPctEnaRvrt"] is None


async def test_123_has_no_reversion_value() -> None:
    io = _io("DeviceFimerPVSDated20240722")
    controls = SunSpecControls(io, await discover(io))
    result = await controls.limit_active_power_pct(37.0, revert_s=60, revert_pct=30.0)
    assert (result.model, result.reversion_value) == (123, None)
    assert (await _points(io, 123))["WMaxLimPct"] == pytest.approx(37.0)


async def test_a_reversion_value_outside_0_to_100_is_refused() -> None:
    io = _io("EmulatedDER")
    controls = SunSpecControls(io, await discover(io))
    with pytest.raises(ValueError, match="reversion limit 120"):
        await controls.limit_active_power_pct(50.0, revert_s=60, revert_pct=120.0)


async def test_124_has_no_reversion_value_its_timer_hands_the_battery_back() -> None:
    """A 124 setpoint programs ``InOutWRte_RvrtTms`` only; when it runs out ``StorCtl_Mod`` goes to 0 and the battery
    (simulated, over Modbus TCP) returns to its own logic, here a wish to charge 700 W."""
    ((_, sim),) = make_devices(["battery"], physics=PhysicsSettings(cloudiness=0.0, noise=0.0, seed=1,
                                                                    battery_intent_w=-700.0))
    clock = FakeClock(time.monotonic())
    sim.clock = clock
    async with serve_tcp([sim], tick=0) as port, TcpEndpoint("127.0.0.1", port) as tcp:
        io = UnitIO(tcp, 1)
        controls = SunSpecControls(io, await discover(io))
        result = await controls.set_storage_rate_pct(50.0, revert_s=20)
        assert (result.model, result.reversion_s, result.reversion_value) == (124, 20, None)
        sim.update(clock.advance(1))
        assert sim.value(802, "W") == pytest.approx(2500, abs=1)  # the setpoint: 50 % of WChaMax 5000 W
        sim.update(clock.advance(20))
        assert sim.value(124, "StorCtl_Mod") == 0
        sim.update(clock.advance(1))
        assert sim.value(802, "W") == pytest.approx(-700, abs=1)
