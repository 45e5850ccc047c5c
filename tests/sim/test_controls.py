"""Writes change behaviour: active power limits (123, 704), their reversion timers, 705 curve adoption,
volt-var, a battery's state of charge and its own intent inside the 124 limit window, the day's profile."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.sim import PhysicsSettings, SimulatedDevice, build_image, serve_tcp
from gateway.sunspec import decode

from ._helpers import FakeClock, point_regs, write_point

CLEAR_NOON = PhysicsSettings(start_hour=12.0, cloudiness=0.0, noise=0.0, v_offset_pu=0.0, seed=1)


def _device(kind: str, clock: FakeClock, physics: PhysicsSettings = CLEAR_NOON) -> SimulatedDevice:
    dev = SimulatedDevice(build_image(kind, "T-1"), clock=clock, physics=physics)
    dev.update()
    return dev


async def test_wmaxlimpct_write_limits_w_after_update() -> None:
    clock = FakeClock()
    dev = _device("inverter", clock)
    w_free = dev.value(103, "W")
    assert w_free is not None
    assert w_free > 4500
    async with serve_tcp([dev], tick=0) as port:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0)
        await client.connect()
        try:
            await write_point(client, dev, 123, "WMaxLimPct", 40.0)
            await write_point(client, dev, 123, "WMaxLim_Ena", 1)
            clock.advance(1.0)
            dev.update()
            span = next(s for s in dev.spans if s.id == 103)
            reply = await client.read_holding_registers(span.addr, count=span.length + 2, device_id=1)
            points = decode(103, reply.registers).points
            assert points["W"] == pytest.approx(2000, abs=2)
            assert points["St"] == 5  # THROTTLED
            limit = await client.read_holding_registers(dev.address_of(123, "WMaxLimPct"), count=1, device_id=1)
            assert limit.registers == [400]  # WMaxLimPct_SF = -1
        finally:
            client.close()


def test_write_takes_effect_at_the_next_read_without_a_tick() -> None:
    clock = FakeClock()
    dev = _device("inverter", clock)
    addr, regs = point_regs(dev, 123, "WMaxLimPct", 10.0)
    assert dev.write(addr, regs) is None
    addr, regs = point_regs(dev, 123, "WMaxLim_Ena", 1)
    assert dev.write(addr, regs) is None
    w_addr = dev.address_of(103, "W")
    assert dev.read(w_addr, 1) == [500]  # the read steps the plant first (no clock movement needed)


def test_123_limit_reverts_after_rvrttms() -> None:
    clock = FakeClock()
    dev = _device("inverter", clock)
    for name, value in (("WMaxLimPct_RvrtTms", 30), ("WMaxLimPct", 50.0), ("WMaxLim_Ena", 1)):
        assert dev.write(*point_regs(dev, 123, name, value)) is None
    clock.advance(20.0)
    dev.update()
    assert dev.value(103, "W") == pytest.approx(2500, abs=2)
    assert dev.value(123, "WMaxLim_Ena") == 1
    # a fresh write of the limit restarts the timer
    assert dev.write(*point_regs(dev, 123, "WMaxLimPct", 60.0)) is None
    clock.advance(20.0)
    dev.update()
    assert dev.value(103, "W") == pytest.approx(3000, abs=2)
    clock.advance(11.0)
    dev.update()
    assert dev.value(123, "WMaxLim_Ena") == 0
    assert (dev.value(103, "W") or 0) > 4500


def test_no_reversion_when_the_timer_is_zero() -> None:
    clock = FakeClock()
    dev = _device("inverter", clock)
    for name, value in (("WMaxLimPct", 50.0), ("WMaxLim_Ena", 1)):
        assert dev.write(*point_regs(dev, 123, name, value)) is None
    clock.advance(3600.0)
    dev.update()
    assert dev.value(123, "WMaxLim_Ena") == 1


def test_704_limit_reverts_to_its_reversion_values_and_counts_down() -> None:
    clock = FakeClock()
    dev = _device("inverter-7xx", clock)
    for name, value in (("WMaxLimPctRvrtTms", 10), ("WMaxLimPctRvrt", 80.0), ("WMaxLimPctEnaRvrt", 1),
                        ("WMaxLimPct", 30.0), ("WMaxLimPctEna", 1)):
        assert dev.write(*point_regs(dev, 704, name, value)) is None
    clock.advance(4.0)
    dev.update()
    assert dev.value(701, "W") == pytest.approx(1500, abs=2)
    assert dev.value(701, "InvSt") == 4  # THROTTLED
    assert dev.value(704, "WMaxLimPctRvrtRem") == 6
    clock.advance(7.0)
    dev.update()
    assert dev.value(704, "WMaxLimPct") == 80.0
    assert dev.value(704, "WMaxLimPctEna") == 1
    assert dev.value(704, "WMaxLimPctRvrtRem") == 0
    assert dev.value(701, "W") == pytest.approx(4000, abs=2)


def test_704_wset() -> None:
    clock = FakeClock()
    dev = _device("inverter-7xx", clock)
    for name, value in (("WSetMod", 1), ("WSet", 1234.0), ("WSetEna", 1)):
        assert dev.write(*point_regs(dev, 704, name, value)) is None
    dev.update(clock.advance(1.0))
    assert dev.value(701, "W") == pytest.approx(1234, abs=2)


def test_705_curve_adoption_handshake() -> None:
    clock = FakeClock()
    dev = _device("inverter-7xx", clock)
    # put a different curve into slot 3, then ask the device to adopt it
    for j, (v, q) in enumerate(((90.0, 50.0), (97.0, 0.0), (103.0, 0.0), (110.0, -50.0))):
        for key, value in ((f"Crv[2].Pt[{j}].V", v), (f"Crv[2].Pt[{j}].Var", q)):
            addr = dev.address_of(705, key)
            sf = int(dev.value(705, "V_SF" if key.endswith(".V") else "DeptRef_SF") or 0)
            raw = round(value / 10**sf)
            assert dev.write(addr, [raw & 0xFFFF]) is None
    assert dev.write(dev.address_of(705, "AdptCrvReq"), [3]) is None
    assert dev.value(705, "AdptCrvRslt") == 0  # IN_PROGRESS until the device acts
    dev.update(clock.advance(0.1))
    assert dev.value(705, "AdptCrvRslt") == 1  # COMPLETED
    assert [dev.value(705, f"Crv[0].Pt[{j}].V") for j in range(4)] == [90.0, 97.0, 103.0, 110.0]
    assert dev.value(705, "Crv[0].ReadOnly") == 1  # the active curve stays read-only
    # an index past NCrv fails
    assert dev.write(dev.address_of(705, "AdptCrvReq"), [9]) is None
    dev.update(clock.advance(0.1))
    assert dev.value(705, "AdptCrvRslt") == 2  # FAILED


def test_volt_var_absorbs_at_high_voltage() -> None:
    clock = FakeClock()
    high = PhysicsSettings(start_hour=12.0, cloudiness=0.0, noise=0.0, v_offset_pu=0.05, seed=1)
    dev = _device("inverter-7xx", clock, high)
    for _ in range(60):  # 60 s: well past the 5 s open-loop response time
        dev.update(clock.advance(1.0))
    v = dev.value(701, "LNV")
    var = dev.value(701, "Var")
    assert v is not None
    assert var is not None
    assert v > 1.02 * 240  # above V3 of the category B curve
    assert var < -100  # absorbing
    # disable volt-var: the vars return to ~0
    assert dev.write(dev.address_of(705, "Ena"), [0]) is None
    for _ in range(60):
        dev.update(clock.advance(1.0))
    assert abs(dev.value(701, "Var") or 0) < 5


def _write_124(dev: SimulatedDevice, values: dict[str, float]) -> None:
    for name, value in values.items():  # rates (and timer) first, the mode bits last, as the gateway writes them
        assert dev.write(*point_regs(dev, 124, name, value)) is None


def test_battery_soc_follows_charge_and_discharge() -> None:
    clock = FakeClock()
    dev = _device("battery", clock)
    soc0 = dev.value(802, "SoC")
    assert soc0 == pytest.approx(50.0, abs=0.1)
    # a charge setpoint: the single-point window [-50 %, -50 %] of WChaMax, both bits
    _write_124(dev, {"InWRte": 50.0, "OutWRte": -50.0, "StorCtl_Mod": 3})
    for _ in range(36):
        dev.update(clock.advance(100.0))  # one hour
    soc1 = dev.value(802, "SoC")
    assert soc1 is not None
    assert soc1 == pytest.approx(50.0 + 2500 * 0.95 / 10000 * 100, abs=0.5)
    assert dev.value(103, "W") == pytest.approx(-2500, abs=2)
    assert dev.value(124, "ChaSt") == 4  # CHARGING
    # only the CHARGE bit, InWRte -100 %: at least a full-rate discharge, the discharge side left at the full rate
    _write_124(dev, {"InWRte": -100.0, "OutWRte": 0.0, "StorCtl_Mod": 1})
    dev.update(clock.advance(1.0))
    assert dev.value(103, "W") == pytest.approx(5000, abs=2)
    for _ in range(100):
        dev.update(clock.advance(360.0))  # ten hours: down to the reserve
    assert dev.value(802, "SoC") == pytest.approx(10.0, abs=0.2)  # MinRsvPct
    assert dev.value(103, "W") == pytest.approx(0, abs=5)


def test_battery_setpoint_reverts() -> None:
    clock = FakeClock()
    dev = _device("battery", clock, dataclasses.replace(CLEAR_NOON, battery_intent_w=-600.0))
    _write_124(dev, {"InOutWRte_RvrtTms": 60, "OutWRte": 40.0, "InWRte": -40.0, "StorCtl_Mod": 3})
    dev.update(clock.advance(30.0))
    assert dev.value(103, "W") == pytest.approx(2000, abs=2)  # the setpoint, not what the battery wants
    dev.update(clock.advance(31.0))
    assert dev.value(124, "StorCtl_Mod") == 0
    dev.update(clock.advance(1.0))
    assert dev.value(103, "W") == pytest.approx(-600, abs=1)  # handed back: its own intent again


#: (own intent W, 124 writes, W the battery runs at); WChaMax 5000 W, so 1 % = 50 W
WINDOWS = [
    # no control: the battery does what it wants
    (1800.0, {}, 1800.0),
    # a cap (export 60 %, import 40 %: the window [-2000, +3000]) binds an intent beyond either side ...
    (4500.0, {"OutWRte": 60.0, "InWRte": 40.0, "StorCtl_Mod": 3}, 3000.0),
    (-4500.0, {"OutWRte": 60.0, "InWRte": 40.0, "StorCtl_Mod": 3}, -2000.0),
    # ... leaves one inside alone, and never moves an idle battery (the old bug: it ran at 60 - 40 = 20 %)
    (1200.0, {"OutWRte": 60.0, "InWRte": 40.0, "StorCtl_Mod": 3}, 1200.0),
    (0.0, {"OutWRte": 60.0, "InWRte": 40.0, "StorCtl_Mod": 3}, 0.0),
    # a setpoint is the single-point window: discharge 30 % / charge 20 % / hold, whatever the intent
    (-1000.0, {"OutWRte": 30.0, "InWRte": -30.0, "StorCtl_Mod": 3}, 1500.0),
    (2500.0, {"OutWRte": -20.0, "InWRte": 20.0, "StorCtl_Mod": 3}, -1000.0),
    (2500.0, {"OutWRte": 0.0, "InWRte": 0.0, "StorCtl_Mod": 3}, 0.0),
    # a bit that is off leaves its side at the full rate
    (-4500.0, {"OutWRte": 10.0, "InWRte": 40.0, "StorCtl_Mod": 2}, -4500.0),
    (4500.0, {"OutWRte": 10.0, "InWRte": 40.0, "StorCtl_Mod": 1}, 4500.0),
    (4500.0, {"OutWRte": 10.0, "InWRte": 40.0, "StorCtl_Mod": 2}, 500.0),
    # a negative rate forces a minimum: OutWRte -20 % = charge at least 1000 W, InWRte -30 % = discharge >= 1500 W
    (0.0, {"OutWRte": -20.0, "StorCtl_Mod": 2}, -1000.0),
    (-2500.0, {"OutWRte": -20.0, "StorCtl_Mod": 2}, -2500.0),
    (0.0, {"InWRte": -30.0, "StorCtl_Mod": 1}, 1500.0),
    # mode 0 hands the battery back to its own logic, whatever the rates say
    (-700.0, {"OutWRte": 30.0, "InWRte": -30.0, "StorCtl_Mod": 0}, -700.0),
]


@pytest.mark.parametrize(("intent", "writes", "expected"), WINDOWS)
def test_battery_runs_at_its_intent_inside_the_124_window(intent: float, writes: dict[str, float],
                                                          expected: float) -> None:
    clock = FakeClock()
    dev = _device("battery", clock, dataclasses.replace(CLEAR_NOON, battery_intent_w=intent))
    _write_124(dev, writes)
    dev.update(clock.advance(1.0))
    assert dev.value(802, "W") == pytest.approx(expected, abs=1)
    assert dev.value(103, "W") == pytest.approx(expected, abs=1)


def test_a_day_of_pv() -> None:
    clock = FakeClock()
    day = PhysicsSettings(start_hour=0.0, time_scale=600.0, seed=3)  # ten simulated minutes per second
    dev = _device("inverter", clock, day)
    watts: list[float] = []
    energy: list[float] = []
    for _ in range(144):  # 24 h
        dev.update(clock.advance(1.0))
        watts.append(dev.value(103, "W") or 0.0)
        energy.append(dev.value(103, "WH") or 0.0)
    assert max(watts[:30]) == 0  # before 05:00
    assert max(watts[-30:]) == 0  # after 19:00
    assert 3000 < max(watts[66:78]) <= 5000  # around noon
    assert all(b >= a for a, b in itertools.pairwise(energy))
    assert 15000 < energy[-1] - energy[0] < 45000  # a 5 kW system's sunny day, in Wh
    hz = dev.value(103, "Hz")
    assert hz is not None
    assert 49.9 < hz < 50.1
    v = dev.value(103, "PhVphA")
    assert v is not None
    assert 220 < v < 245


def test_meter_values() -> None:
    clock = FakeClock()
    dev = _device("meter", clock)
    for _ in range(5):
        dev.update(clock.advance(1.0))
    w = dev.value(203, "W")
    a = dev.value(203, "A")
    assert w is not None
    assert a is not None
    assert w < 0  # a sunny noon: the house exports
    assert a > 0
    assert (dev.value(203, "TotWhExp") or 0) > 0
