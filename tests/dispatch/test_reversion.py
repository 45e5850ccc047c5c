"""Fail-safe layer 2: if the gateway dies, the inverter falls back by itself — to the default envelope where the device
holds a reversion value (704), to its own default where it does not (123).

The daemon's control side writes a cap and a setpoint to a simulated inverter, then stops (the gateway "dies"); the
simulator's clock is moved past the reversion timer, and what the inverter holds and produces is read over a second
connection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog, verify_log
from gateway.daemon._control import Control
from gateway.devices import SunSpecDevice, TcpEndpoint, UnitIO
from gateway.dispatch import apply_cap, cap_for, default_cap, envelope_in_force
from gateway.sim import PhysicsSettings, SimulatedDevice, make_devices, serve_tcp
from gateway.sunspec import SunSpecReader, discover
from tests.sim._helpers import FakeClock

from ._helpers import GO, command, envelope, events, policy

CLEAR_NOON = PhysicsSettings(start_hour=12.0, cloudiness=0.0, noise=0.0, v_offset_pu=0.0, seed=1)
RATED_W, DEFAULT_W, ENVELOPE_W, REVERSION_S = 5000.0, 1500.0, 3500.0, 60


@dataclass
class Inverter:
    sim: SimulatedDevice
    clock: FakeClock
    port: int


@contextlib.asynccontextmanager
async def _inverter(kind: str) -> AsyncIterator[Inverter]:
    """A simulated inverter at a clear noon whose clock the test moves (no background stepping)."""
    ((_, sim),) = make_devices([kind], physics=CLEAR_NOON)
    clock = FakeClock(time.monotonic())
    sim.clock = clock
    async with serve_tcp([sim], tick=0) as port:
        yield Inverter(sim, clock, port)


async def _read(port: int, *models: int) -> dict[int, dict[str, Any]]:
    async with TcpEndpoint("127.0.0.1", port) as tcp:
        io = UnitIO(tcp, 1)
        blocks = await SunSpecReader(io, await discover(io), set(models)).read()
    return {b.id: b.points for b in blocks}


def _measured(inv: Inverter, model: int) -> float:
    """The inverter's output a second later (the plant stepped on its own clock)."""
    inv.clock.advance(1)
    inv.sim.update()
    w = inv.sim.value(model, "W")
    assert w is not None
    return w


async def _control_writes(inv: Inverter, audit: AuditLog) -> None:
    """The gateway at work: the certified envelope (3500 W) and a command for 5000 W, clamped to 3500 W."""
    pol = policy(customer={"inverter-1": (RATED_W, 0)}, default={"inverter-1": (DEFAULT_W, 0)},
                 reversion_s=REVERSION_S)
    async with TcpEndpoint("127.0.0.1", inv.port) as tcp:
        control = Control(pol, audit, {"inverter-1": SunSpecDevice("inverter-1", UnitIO(tcp, 1))}, watched=())
        now = time.time()
        await control.set_envelope(envelope({"inverter-1": (ENVELOPE_W, 0)}, valid_from=now - 1,
                                            valid_until=now + 900), now)
        decision = await control.submit(command(RATED_W, GO, der_id="inverter-1", valid_from=now - 1,
                                                valid_until=now + 600), now)
        assert decision.setpoint is not None
        assert decision.setpoint.w == ENVELOPE_W


async def test_a_dead_gateway_leaves_a_704_inverter_at_the_default_envelope(audit: AuditLog,
                                                                            log_path: Path) -> None:
    async with _inverter("inverter-7xx") as inv:
        await _control_writes(inv, audit)
        held = (await _read(inv.port, 704))[704]
        assert (held["WSet"], held["WSetEna"]) == (ENVELOPE_W, 1)  # the setpoint, and under it the cap
        assert (held["WMaxLimPct"], held["WMaxLimPctEna"]) == (pytest.approx(70.0), 1)
        # what it is to fall back to, programmed with the limits
        assert (held["WMaxLimPctRvrt"], held["WMaxLimPctEnaRvrt"]) == (pytest.approx(30.0), 1)
        assert (held["WSetRvrt"], held["WSetEnaRvrt"]) == (DEFAULT_W, 0)
        assert 0 < held["WMaxLimPctRvrtTms"] <= REVERSION_S
        assert 0 < held["WSetRvrtTms"] <= REVERSION_S
        assert _measured(inv, 701) == pytest.approx(ENVELOPE_W, abs=0.01 * RATED_W)  # the sun gives more

        inv.clock.advance(REVERSION_S + 1)  # the gateway is gone: nothing renews the timers

        after = await _read(inv.port, 704, 701)
        assert (after[704]["WMaxLimPct"], after[704]["WMaxLimPctEna"]) == (pytest.approx(30.0), 1)
        assert after[704]["WSetEna"] == 0  # the lapsed setpoint no longer drives it; the default cap does
        assert after[704]["WMaxLimPctRvrtRem"] == 0
        assert _measured(inv, 701) == pytest.approx(DEFAULT_W, abs=0.01 * RATED_W)  # the default envelope

    caps = [r for r in events(log_path, "read-back") if r.get("action") == "cap"]
    assert caps[-1]["reversion_pct"] == pytest.approx(30.0)
    setpoint = next(r for r in events(log_path, "read-back") if r.get("action") is None)
    assert setpoint["reversion_w"] == DEFAULT_W
    assert verify_log(log_path).ok


async def test_a_123_inverter_falls_back_to_its_own_default(audit: AuditLog, log_path: Path) -> None:
    """123 has no reversion value: its timer hands the limit back to the device (here: no limit at all)."""
    async with _inverter("inverter") as inv:
        await _control_writes(inv, audit)
        held = (await _read(inv.port, 123))[123]
        assert (held["WMaxLimPct"], held["WMaxLim_Ena"]) == (pytest.approx(70.0), 1)
        inv.clock.advance(REVERSION_S + 1)
        after = (await _read(inv.port, 123))[123]
        assert after["WMaxLim_Ena"] == 0
        assert _measured(inv, 103) == pytest.approx(RATED_W, abs=0.02 * RATED_W)
    assert all(r.get("reversion_w") is None for r in events(log_path, "read-back"))


@pytest.mark.parametrize(("kind", "expected"), [("inverter-7xx", 30.0), ("inverter", None), ("battery", None)])
async def test_a_cap_says_what_was_programmed_to_fall_back_to(audit: AuditLog, log_path: Path, kind: str,
                                                              expected: float | None) -> None:
    pol = policy(customer={"der": (4000, 2000)}, default={"der": (1500, 1000)})
    now = time.time()
    cap = cap_for("der", envelope_in_force(envelope({"der": (3500, 3000)}, valid_from=now - 60,
                                                    valid_until=now + 900), now, pol), pol)
    fallback = default_cap("der", pol)
    assert (fallback.export_w, fallback.import_w, fallback.export_binding) == (1500, 1000, "default-envelope")
    async with _inverter(kind) as inv, TcpEndpoint("127.0.0.1", inv.port) as tcp:
        controls = await SunSpecDevice("der", UnitIO(tcp, 1)).controls()
        written = await apply_cap(cap, controls, audit, reversion_s=90, fallback_w=fallback.export_w)
    assert written.reversion_pct == (None if expected is None else pytest.approx(expected))
    write, readback = events(log_path, "device-write", "read-back")
    assert (write["fallback_w"], write["refresh"]) == (1500, False)
    assert readback["reversion_pct"] == written.reversion_pct
