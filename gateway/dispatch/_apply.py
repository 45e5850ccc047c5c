"""Applying a decision to its DER: the write through :class:`~gateway.sunspec.SunSpecControls`, then read-back.

The only asynchronous part of dispatch. Audit lines, in order: ``device-write`` (what is about to be written,
recorded before the write), then ``read-back`` (what the device holds afterwards, as W, and whether that is
what was written), or ``write-failed``; ``write-skipped`` when the setpoint expired before it could be
written. Audit writes (fsync) run in a worker thread, off the event loop.

How a setpoint in W reaches a device (7xx before 12x, as the controls layer prefers):

* 704 ``WSet`` (``WSetMod`` = W): any sign.
* 124 storage, as % of ``WChaMax``: 124 confines the battery to the window ``[-InWRte, +OutWRte]`` (both
  ``StorCtl_Mod`` bits on; the window semantics are defined in :mod:`gateway.sunspec._controls`), so a setpoint
  ``p`` is the single-point window ``OutWRte = p``, ``InWRte = -p`` (discharge ``p`` > 0, charge ``p`` < 0, hold
  at 0 W with both 0: mode 0 would hand the battery back to its own logic). Read back, the device holds a setpoint
  only while the window is a single point with both bits on; any other window is a cap, not a setpoint.
* 123 ``WMaxLimPct``, as % of 121 ``WMax`` (else 120 ``WRtg``): export only (a PV inverter cannot import).

Values are quantised toward zero at the device's scale factor, so the device never gets more than the clamp;
more than the device's rating is written as its rating. Each write programs the reversion timer with
``min(reversion_s, time the setpoint has left)`` so the device falls back by itself when the setpoint expires
or the gateway dies; the owner re-applies :meth:`Dispatcher.setpoint` before ``reversion_s`` runs out (a
``refresh``: same value, new timer; its ``device-write`` line says ``action: refresh``).

What it falls back to (fail-safe layer 2): on 704, ``fallback_w`` (the default envelope's export limit) is
programmed as ``WSetRvrt`` with ``WSetEnaRvrt`` off, so a lapsed setpoint leaves the device under its export cap
(704 ``WMaxLimPct``, whose own reversion value :func:`~gateway.dispatch.apply_cap` programs to the default
envelope) rather than holding a setpoint nobody renews. 123 and 124 hold no reversion value: their timers hand
the device back to its own default.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.audit import AuditLog
from gateway.dispatch._dispatcher import Decision
from gateway.errors import UnsupportedControl, WriteVerificationError
from gateway.sunspec import ControlResult, SunSpecControls
from gateway.types import Setpoint

CHARGE, DISCHARGE = 1, 2  # 124 StorCtl_Mod bits


@dataclass(frozen=True, slots=True)
class Applied:
    """What reached the device: ``written_w`` (None: control released), ``held_w`` read back after the write."""

    der_id: str
    model: int
    written_w: float | None
    held_w: float | None
    reversion_s: int | None  # the timer programmed (None: the device has none, or a release)
    reversion_w: float | None = None  # what WSet reverts to (704 WSetRvrt), None where nothing was programmed


@dataclass(frozen=True, slots=True)
class _Plan:
    model: int
    written_w: float
    resolution_w: float  # one step of the written point, in W
    points: dict[str, float]  # what is written, in the point's own units
    write: Callable[[int], Awaitable[ControlResult]]  # reversion_s -> result
    held: Callable[[dict[str, Any]], float | None]  # points read back -> W held (None: control not enabled)


def _toward_zero(value: float, sf: int) -> float:
    """``value`` on the grid of ``10**sf``, rounded toward zero (exact grid values stay put)."""
    step = 10.0**sf
    n = value / step
    r = round(n)
    q = r if abs(n - r) < 1e-9 else math.trunc(n)
    return round(q * step, max(0, -sf))


def _number(points: dict[str, Any], name: str, model: int) -> float:
    value = points.get(name)
    if not isinstance(value, int | float):
        raise UnsupportedControl(f"model {model} point {name} is not implemented: cannot convert W")
    return float(value)


def _sf(points: dict[str, Any], name: str) -> int:
    value = points.get(name)
    return value if isinstance(value, int) else 0


async def _plan_704(w: float, controls: SunSpecControls, fallback_w: float | None) -> _Plan:
    block = await controls.read_model(704)
    sf = _sf(block.points, "WSet_SF")
    written = _toward_zero(w, sf)
    revert_w = None if fallback_w is None else _toward_zero(fallback_w, sf)

    def held(p: dict[str, Any]) -> float | None:
        return float(p["WSet"]) if p.get("WSetEna") == 1 and p.get("WSetMod") == 1 else None

    return _Plan(704, written, 10.0**sf, {"WSet": written},
                 lambda revert_s: controls.set_active_power_w(written, revert_s, revert_w=revert_w), held)


async def _plan_124(w: float, controls: SunSpecControls) -> _Plan:
    block = await controls.read_model(124)
    w_max = _number(block.points, "WChaMax", 124)
    if w_max <= 0:
        raise UnsupportedControl(f"model 124 WChaMax is {w_max:g}: cannot convert W to a rate")
    sf = _sf(block.points, "InOutWRte_SF")
    pct = max(-100.0, min(100.0, _toward_zero(w / w_max * 100.0, sf)))

    def held(p: dict[str, Any]) -> float | None:
        out, into = p.get("OutWRte"), p.get("InWRte")
        if p.get("StorCtl_Mod") != CHARGE | DISCHARGE or not isinstance(out, int | float) or \
                not isinstance(into, int | float) or not math.isclose(out, -into, abs_tol=1e-9):
            return None  # not a single-point window: the battery chooses inside it, nothing is held
        return float(out) / 100.0 * w_max

    return _Plan(124, pct / 100.0 * w_max, 10.0**sf / 100.0 * w_max, {"OutWRte": pct, "InWRte": 0.0 - pct},
                 lambda revert_s: controls.set_storage_rate_pct(pct, revert_s), held)


async def _plan_123(w: float, controls: SunSpecControls) -> _Plan:
    if w < 0:
        raise UnsupportedControl(f"{w:g} W asks for import, and the device has only 123 (curtailment, export only)")
    if controls.has(121):
        w_max = _number((await controls.read_model(121)).points, "WMax", 121)
    elif controls.has(120):
        w_max = _number((await controls.read_model(120)).points, "WRtg", 120)
    else:
        raise UnsupportedControl("no 121 WMax or 120 WRtg: cannot convert W to % of WMax")
    if w_max <= 0:
        raise UnsupportedControl(f"WMax is {w_max:g}: cannot convert W to % of WMax")
    sf = _sf((await controls.read_model(123)).points, "WMaxLimPct_SF")
    pct = min(100.0, _toward_zero(w / w_max * 100.0, sf))

    def held(p: dict[str, Any]) -> float | None:
        return float(p["WMaxLimPct"]) / 100.0 * w_max if p.get("WMaxLim_Ena") == 1 else None

    return _Plan(123, pct / 100.0 * w_max, 10.0**sf / 100.0 * w_max, {"WMaxLimPct": pct},
                 lambda revert_s: controls.limit_active_power_pct(pct, revert_s), held)


async def _plan(w: float, controls: SunSpecControls, fallback_w: float | None) -> _Plan:
    if controls.has(704):
        return await _plan_704(w, controls, fallback_w)
    if controls.has(124):
        return await _plan_124(w, controls)
    if controls.has(123):
        return await _plan_123(w, controls)
    raise UnsupportedControl("the device has none of 704, 124 or 123: no active power control")


async def _record(audit: AuditLog, event: str, **fields: Any) -> None:
    await asyncio.to_thread(audit.record, event, **fields)


async def apply_setpoint(setpoint: Setpoint, controls: SunSpecControls, audit: AuditLog, *, reversion_s: int,
                         clock: Callable[[], float] = time.time, fallback_w: float | None = None,
                         refresh: bool = False) -> Applied | None:
    """Write ``setpoint`` to its DER and verify it; ``None`` if it expired first (nothing written).

    ``fallback_w``: the export limit the device falls back to when the timer runs out (704 ``WSetRvrt``; see
    the module docstring). ``refresh``: the same setpoint written again only to renew its timer (audited so).
    Raises the device's error (recorded as ``write-failed``) or :class:`WriteVerificationError` when the
    device holds something else than was written (recorded as a ``read-back`` with ``ok`` false).
    """
    der, cid = setpoint.der_id, setpoint.command_id
    now = clock()
    if now >= setpoint.valid_until:
        await _record(audit, "write-skipped", der_id=der, command_id=cid, w=setpoint.w,
                      reason="the setpoint expired before it could be written")
        return None
    revert_s = max(1, min(reversion_s, math.ceil(setpoint.valid_until - now)))
    try:
        plan = await _plan(setpoint.w, controls, fallback_w)
    except Exception as exc:
        await _record(audit, "write-failed", der_id=der, command_id=cid, w=setpoint.w, stage="plan",
                      error=type(exc).__name__, reason=str(exc))
        raise
    action = {"action": "refresh"} if refresh else {}
    await _record(audit, "device-write", der_id=der, command_id=cid, model=plan.model, w=setpoint.w,
                  written_w=plan.written_w, points=plan.points, reversion_s=revert_s, refresh=refresh, **action)
    try:
        result = await plan.write(revert_s)
        held_points = (await controls.read_model(plan.model)).points
    except Exception as exc:
        await _record(audit, "write-failed", der_id=der, command_id=cid, model=plan.model, stage="write",
                      error=type(exc).__name__, reason=str(exc))
        raise
    held = plan.held(held_points)
    tol = plan.resolution_w / 2 + 1e-6 * max(1.0, abs(setpoint.w))
    ok = held is not None and abs(held - plan.written_w) <= tol and (
        min(0.0, setpoint.w) - tol <= held <= max(0.0, setpoint.w) + tol)
    await _record(audit, "read-back", der_id=der, command_id=cid, model=plan.model, written_w=plan.written_w,
                  held_w=held, ok=ok, reversion_s=result.reversion_s, reversion_w=result.reversion_value,
                  points={k: held_points.get(k) for k in (*plan.points, *result.points)}, **action)
    if not ok:
        raise WriteVerificationError(f"{der}: wrote {plan.written_w:g} W, the device holds "
                                     f"{'no enabled control' if held is None else f'{held:g} W'}")
    return Applied(der, plan.model, plan.written_w, held, result.reversion_s, result.reversion_value)


_RELEASE = {704: {"WSetEna": 0}, 124: {"StorCtl_Mod": 0}, 123: {"WMaxLim_Ena": 0}}


async def release(der_id: str, controls: SunSpecControls, audit: AuditLog) -> Applied:
    """Hand the DER back to its own control: the enable flag written by :func:`apply_setpoint` off."""
    model = next((m for m in (704, 124, 123) if controls.has(m)), None)
    if model is None:
        raise UnsupportedControl("the device has none of 704, 124 or 123: nothing to release")
    values = _RELEASE[model]
    await _record(audit, "device-write", der_id=der_id, command_id=None, model=model, action="release",
                  points=values)
    try:
        await controls.write_points(model, values)
        held_points = (await controls.read_model(model)).points
    except Exception as exc:
        await _record(audit, "write-failed", der_id=der_id, model=model, stage="release", error=type(exc).__name__,
                      reason=str(exc))
        raise
    held = {k: held_points.get(k) for k in values}
    ok = held == values
    await _record(audit, "read-back", der_id=der_id, command_id=None, model=model, action="release", ok=ok,
                  points=held)
    if not ok:
        raise WriteVerificationError(f"{der_id}: release wrote {values}, the device holds {held}")
    return Applied(der_id, model, None, None, None)


async def apply_decision(decision: Decision, controls: SunSpecControls, audit: AuditLog, *, reversion_s: int,
                         clock: Callable[[], float] = time.time, fallback_w: float | None = None) -> Applied | None:
    """Carry out ``decision`` on its DER: nothing unless it ``changed``; a release when it has no setpoint."""
    if not decision.changed:
        return None
    if decision.setpoint is None:
        return await release(decision.der_id, controls, audit)
    return await apply_setpoint(decision.setpoint, controls, audit, reversion_s=reversion_s, clock=clock,
                                fallback_w=fallback_w)
