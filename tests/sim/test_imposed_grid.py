"""A co-simulation imposes the grid on a simulated device (``SimulatedDevice.impose_grid``): the voltage a client
reads over Modbus is the imposed one (a meter's power too); ``None`` hands it back to the plant's own models."""

from __future__ import annotations

import math

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.sim import PhysicsSettings, SimulatedDevice, build_image, serve_tcp
from gateway.sim._profiles import clear_sky, household_load
from gateway.sunspec import decode

from ._helpers import FakeClock

#: The voltage's measurement noise is 0.001 pu (1 sigma): what a read may differ from the imposed value by.
V_TOL = 5 * 0.001 * 240.0


async def _read(device: SimulatedDevice, port: int, model_id: int) -> dict[str, float]:
    """The numeric points of model ``model_id`` of ``device`` as a Modbus client reads them (the read steps the
    plant first)."""
    span = next(s for s in device.spans if s.id == model_id)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0)
    assert await client.connect()
    try:
        reply = await client.read_holding_registers(span.addr, count=span.length + 2, device_id=device.unit)
        assert not reply.isError(), reply
        points = decode(model_id, reply.registers).points
        return {k: float(v) for k, v in points.items() if isinstance(v, int | float)}
    finally:
        client.close()


def _device(kind: str, clock: FakeClock, seed: int = 3) -> SimulatedDevice:
    """Noon, clear sky, 240 V nominal; the plant's own voltage model is 1 + 0.03 * p (~1.03 pu at its rating)."""
    dev = SimulatedDevice(build_image(kind, "T-GRID"), clock=clock, physics=PhysicsSettings(
        start_hour=12.0, cloudiness=0.0, noise=0.0, v_offset_pu=0.0, v_nom=240.0, seed=seed))
    dev.update()
    return dev


async def test_an_imposed_voltage_is_what_a_client_reads_and_none_hands_it_back() -> None:
    clock = FakeClock()
    dev = _device("inverter", clock)
    async with serve_tcp([dev], tick=0) as port:
        own = await _read(dev, port, 103)
        assert own["PhVphA"] == pytest.approx(240.0 * 1.03, abs=0.02 * 240.0)  # its own model: ~1.03 pu exporting
        for v_pu in (0.95, 1.07):  # both far from what the plant would say itself
            dev.impose_grid(v_pu)  # seen at the next read: no clock movement needed
            points = await _read(dev, port, 103)
            for phase in ("PhVphA", "PhVphB", "PhVphC"):
                assert points[phase] == pytest.approx(240.0 * v_pu, abs=V_TOL)
        dev.impose_grid(None)
        clock.advance(1.0)
        back = await _read(dev, port, 103)
        assert back["PhVphA"] == pytest.approx(own["PhVphA"], abs=0.01 * 240.0)


def test_none_is_the_plants_own_behaviour_step_for_step() -> None:
    """A device told ``impose_grid(None)`` writes exactly the registers of one never told anything."""
    clock_a, clock_b = FakeClock(), FakeClock()
    untouched, released = _device("inverter", clock_a), _device("inverter", clock_b)
    released.impose_grid(None)
    for _ in range(5):
        for clock, dev in ((clock_a, untouched), (clock_b, released)):
            clock.advance(1.0)
            dev.update()
        assert released.image.regs == untouched.image.regs


def test_an_imposed_voltage_drives_volt_var() -> None:
    """The plant's 1547 functions see the imposed voltage: high volts, the inverter absorbs reactive power."""
    clock = FakeClock()
    dev = _device("inverter", clock)
    dev.impose_grid(1.08)
    for _ in range(30):  # volt-var's open-loop response time is 5 s
        clock.advance(1.0)
        dev.update()
    var = dev.value(103, "VAr")
    assert var is not None
    assert var < -1000.0  # category B at 1.08 pu: -44 % of the reactive rating
    assert dev.plant is not None
    assert dev.plant.output == pytest.approx((dev.value(103, "W"), var), abs=1.0)  # what the points show


