"""A battery's stored energy under a power command: charge/discharge limits, reserve, round-trip losses.

Pure ``step(state, inputs, settings, dt) -> (state, output)`` like the IEEE 1547 function modules. Power is
positive when discharging (exported by the DER), negative when charging; the output is the power actually
delivered after the state-of-charge limits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Capacity in Wh, rate limits in W, state-of-charge window in percent, one-way efficiency."""

    capacity_wh: float = 10000.0
    p_charge_max_w: float = 5000.0
    p_discharge_max_w: float = 5000.0
    soc_min_pct: float = 10.0
    soc_max_pct: float = 100.0
    efficiency: float = 0.95


@dataclass(frozen=True, slots=True)
class StorageInputs:
    """The commanded power (W): positive discharges, negative charges."""

    p_cmd_w: float


@dataclass(frozen=True, slots=True)
class StorageState:
    """State of charge in percent of capacity."""

    soc_pct: float = 50.0


def step(state: StorageState, inputs: StorageInputs, settings: StorageSettings, dt: float) -> tuple[
    StorageState, float
]:
    """Advance by ``dt`` seconds; returns the new state and the delivered power (W, + discharges)."""
    if dt <= 0.0 or settings.capacity_wh <= 0.0:
        return state, 0.0
    cap = settings.capacity_wh
    eff = settings.efficiency
    p = max(-settings.p_charge_max_w, min(settings.p_discharge_max_w, inputs.p_cmd_w))
    if p > 0.0:  # discharge: the cells give p / eff
        room_wh = max(0.0, (state.soc_pct - settings.soc_min_pct) / 100.0 * cap)
        p = min(p, room_wh * eff * 3600.0 / dt)
        soc = state.soc_pct - p / eff * dt / 3600.0 / cap * 100.0
    else:  # charge: the cells take |p| * eff
        room_wh = max(0.0, (settings.soc_max_pct - state.soc_pct) / 100.0 * cap)
        p = -min(-p, room_wh / eff * 3600.0 / dt)
        soc = state.soc_pct - p * eff * dt / 3600.0 / cap * 100.0
    return StorageState(max(0.0, min(100.0, soc))), p
