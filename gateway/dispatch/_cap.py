"""Caps: every DER dispatch holds stays inside the envelope in force (certified or default), command or not.

A command becomes a setpoint (:mod:`gateway.dispatch._apply`); a DER with no active command still gets its
**cap** written: the tightest of the customer's limits and the envelope in force, per direction
(:func:`cap_for`, pure). It is written as a limit, not a setpoint, so the DER keeps its own control below it:

* 704 ``WMaxLimPct`` (``WMaxLimPctEna``), else 123 ``WMaxLimPct`` (``WMaxLim_Ena``): the export cap as % of WMax
  (702 ``WMax``/``WMaxRtg``, 121 ``WMax``, 120 ``WRtg``);
* 124 ``OutWRte``/``InWRte``: the most the battery may discharge/charge, as % of ``WChaMax``, both
  ``StorCtl_Mod`` bits on. 124 is a limit window (defined in :mod:`gateway.sunspec._controls`, after the vendor's
  "Modbus TCP & RTU" storage-control documentation): the battery's power stays in ``[-InWRte, +OutWRte]`` and its
  own logic chooses inside, so export cap ``e`` and import cap ``i`` give the window ``[-i, +e]``, which never
  moves a battery that is idle (a setpoint is the single-point window, :mod:`gateway.dispatch._apply`).

Values are quantised toward zero at the point's scale factor (never more than the cap) and each write programs
the model's reversion timer, so a gateway that dies leaves the DER to fall back by itself; the owner re-writes
the cap before the timer runs out (``refresh``). Audit lines as for setpoints: ``device-write`` (``action: cap``,
``refresh``) before the write, then ``read-back`` with ``ok``, or ``write-failed``.

Fail-safe layer 2, what the DER falls back to: on 704 the export cap's reversion value is programmed with it
(``WMaxLimPctRvrt``, enabled by ``WMaxLimPctEnaRvrt``) to ``fallback_w`` as % of WMax — the default envelope's
export limit (:func:`default_cap`) — so a dead gateway leaves the inverter at the default envelope rather than
uncapped. 123 (``WMaxLimPct_RvrtTms``) and 124 (``InOutWRte_RvrtTms``) have no reversion value: their timers
return the DER to the device's own default (for 123 typically no limit at all), which no Modbus write can set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.audit import AuditLog
from gateway.dispatch._apply import CHARGE, DISCHARGE, _record, _toward_zero
from gateway.dispatch._failsafe import InForce, envelope_in_force
from gateway.dispatch._policy import DispatchPolicy
from gateway.errors import UnsupportedControl, WriteVerificationError
from gateway.sunspec import SunSpecControls

_TOL_W = 1e-6  # closer than this is the same limit


@dataclass(frozen=True, slots=True)
class Cap:
    """A DER's limits with no command: it may export up to ``export_w`` and import up to ``import_w`` (W, >= 0).

    ``export_binding``/``import_binding`` name the source of each (``customer``, ``envelope``,
    ``default-envelope``; the customer's limits win ties)."""

    der_id: str
    export_w: float
    import_w: float
    export_binding: str
    import_binding: str


@dataclass(frozen=True, slots=True)
class CapWritten:
    """What the device holds after :func:`apply_cap`: per control written, the model and W held."""

    der_id: str
    export_model: int | None  # 704 or 123 (WMaxLimPct), None when the device has neither
    export_w: float | None  # the export cap held (W), as read back
    storage_model: int | None  # 124, None when the device has no storage control
    discharge_w: float | None
    charge_w: float | None
    reversion_s: int | None
    reversion_pct: float | None = None  # the export cap's reversion value (704 WMaxLimPctRvrt); None: none programmed


def cap_for(der_id: str, in_force: InForce, policy: DispatchPolicy) -> Cap:
    """The cap on ``der_id`` under ``in_force``: the tightest of the customer bound and the envelope bound."""
    bounds = (policy.customer_bound(der_id), in_force.bound(der_id, policy))
    export = min(bounds, key=lambda b: b.export_w)  # min keeps the first of equals: the customer's
    import_ = min(bounds, key=lambda b: b.import_w)
    return Cap(der_id, export.export_w, import_.import_w, export.source, import_.source)


def default_cap(der_id: str, policy: DispatchPolicy) -> Cap:
    """The cap on ``der_id`` under the default envelope (the tighter of it and the customer's limits): what the
    DER is to fall back to when nobody renews its limits."""
    return cap_for(der_id, envelope_in_force(None, 0.0, policy), policy)


def _number(points: dict[str, Any], name: str) -> float | None:
    value = points.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _sf(points: dict[str, Any], name: str) -> int:
    value = points.get(name)
    return value if isinstance(value, int) else 0


async def _w_max(controls: SunSpecControls, model: int) -> float:
    """The W that 100 % of ``WMaxLimPct`` means on this device."""
    sources = ((702, "WMax"), (702, "WMaxRtg")) if model == 704 else ((121, "WMax"), (120, "WRtg"))
    for source, point in sources:
        if controls.has(source):
            value = _number((await controls.read_model(source)).points, point)
            if value is not None and value > 0:
                return value
    raise UnsupportedControl(f"no usable {' or '.join(f'{m} {p}' for m, p in sources)}: cannot convert W to % of "
                             "WMax")


@dataclass(frozen=True, slots=True)
class _ExportHeld:
    model: int
    w: float
    reversion_s: int | None
    reversion_pct: float | None
    points: dict[str, Any]


async def _export_cap(cap: Cap, controls: SunSpecControls, revert_s: int, fallback_w: float | None) -> _ExportHeld:
    """Write the export cap as WMaxLimPct (704: with its reversion value); what the device holds afterwards."""
    model = 704 if controls.has(704) else 123
    w_max = await _w_max(controls, model)
    sf_name = "WMaxLimPct_SF"
    sf = _sf((await controls.read_model(model)).points, sf_name)
    pct = min(100.0, _toward_zero(cap.export_w / w_max * 100.0, sf))
    revert_pct = None
    if model == 704 and fallback_w is not None:
        revert_pct = min(100.0, _toward_zero(max(0.0, fallback_w) / w_max * 100.0, sf))
    result = await controls.limit_active_power_pct(pct, revert_s, revert_pct=revert_pct)
    held = (await controls.read_model(model)).points
    enable = "WMaxLimPctEna" if model == 704 else "WMaxLim_Ena"
    held_pct = _number(held, "WMaxLimPct")
    tol = 10.0 ** _sf(held, sf_name) / 2
    ok = held.get(enable) == 1 and held_pct is not None and abs(held_pct - pct) <= tol
    if not ok:
        raise WriteVerificationError(f"{cap.der_id}: wrote WMaxLimPct {pct:g} % enabled, the device holds "
                                     f"{held_pct} % with {enable} {held.get(enable)}")
    assert held_pct is not None
    names = ["WMaxLimPct", enable]
    if result.reversion_value is not None:
        names += ["WMaxLimPctRvrt", "WMaxLimPctEnaRvrt"]
        held_rvrt = _number(held, "WMaxLimPctRvrt")
        if held_rvrt is None or abs(held_rvrt - result.reversion_value) > tol or held.get("WMaxLimPctEnaRvrt") != 1:
            raise WriteVerificationError(f"{cap.der_id}: wrote WMaxLimPctRvrt {result.reversion_value:g} % enabled, "
                                         f"the device holds {held_rvrt} % with WMaxLimPctEnaRvrt "
                                         f"{held.get('WMaxLimPctEnaRvrt')}")
    return _ExportHeld(model, held_pct / 100.0 * w_max, result.reversion_s, result.reversion_value,
                       {k: held.get(k) for k in names})


async def _storage_cap(cap: Cap, controls: SunSpecControls, revert_s: int) -> tuple[float, float, int | None, dict[
        str, Any]]:
    """Write the storage limits as the 124 window [-InWRte, +OutWRte]; (discharge W held, charge W held, reversion,
    points)."""
    block = await controls.read_model(124)
    w_cha_max = _number(block.points, "WChaMax")
    if w_cha_max is None or w_cha_max <= 0:
        raise UnsupportedControl(f"model 124 WChaMax is {w_cha_max}: cannot convert W to a rate")
    sf = _sf(block.points, "InOutWRte_SF")
    out_pct = min(100.0, _toward_zero(cap.export_w / w_cha_max * 100.0, sf))
    in_pct = min(100.0, _toward_zero(cap.import_w / w_cha_max * 100.0, sf))
    result = await controls.set_storage_window_pct(out_pct, in_pct, revert_s)
    held = (await controls.read_model(124)).points
    got_out, got_in = _number(held, "OutWRte"), _number(held, "InWRte")
    tol = 10.0**sf / 2
    ok = held.get("StorCtl_Mod") == CHARGE | DISCHARGE and got_out is not None and got_in is not None and \
        abs(got_out - out_pct) <= tol and abs(got_in - in_pct) <= tol
    if not ok:
        raise WriteVerificationError(f"{cap.der_id}: wrote OutWRte {out_pct:g} % InWRte {in_pct:g} % with both "
                                     f"modes, the device holds {got_out} %, {got_in} %, StorCtl_Mod "
                                     f"{held.get('StorCtl_Mod')}")
    assert got_out is not None
    assert got_in is not None
    points = {k: held.get(k) for k in ("OutWRte", "InWRte", "StorCtl_Mod")}
    return got_out / 100.0 * w_cha_max, got_in / 100.0 * w_cha_max, result.reversion_s, points


async def apply_cap(cap: Cap, controls: SunSpecControls, audit: AuditLog, *, reversion_s: int,
                    fallback_w: float | None = None, refresh: bool = False) -> CapWritten:
    """Write ``cap`` to its DER (every control it has: export cap and storage limits) and verify it.

    ``fallback_w``: the export limit the DER keeps when the timer runs out (:func:`default_cap`'s), programmed
    where the device holds a reversion value (704). ``refresh``: the same cap written again to renew its timer.
    Raises :class:`UnsupportedControl` when the device has none of 704, 123, 124 (recorded as ``write-failed``),
    the device's error, or :class:`WriteVerificationError` when it holds something else than was written.
    """
    if reversion_s < 1:
        raise ValueError(f"reversion_s {reversion_s} must be at least 1 s: the device must fall back if we die")
    der = cap.der_id
    export = controls.has(704) or controls.has(123)
    storage = controls.has(124)
    models = [m for m, has in ((704 if controls.has(704) else 123, export), (124, storage)) if has]
    await _record(audit, "device-write", der_id=der, command_id=None, action="cap", models=models,
                  export_w=cap.export_w, import_w=cap.import_w, export_binding=cap.export_binding,
                  import_binding=cap.import_binding, reversion_s=reversion_s, fallback_w=fallback_w, refresh=refresh)
    export_model = export_w = discharge = charge = reversion_pct = None
    timers: list[int] = []
    points: dict[str, Any] = {}
    try:
        if not models:
            raise UnsupportedControl("the device has none of 704, 123 or 124: it cannot be capped")
        if export:
            got_export = await _export_cap(cap, controls, reversion_s, fallback_w)
            export_model, export_w, reversion_pct = got_export.model, got_export.w, got_export.reversion_pct
            timers += [got_export.reversion_s] if got_export.reversion_s is not None else []
            points.update(got_export.points)
        if storage:
            discharge, charge, timer, got = await _storage_cap(cap, controls, reversion_s)
            timers += [timer] if timer is not None else []
            points.update(got)
    except Exception as exc:
        await _record(audit, "write-failed", der_id=der, command_id=None, action="cap", stage="write",
                      error=type(exc).__name__, reason=str(exc))
        raise
    reversion = min(timers) if timers else None
    await _record(audit, "read-back", der_id=der, command_id=None, action="cap", ok=True, export_w=export_w,
                  discharge_w=discharge, charge_w=charge, reversion_s=reversion, reversion_pct=reversion_pct,
                  refresh=refresh, points=points)
    return CapWritten(der, export_model, export_w, 124 if storage else None, discharge, charge, reversion,
                      reversion_pct)


def cap_differs(old: Cap | None, new: Cap, deadband_pct: float = 0.0) -> bool:
    """Whether ``new`` must be written over ``old``, the cap the device holds. A tighter limit always: the new
    envelope is the bound. A looser one only when it loosens a limit by more than ``deadband_pct`` % of what is held:
    a device held a little tighter than allowed is inside the envelope, and an envelope that jitters from cycle to
    cycle then costs no write (settings some devices keep in flash). The bindings alone change nothing."""
    if old is None:
        return True
    return any(want < held - _TOL_W or want - held > max(_TOL_W, held * deadband_pct / 100)
               for held, want in ((old.export_w, new.export_w), (old.import_w, new.import_w)))
