"""Caps: a DER with no command is kept inside the envelope in force — the tightest bound wins per direction, and the
cap reaches a simulated device as a limit with its reversion timer (read back over a second connection)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog, verify_log
from gateway.devices import SunSpecDevice, TcpEndpoint, UnitIO
from gateway.dispatch import apply_cap, cap_for, envelope_in_force
from gateway.sim import Endpoint, PhysicsSettings, simulated_fleet
from gateway.sunspec import SunSpecReader, discover

from ._helpers import NOW, envelope, events, policy


@pytest.mark.parametrize(("env", "customer", "expected"), [
    # the certified envelope is tighter on export, the customer on import
    ({"bat-1": (2500, 3500)}, (3000, 3000), (2500, 3000, "envelope", "customer")),
    # the customer is tighter on export; a tie names the customer (listed first)
    ({"bat-1": (3500, 3000)}, (3000, 3000), (3000, 3000, "customer", "customer")),
    # a DER the certified envelope does not cover gets its default limits
    ({"inv-9": (100, 100)}, (3000, 3000), (1500, 1500, "default-envelope", "default-envelope")),
])
def test_the_tightest_bound_wins_per_direction(env: dict[str, tuple[float, float]], customer: tuple[float, float],
                                               expected: tuple[float, float, str, str]) -> None:
    pol = policy(customer={"bat-1": customer})
    cap = cap_for("bat-1", envelope_in_force(envelope(env), NOW, pol), pol)
    assert (cap.export_w, cap.import_w, cap.export_binding, cap.import_binding) == expected


def test_without_a_valid_envelope_the_default_caps() -> None:
    pol = policy(customer={"bat-1": (3000, 3000)}, default={"bat-1": (1000, 500)})
    expired = envelope({"bat-1": (2500, 2500)}, valid_until=NOW - 1)
    cap = cap_for("bat-1", envelope_in_force(expired, NOW, pol), pol)
    assert (cap.export_w, cap.import_w, cap.export_binding) == (1000, 500, "default-envelope")


async def _points(endpoint: Endpoint, model_id: int) -> dict[str, Any]:
    async with TcpEndpoint(endpoint.host, endpoint.port) as tcp:
        io = UnitIO(tcp, endpoint.unit)
        (block,) = await SunSpecReader(io, await discover(io), {model_id}).read()
    return block.points


@pytest.mark.parametrize(("kind", "model", "held"), [
    ("inverter", 123, {"WMaxLimPct": 70.0, "WMaxLim_Ena": 1}),  # 3500 of 5000 W
    ("inverter-7xx", 704, {"WMaxLimPct": 70.0, "WMaxLimPctEna": 1}),
    ("battery", 124, {"OutWRte": 70.0, "InWRte": 40.0, "StorCtl_Mod": 3}),  # 3500 / 2000 of WChaMax 5000 W
])
async def test_a_cap_reaches_the_device_as_a_limit_with_its_timer(tmp_path: Path, kind: str, model: int,
                                                                  held: dict[str, Any]) -> None:
    pol = policy(customer={"der": (4000, 2000)})
    in_force = envelope_in_force(envelope({"der": (3500, 3000)}, valid_from=time.time() - 60,
                                          valid_until=time.time() + 900), time.time(), pol)
    cap = cap_for("der", in_force, pol)
    with AuditLog.open(tmp_path / "audit.jsonl") as audit:
        async with simulated_fleet(1, kind) as [endpoint], TcpEndpoint(endpoint.host, endpoint.port) as tcp:
            controls = await SunSpecDevice("der", UnitIO(tcp, endpoint.unit)).controls()
            written = await apply_cap(cap, controls, audit, reversion_s=90)
            points = await _points(endpoint, model)
    assert {k: points[k] for k in held} == pytest.approx(held)
    timer = {123: "WMaxLimPct_RvrtTms", 704: "WMaxLimPctRvrtTms", 124: "InOutWRte_RvrtTms"}[model]
    assert 0 < points[timer] <= 90
    assert written.reversion_s == 90
    write, readback = events(tmp_path / "audit.jsonl", "device-write", "read-back")
    assert (write["action"], write["export_w"], write["export_binding"]) == ("cap", 3500, "envelope")
    assert readback["ok"] is True
    assert verify_log(tmp_path / "audit.jsonl").ok


@pytest.mark.parametrize(("intent", "expected"), [
    (4500.0, 3500.0),  # wants to discharge past the export cap (3500 W): held at the cap
    (-3000.0, -2000.0),  # wants to charge past the import cap (2000 W): held at the cap
    (1200.0, 1200.0),  # inside the window [-2000, +3500]: left alone
    (-800.0, -800.0),
    (0.0, 0.0),  # idle stays idle (the old bug: a cap of 70 % / 40 % drove it to discharge 30 % = 1500 W)
])
async def test_a_storage_cap_is_a_window_the_battery_chooses_in(tmp_path: Path, intent: float,
                                                                expected: float) -> None:
    pol = policy(customer={"der": (4000, 2000)})
    in_force = envelope_in_force(envelope({"der": (3500, 3000)}, valid_from=time.time() - 60,
                                          valid_until=time.time() + 900), time.time(), pol)
    cap = cap_for("der", in_force, pol)
    assert (cap.export_w, cap.import_w) == (3500, 2000)  # e != i
    physics = PhysicsSettings(cloudiness=0.0, noise=0.0, seed=1, battery_intent_w=intent)
    with AuditLog.open(tmp_path / "audit.jsonl") as audit:
        async with simulated_fleet(1, "battery", physics=physics) as [endpoint], \
                TcpEndpoint(endpoint.host, endpoint.port) as tcp:
            controls = await SunSpecDevice("der", UnitIO(tcp, endpoint.unit)).controls()
            before = (await _points(endpoint, 802))["W"]
            written = await apply_cap(cap, controls, audit, reversion_s=90)
            after = (await _points(endpoint, 802))["W"]
    assert before == pytest.approx(intent, abs=1)  # before the cap: the battery's own logic
    assert (written.discharge_w, written.charge_w) == (3500, 2000)
    assert after == pytest.approx(expected, abs=1)
