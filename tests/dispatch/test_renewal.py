"""A new envelope that leaves the clamp where it was is no news: no ``revised`` decision, no device write. Only a
changed clamp (another value, or an expiry moved earlier) is decided again and written; the device's reversion
timer is renewed by the reconcile loop's refresh, audited as such.

Unit tests on the dispatcher, then the daemon's control side against a simulated inverter (123 and 704).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog, verify_log
from gateway.daemon._control import Control
from gateway.devices import SunSpecDevice, TcpEndpoint, UnitIO
from gateway.dispatch import Cap, Dispatcher, cap_differs, setpoint_differs
from gateway.sim import simulated_fleet
from gateway.sunspec import SunSpecReader, discover
from gateway.types import Setpoint

from ._helpers import AGG, GO, NOW, command, envelope, events, policy

# --- what counts as a change -------------------------------------------------------------------------------------

SP = Setpoint("inv-1", 4000.0, 4800.0, "envelope-export", "c1", GO, valid_until=NOW + 30)


@pytest.mark.parametrize(("old", "new", "differs"), [
    (SP, replace(SP, valid_until=NOW + 35), False),  # a renewed envelope: same value, later expiry
    (SP, replace(SP, w=4000.0 + 1e-9), False),  # float noise is not a value
    (SP, replace(SP, binding="default-envelope-export", valid_until=NOW + 3600), False),  # the same W, bound anew
    (SP, replace(SP, w=3999.0), True),  # another value
    (SP, replace(SP, valid_until=NOW + 20), True),  # an earlier expiry: the device's timer would outlast it
    (None, SP, True),
    (SP, None, True),
    (None, None, False),
])
def test_what_needs_writing(old: Setpoint | None, new: Setpoint | None, differs: bool) -> None:
    assert setpoint_differs(old, new) is differs


HELD = Cap("inv-1", 4000.0, 1000.0, "envelope", "envelope")


@pytest.mark.parametrize(("new", "deadband_pct", "differs"), [
    (replace(HELD, export_binding="default-envelope"), 2.0, False),  # the same W, bound anew
    (replace(HELD, export_w=3999.9), 2.0, True),  # tighter: at once, however little
    (replace(HELD, import_w=999.9), 2.0, True),
    (replace(HELD, export_w=4079.0), 2.0, False),  # looser by 1.98 %: the device held a little tighter is inside
    (replace(HELD, export_w=4081.0), 2.0, True),  # looser by 2.03 %
    (replace(HELD, import_w=1019.0), 2.0, False),
    (replace(HELD, import_w=1021.0), 2.0, True),
    (replace(HELD, export_w=4079.0, import_w=999.0), 2.0, True),  # one limit tighter: written (both)
    (replace(HELD, export_w=4000.5), 0.0, True),  # no deadband: every change
    (replace(HELD, export_w=4000.0 + 1e-9), 0.0, False),  # float noise is not a value
])
def test_what_cap_needs_writing(new: Cap, deadband_pct: float, differs: bool) -> None:
    assert cap_differs(HELD, new, deadband_pct) is differs
    assert cap_differs(None, new, deadband_pct)


def test_a_cap_held_at_zero_is_loosened_by_any_amount() -> None:
    blocked = replace(HELD, export_w=0.0)
    assert cap_differs(blocked, replace(blocked, export_w=1.0), 20.0)


# --- the dispatcher --------------------------------------------------------------------------------------------------


def _renewed(limits: dict[str, tuple[float, float]], sequence: int, at: float, *, since: float | None = None) -> Any:
    """The twin's next envelope, issued at ``at`` and valid 30 s from then (as the daemon's twin does).

    ``since``: an earlier start of validity (the tests that pass ``now`` ahead of the wall clock use it, since
    the daemon's control side judges validity on the wall clock too)."""
    return envelope(limits, sequence=sequence, valid_from=at if since is None else since, valid_until=at + 30)


def test_a_renewed_envelope_with_the_same_clamp_decides_nothing(audit: AuditLog, log_path: Path) -> None:
    d = Dispatcher(policy(), audit)
    d.set_envelope(_renewed({"inv-1": (3986.32, 0)}, 1, NOW), NOW)
    clamped = d.submit(command(5000, GO, valid_until=NOW + 600), NOW)
    assert clamped.setpoint is not None
    assert (clamped.outcome, clamped.setpoint.w, clamped.binding) == ("clamped", 3986.32, "envelope-export")
    decisions_before = len(events(log_path, "decision"))
    for seq in range(2, 6):  # four more twin cycles, 5 s apart, the same limit each time
        at = NOW + 5 * (seq - 1)
        assert d.set_envelope(_renewed({"inv-1": (3986.32, 0)}, seq, at), at) == []
        held = d.setpoint("inv-1")
        assert held is not None
        assert (held.w, held.valid_until) == (3986.32, at + 30)  # quietly follows the envelope's validity
    assert len(events(log_path, "decision")) == decisions_before  # no "revised — 3986.32 W replaces 3986.32 W"
    assert [r["sequence"] for r in events(log_path, "envelope")] == [1, 2, 3, 4, 5]  # each still recorded
    assert verify_log(log_path).ok


def test_a_command_inside_the_envelope_is_not_revised_by_a_renewal(audit: AuditLog, log_path: Path) -> None:
    d = Dispatcher(policy(), audit)
    d.set_envelope(_renewed({"inv-1": (4000, 0)}, 1, NOW), NOW)
    d.submit(command(2500, AGG, valid_until=NOW + 600), NOW)
    assert d.set_envelope(_renewed({"inv-1": (4000, 0)}, 2, NOW + 5), NOW + 5) == []
    assert [r["outcome"] for r in events(log_path, "decision")] == ["accepted"]


def test_a_changed_clamp_is_revised_and_to_be_written(audit: AuditLog, log_path: Path) -> None:
    d = Dispatcher(policy(), audit)
    d.set_envelope(_renewed({"inv-1": (3986.32, 0)}, 1, NOW), NOW)
    d.submit(command(5000, GO, valid_until=NOW + 600), NOW)
    (revised,) = d.set_envelope(_renewed({"inv-1": (3700.5, 0)}, 2, NOW + 5), NOW + 5)
    assert revised.setpoint is not None
    assert (revised.outcome, revised.changed, revised.setpoint.w) == ("revised", True, 3700.5)
    assert revised.reason == "3700.5 W (envelope-export) replaces 3986.32 W"
    (widened,) = d.set_envelope(_renewed({"inv-1": (4200, 0)}, 3, NOW + 10), NOW + 10)
    assert widened.setpoint is not None
    assert (widened.changed, widened.setpoint.w) == (True, 4200)


def test_an_earlier_expiry_with_the_same_clamp_is_written_again(audit: AuditLog) -> None:
    d = Dispatcher(policy(), audit)
    d.set_envelope(_renewed({"inv-1": (4000, 0)}, 1, NOW), NOW)
    d.submit(command(5000, GO, valid_until=NOW + 600), NOW)
    shorter = envelope({"inv-1": (4000, 0)}, sequence=2, valid_from=NOW, valid_until=NOW + 10)
    (revised,) = d.set_envelope(shorter, NOW + 1)
    assert revised.setpoint is not None
    assert (revised.outcome, revised.changed, revised.setpoint.w) == ("revised", True, 4000)
    assert revised.setpoint.valid_until == NOW + 10
    assert "before" in revised.reason


# --- the daemon's control side against a simulated inverter ------------------------------------------------------


async def _points(host: str, port: int, unit: int, model_id: int) -> dict[str, Any]:
    async with TcpEndpoint(host, port) as tcp:
        io = UnitIO(tcp, unit)
        (block,) = await SunSpecReader(io, await discover(io), {model_id}).read()
    return block.points


@pytest.fixture(params=["inverter", "inverter-7xx"])
async def rig(request: pytest.FixtureRequest, audit: AuditLog) -> AsyncIterator[tuple[Control, Any, str]]:
    async with simulated_fleet(1, request.param) as [endpoint], TcpEndpoint(endpoint.host, endpoint.port) as tcp:
        device = SunSpecDevice("inv-1", UnitIO(tcp, endpoint.unit))
        control = Control(policy(customer={"inv-1": (5000, 0)}, reversion_s=120), audit, {"inv-1": device},
                          watched=())
        yield control, endpoint, request.param


def _writes(log_path: Path) -> list[dict[str, Any]]:
    return events(log_path, "device-write")


async def test_renewals_write_nothing_until_the_refresh_and_a_changed_clamp_writes(
        rig: tuple[Control, Any, str], log_path: Path) -> None:
    control, endpoint, kind = rig
    model = 704 if kind == "inverter-7xx" else 123
    now = time.time()
    await control.set_envelope(_renewed({"inv-1": (4000, 0)}, 1, now, since=now - 1), now)
    decision = await control.submit(command(5000, GO, valid_from=now - 1, valid_until=now + 600), now)
    assert (decision.outcome, decision.binding) == ("clamped", "envelope-export")
    setpoint_writes = [w for w in _writes(log_path) if w.get("action") is None]
    assert [w["w"] for w in setpoint_writes] == [4000]
    written = len(_writes(log_path))
    decisions = len(events(log_path, "decision"))

    for seq in (2, 3, 4):  # the twin's next cycles: the same limits, later validity
        await control.set_envelope(_renewed({"inv-1": (4000, 0)}, seq, now + seq, since=now - 1), now + seq)
        await control.cycle({}, now + seq)
    assert len(_writes(log_path)) == written  # neither the setpoint nor (704) the cap is written again
    assert len(events(log_path, "decision")) == decisions

    # Past half the reversion timer the setpoint is written again, once, as a refresh.
    (first,) = setpoint_writes
    assert 25 <= first["reversion_s"] <= 30  # the first envelope's validity left
    due = first["ts"] + first["reversion_s"] / 2
    await control.cycle({}, due - 1)
    assert len(_writes(log_path)) == written  # not yet
    await control.cycle({}, due + 0.1)
    refreshes = [w for w in _writes(log_path)[written:] if w.get("action") == "refresh"]
    assert len(refreshes) == 1
    assert (refreshes[0]["w"], refreshes[0]["refresh"], refreshes[0]["model"]) == (4000, True, model)
    assert refreshes[0]["reversion_s"] > 30  # renewed up to the latest envelope's validity
    await control.cycle({}, due + 1)  # the refreshed timer (~34 s) is not due again yet
    assert [w for w in _writes(log_path)[written:] if w.get("action") == "refresh"] == refreshes
    written = len(_writes(log_path))

    # A changed clamp is decided and written at once.
    await control.set_envelope(_renewed({"inv-1": (3000, 0)}, 5, now + 18, since=now - 1), now + 18)
    (revised,) = events(log_path, "decision")[decisions:]
    assert (revised["outcome"], revised["setpoint"]["w"]) == ("revised", 3000)
    new_writes = _writes(log_path)[written:]
    assert [w["w"] for w in new_writes if w.get("action") is None] == [3000]
    assert all(w.get("refresh") is False for w in new_writes)
    held = await _points(endpoint.host, endpoint.port, endpoint.unit, model)
    if model == 704:
        assert (held["WSet"], held["WSetEna"]) == (3000, 1)
    else:
        assert (held["WMaxLimPct"], held["WMaxLim_Ena"]) == (pytest.approx(60.0), 1)
    assert verify_log(log_path).ok


async def test_a_cap_is_tightened_at_once_loosened_past_the_deadband_and_refreshed_as_held(
        rig: tuple[Control, Any, str], log_path: Path) -> None:
    """No command: the DER gets its cap. An envelope that jitters looser by less than the deadband (2 %) writes
    nothing and leaves the device at the tighter cap it holds; a tighter one is written at once; the refresh renews
    what the device holds."""
    control, endpoint, kind = rig
    model = 704 if kind == "inverter-7xx" else 123
    now = time.time()

    async def envelope_then_cycle(export_w: float, seq: int) -> list[dict[str, Any]]:
        before = len(_writes(log_path))
        at = now + seq
        await control.set_envelope(_renewed({"inv-1": (export_w, 0)}, seq, at, since=now - 1), at)
        await control.cycle({}, at)
        return _writes(log_path)[before:]

    (first,) = await envelope_then_cycle(4000, 1)
    assert (first["action"], first["export_w"], first["refresh"]) == ("cap", 4000, False)
    assert await envelope_then_cycle(4060, 2) == []  # 1.5 % looser
    assert await envelope_then_cycle(4050, 3) == []
    assert control.written("inv-1")[1].export_w == 4000  # type: ignore[union-attr]
    held = await _points(endpoint.host, endpoint.port, endpoint.unit, model)
    assert held["WMaxLimPct"] == pytest.approx(80.0)  # 4000 W of 5000
    (tighter,) = await envelope_then_cycle(3990, 4)  # 0.25 % tighter: at once
    assert (tighter["export_w"], tighter["refresh"]) == (3990, False)
    (looser,) = await envelope_then_cycle(4100, 5)  # 2.8 % looser than held
    assert looser["export_w"] == 4100
    assert await envelope_then_cycle(4150, 6) == []  # 1.2 % looser than held

    # The refresh renews the cap held (4100 W), not the envelope's 4150 W.
    due = looser["ts"] + looser["reversion_s"] / 2
    before = len(_writes(log_path))
    await control.cycle({}, due + 0.1)
    (refresh,) = _writes(log_path)[before:]
    assert (refresh["action"], refresh["export_w"], refresh["refresh"]) == ("cap", 4100, True)
    assert verify_log(log_path).ok

