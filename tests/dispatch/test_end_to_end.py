"""Dispatch end to end with real simulated devices: Command -> Setpoint -> SunSpec write over Modbus TCP through the
device layer -> read-back, and the audit lines received / decision / write / read-back, in that order.

The simulator (gateway.sim, a pymodbus server) runs the plant, so the tests also see the device's measured power
settle at the clamp, and read the written points back over a second, independent connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog, verify_log
from gateway.devices import SunSpecDevice, TcpEndpoint, UnitIO
from gateway.dispatch import Dispatcher, apply_decision, apply_setpoint
from gateway.errors import UnsupportedControl
from gateway.sim import Endpoint, PhysicsSettings, make_devices, serve_tcp, simulated_fleet
from gateway.sunspec import SunSpecControls, SunSpecReader, discover
from gateway.types import Setpoint
from tests.sim._helpers import FakeClock

from ._helpers import AGG, GO, command, envelope, events, policy

CLEAR_NOON = PhysicsSettings(start_hour=12.0, cloudiness=0.0, noise=0.0, v_offset_pu=0.0, seed=1)
RATED_W = 5000  # the simulator's rating (121 WMax, 124 WChaMax)
#: a battery whose own logic wants to discharge 1000 W: a setpoint must override it, a cap must leave it alone
BATTERY_INTENT = dataclasses.replace(CLEAR_NOON, battery_intent_w=1000.0)


@dataclass
class Rig:
    endpoint: Endpoint
    device: SunSpecDevice
    controls: SunSpecControls
    audit: AuditLog
    log_path: Path
    dispatcher: Dispatcher


@contextlib.asynccontextmanager
async def _rig(kind: str, audit: AuditLog, log_path: Path, customer: tuple[float, float],
               env: tuple[float, float], physics: PhysicsSettings = CLEAR_NOON) -> AsyncIterator[Rig]:
    async with simulated_fleet(1, kind, physics=physics) as [endpoint], \
            TcpEndpoint(endpoint.host, endpoint.port) as tcp:
        device = SunSpecDevice("inv-1", UnitIO(tcp, endpoint.unit), role="battery" if kind == "battery" else "inverter")
        controls = await device.controls()
        dispatcher = Dispatcher(policy(customer={"inv-1": customer}), audit)
        now = time.time()
        dispatcher.set_envelope(envelope({"inv-1": env}, valid_from=now - 60, valid_until=now + 900), now)
        yield Rig(endpoint, device, controls, audit, log_path, dispatcher)


@pytest.fixture
async def inverter(audit: AuditLog, log_path: Path) -> AsyncIterator[Rig]:
    """A PV inverter with 123 (curtailment); customer limit 4000 W export, envelope 3500 W."""
    async with _rig("inverter", audit, log_path, (4000, 0), (3500, 0)) as rig:
        yield rig


async def _points(endpoint: Endpoint, model_id: int) -> dict[str, Any]:
    """The model's points read over a separate connection: what the device holds, not what we think we wrote."""
    async with TcpEndpoint(endpoint.host, endpoint.port) as tcp:
        io = UnitIO(tcp, endpoint.unit)
        (block,) = await SunSpecReader(io, await discover(io), {model_id}).read()
    return block.points