async def test_a_meter_reads_the_imposed_flow_and_voltage() -> None:
    clock = FakeClock()
    meter = _device("meter", clock)
    async with serve_tcp([meter], tick=0) as port:
        meter.impose_grid(1.021, (18_500.0, 4_200.0))
        points = await _read(meter, port, 203)
        assert points["W"] == pytest.approx(18_500.0, rel=0.005)
        assert points["VAR"] == pytest.approx(4_200.0, rel=0.005)
        assert points["PhV"] == pytest.approx(240.0 * 1.021, abs=V_TOL)
        meter.impose_grid(1.0, (-6_000.0, 0.0))  # the feeder exporting
        clock.advance(1.0)
        points = await _read(meter, port, 203)
        assert points["W"] == pytest.approx(-6_000.0, rel=0.005)
        meter.impose_grid(None)
        clock.advance(1.0)
        points = await _read(meter, port, 203)
        # the household profile again (noon, clear sky: its PV, 0.8 of its peak load, beats its load; 5 % load noise)
        peak = PhysicsSettings().peak_load_w
        household = household_load(12.0) * peak - 0.8 * peak * clear_sky(12.0, 6.0, 18.0)
        assert points["W"] == pytest.approx(household, abs=0.2 * household_load(12.0) * peak)


async def test_a_three_phase_meter_reads_each_imposed_phase_and_otherwise_splits_evenly() -> None:
    clock = FakeClock()
    meter = _device("meter", clock)
    async with serve_tcp([meter], tick=0) as port:
        own = await _read(meter, port, 203)  # the household profile: a third per phase, one voltage
        for ph in "ABC":
            assert own[f"Wph{ph}"] == pytest.approx(own["W"] / 3, abs=1.0)
            assert own[f"VARph{ph}"] == pytest.approx(own["VAR"] / 3, abs=1.0)
            assert own[f"PhVph{ph}"] == pytest.approx(own["PhV"], abs=0.1)
        flow = ((6_000.0, -1_500.0, 9_000.0), (1_000.0, 200.0, 2_500.0))
        meter.impose_grid(1.0, flow_ph=flow, v_ph_pu=(1.02, 1.04, 0.98))
        clock.advance(1.0)
        points = await _read(meter, port, 203)
        for k, ph in enumerate("ABC"):
            assert points[f"Wph{ph}"] == pytest.approx(flow[0][k], rel=0.005)
            assert points[f"VARph{ph}"] == pytest.approx(flow[1][k], rel=0.005)
            assert points[f"PhVph{ph}"] == pytest.approx(240.0 * (1.02, 1.04, 0.98)[k], abs=V_TOL)
        assert points["W"] == pytest.approx(sum(flow[0]), rel=0.005)
        assert points["PhV"] == pytest.approx(240.0 * 1.0133, abs=V_TOL)
        meter.impose_grid(None)  # handed back: an even split again
        clock.advance(1.0)
        points = await _read(meter, port, 203)
        assert points["WphA"] == pytest.approx(points["W"] / 3, abs=1.0)
        assert points["PhVphB"] == pytest.approx(points["PhV"], abs=0.1)


def test_what_cannot_be_imposed_is_refused() -> None:
    clock = FakeClock()
    inverter = _device("inverter", clock)
    with pytest.raises(ValueError, match="meter model"):
        inverter.impose_grid(1.0, (100.0, 0.0))
    for bad in (math.nan, math.inf, 0.0, -1.0):
        with pytest.raises(ValueError, match="v_pu"):
            inverter.impose_grid(bad)
    with pytest.raises(ValueError, match="flow must be finite"):
        _device("meter", clock).impose_grid(1.0, (math.nan, 0.0))
    with pytest.raises(ValueError, match="three-phase meter"):
        inverter.impose_grid(1.0, v_ph_pu=(1.0, 1.0, 1.0))
    phases = ((1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="not both"):
        _device("meter", clock).impose_grid(1.0, (6.0, 0.0), flow_ph=phases)
    with pytest.raises(ValueError, match="flow_ph must be finite"):
        _device("meter", clock).impose_grid(1.0, flow_ph=((1.0, math.inf, 3.0), (0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="v_ph_pu"):
        _device("meter", clock).impose_grid(1.0, v_ph_pu=(1.0, 0.0, 1.0))
    frozen = SimulatedDevice(build_image("inverter", "T-FROZEN"), animate=False)
    with pytest.raises(ValueError, match="not animated"):
        frozen.impose_grid(1.0)