async def _measured_w(rig: Rig, expect: float, timeout_s: float = 5.0) -> float:
    """The device's measured active power once it settles at ``expect`` (or the last reading at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        w = (await rig.device.read()).measurement.w
        assert w is not None
        if abs(w - expect) <= 0.01 * RATED_W or time.monotonic() > deadline:
            return w
        await asyncio.sleep(0.1)


def _trail(path: Path, command_id: str) -> list[str]:
    return [r["event"] for r in events(path) if r.get("command_id") == command_id]


@pytest.mark.parametrize(
    ("kind", "customer", "env", "target", "w", "binding", "model", "held"),
    [
        # PV inverter, 123 WMaxLimPct (% of 121 WMax): asks 4800, the envelope allows 3500
        ("inverter", (4000, 0), (3500, 0), 4800, 3500, "envelope-export",
         123, {"WMaxLimPct": 70.0, "WMaxLim_Ena": 1}),
        # 7xx inverter, 704 WSet: the customer limit (3000) binds below the envelope (3500)
        ("inverter-7xx", (3000, 0), (3500, 0), 4800, 3000, "customer-export",
         704, {"WSet": 3000, "WSetEna": 1, "WSetMod": 1}),
        # battery, 124 (% of WChaMax), a setpoint is the single-point window [-InWRte, +OutWRte]: asks to charge
        # 2800, the envelope allows 2500 import; the battery itself wants to discharge 1000 (BATTERY_INTENT)
        ("battery", (3000, 3000), (3500, 2500), -2800, -2500, "envelope-import",
         124, {"InWRte": 50.0, "OutWRte": -50.0, "StorCtl_Mod": 3}),
        # ... and asks to discharge 4000, the customer allows 3000 export
        ("battery", (3000, 3000), (3500, 2500), 4000, 3000, "customer-export",
         124, {"InWRte": -60.0, "OutWRte": 60.0, "StorCtl_Mod": 3}),
    ],
)
async def test_command_to_device_and_back(audit: AuditLog, log_path: Path, kind: str, customer: tuple[float, float],
                                          env: tuple[float, float], target: float, w: float, binding: str,
                                          model: int, held: dict[str, Any]) -> None:
    physics = BATTERY_INTENT if kind == "battery" else CLEAR_NOON
    async with _rig(kind, audit, log_path, customer, env, physics) as rig:
        cmd = command(target, AGG, valid_from=time.time() - 1, valid_until=time.time() + 60)
        decision = rig.dispatcher.submit(cmd, time.time())
        assert decision.setpoint is not None
        assert (decision.outcome, decision.setpoint.w, decision.binding) == ("clamped", w, binding)

        applied = await apply_decision(decision, rig.controls, audit, reversion_s=120)

        assert applied is not None
        assert (applied.model, applied.written_w, applied.held_w) == (model, w, w)
        assert applied.reversion_s is not None
        assert 55 <= applied.reversion_s <= 60  # the device reverts when the command runs out, not later
        points = await _points(rig.endpoint, model)
        assert {k: points[k] for k in held} == pytest.approx(held)
        assert await _measured_w(rig, w) == pytest.approx(w, abs=0.01 * RATED_W)  # the plant follows

        assert _trail(log_path, cmd.command_id) == ["command-received", "decision", "device-write", "read-back"]
        write, readback = events(log_path, "device-write", "read-back")
        assert (write["model"], write["w"], write["written_w"]) == (model, w, w)
        assert (readback["ok"], readback["held_w"]) == (True, w)
        assert verify_log(log_path).ok


async def test_above_customer_limit_actuates_only_up_to_it(audit: AuditLog, log_path: Path) -> None:
    async with _rig("inverter", audit, log_path, (2000, 0), (3500, 0)) as rig:
        cmd = command(4500, GO, valid_until=time.time() + 60)  # not even the grid operator exceeds it
        decision = rig.dispatcher.submit(cmd, time.time())
        await apply_decision(decision, rig.controls, audit, reversion_s=120)
        points = await _points(rig.endpoint, 123)
        assert (points["WMaxLimPct"], points["WMaxLim_Ena"]) == (pytest.approx(40.0), 1)  # 2000 of 5000 W
        assert await _measured_w(rig, 2000) == pytest.approx(2000, abs=50)
        (line,) = [r for r in events(log_path, "decision") if r["command_id"] == cmd.command_id]
        assert (line["binding"], line["setpoint"]["w"], line["setpoint"]["requested_w"]) == ("customer-export", 2000,
                                                                                            4500)


async def test_expired_command_writes_nothing(inverter: Rig) -> None:
    before = await _points(inverter.endpoint, 123)
    cmd = command(1000, GO, valid_from=time.time() - 120, valid_until=time.time() - 1)
    decision = inverter.dispatcher.submit(cmd, time.time())
    assert await apply_decision(decision, inverter.controls, inverter.audit, reversion_s=120) is None
    assert await _points(inverter.endpoint, 123) == before
    assert before["WMaxLim_Ena"] == 0
    assert await _measured_w(inverter, RATED_W) > 0.95 * RATED_W  # still at full output
    assert _trail(inverter.log_path, cmd.command_id) == ["command-received", "decision"]
    (line,) = [r for r in events(inverter.log_path, "decision") if r["command_id"] == cmd.command_id]
    assert (line["outcome"], line["code"]) == ("rejected", "expired")


async def test_setpoint_expired_before_the_write_writes_nothing(inverter: Rig) -> None:
    before = await _points(inverter.endpoint, 123)
    setpoint = Setpoint("inv-1", 1000, 1000, "command", "late-1", GO, valid_until=time.time() + 5)
    assert await apply_setpoint(setpoint, inverter.controls, inverter.audit, reversion_s=120,
                                clock=lambda: time.time() + 10) is None
    assert await _points(inverter.endpoint, 123) == before
    assert _trail(inverter.log_path, "late-1") == ["write-skipped"]


async def test_overruled_command_writes_nothing_new(inverter: Rig) -> None:
    go = command(2000, GO, valid_until=time.time() + 60)
    await apply_decision(inverter.dispatcher.submit(go, time.time()), inverter.controls, inverter.audit,
                         reversion_s=120)
    agg = command(3000, AGG, valid_until=time.time() + 60)
    decision = inverter.dispatcher.submit(agg, time.time())
    assert (decision.outcome, decision.changed) == ("overruled", False)
    assert await apply_decision(decision, inverter.controls, inverter.audit, reversion_s=120) is None
    assert (await _points(inverter.endpoint, 123))["WMaxLimPct"] == pytest.approx(40.0)
    assert _trail(inverter.log_path, agg.command_id) == ["command-received", "decision"]


async def test_release_when_the_last_command_expires(inverter: Rig) -> None:
    start = time.time()
    cmd = command(2500, AGG, valid_from=start - 1, valid_until=start + 30)
    await apply_decision(inverter.dispatcher.submit(cmd, start), inverter.controls, inverter.audit, reversion_s=120)
    assert (await _points(inverter.endpoint, 123))["WMaxLim_Ena"] == 1
    (released,) = inverter.dispatcher.tick(start + 30)
    assert released.outcome == "released"
    applied = await apply_decision(released, inverter.controls, inverter.audit, reversion_s=120)
    assert applied is not None
    assert applied.written_w is None
    assert (await _points(inverter.endpoint, 123))["WMaxLim_Ena"] == 0
    assert await _measured_w(inverter, RATED_W) > 0.95 * RATED_W
    tail = [r["event"] for r in events(inverter.log_path)][-4:]
    assert tail == ["command-expired", "decision", "device-write", "read-back"]


async def test_import_on_a_curtail_only_inverter_is_refused_and_recorded(audit: AuditLog, log_path: Path) -> None:
    async with _rig("inverter", audit, log_path, (4000, 1000), (3500, 1000)) as rig:
        before = await _points(rig.endpoint, 123)
        cmd = command(-800, AGG, valid_until=time.time() + 60)
        decision = rig.dispatcher.submit(cmd, time.time())
        with pytest.raises(UnsupportedControl, match="import"):
            await apply_decision(decision, rig.controls, audit, reversion_s=120)
        assert await _points(rig.endpoint, 123) == before
        assert _trail(log_path, cmd.command_id) == ["command-received", "decision", "write-failed"]
        (failed,) = events(log_path, "write-failed")
        assert (failed["stage"], failed["error"]) == ("plan", "UnsupportedControl")


async def test_default_envelope_rewrites_the_device_when_the_twin_fails(inverter: Rig) -> None:
    cmd = command(3400, AGG, valid_until=time.time() + 60)
    await apply_decision(inverter.dispatcher.submit(cmd, time.time()), inverter.controls, inverter.audit,
                         reversion_s=120)
    assert (await _points(inverter.endpoint, 123))["WMaxLimPct"] == pytest.approx(68.0)
    (revised,) = inverter.dispatcher.set_envelope(None, time.time(), problem="twin error: did not converge")
    assert revised.setpoint is not None
    assert (revised.setpoint.w, revised.binding) == (1500, "default-envelope-export")
    applied = await apply_decision(revised, inverter.controls, inverter.audit, reversion_s=120)
    assert applied is not None
    assert applied.held_w == 1500
    assert (await _points(inverter.endpoint, 123))["WMaxLimPct"] == pytest.approx(30.0)
    assert await _measured_w(inverter, 1500) == pytest.approx(1500, abs=50)
    assert events(inverter.log_path, "envelope")[-1]["reason"] == "twin error: did not converge"


async def test_a_lapsed_battery_setpoint_hands_the_battery_back_to_its_own_logic(audit: AuditLog,
                                                                                 log_path: Path) -> None:
    """124's timer (no reversion value) turns ``StorCtl_Mod`` off: the battery returns to what it wants itself."""
    ((_, sim),) = make_devices(["battery"], physics=BATTERY_INTENT)
    clock = FakeClock(time.monotonic())
    sim.clock = clock
    async with serve_tcp([sim], tick=0) as port, TcpEndpoint("127.0.0.1", port) as tcp:
        controls = await SunSpecDevice("inv-1", UnitIO(tcp, 1), role="battery").controls()
        dispatcher = Dispatcher(policy(customer={"inv-1": (3000, 3000)}), audit)
        now = time.time()
        dispatcher.set_envelope(envelope({"inv-1": (3500, 2500)}, valid_from=now - 60, valid_until=now + 900), now)
        decision = dispatcher.submit(command(-2000, AGG, valid_from=now - 1, valid_until=now + 600), now)
        applied = await apply_decision(decision, controls, audit, reversion_s=30)
        assert applied is not None
        assert (applied.model, applied.held_w, applied.reversion_s) == (124, -2000, 30)
        sim.update(clock.advance(1))
        assert sim.value(802, "W") == pytest.approx(-2000, abs=1)  # the setpoint, against its own +1000 W
        sim.update(clock.advance(30))  # the gateway is gone: nobody renews the setpoint
        assert sim.value(124, "StorCtl_Mod") == 0
        sim.update(clock.advance(1))
        assert sim.value(802, "W") == pytest.approx(1000, abs=1)
