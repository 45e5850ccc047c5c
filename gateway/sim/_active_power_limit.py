"""Limitation of active power, IEEE 1547-2018 clause 4.6.2.

When enabled, the DER's active power output is at most ``AP_LIMIT`` (per unit of rated active power); the
DER reaches a new limit within the response time ``AP_RT`` (the standard requires 30 s or less). As in
OpenDER (EPRI report 3002030962 Eq. 3.7.1-7, 3.7.1-8) the limit ramps at full scale per ``AP_RT`` and
returns to 1 pu when the function is disabled. The output is ``min(available, limit)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sim._dynamics import ramp


@dataclass(frozen=True, slots=True)
class ActivePowerLimitSettings:
    """Standard setting names (OpenDER common file format)."""

    AP_LIMIT_ENABLE: bool = False
    AP_LIMIT: float = 1.0
    AP_RT: float = 0.0


@dataclass(frozen=True, slots=True)
class ActivePowerLimitInputs:
    """The active power the source could deliver now, per unit of rated."""

    p_avail_pu: float


@dataclass(frozen=True, slots=True)
class ActivePowerLimitState:
    """The limit in effect after the response-time ramp (``None`` before the first step)."""

    limit_pu: float | None = None


def step(
    state: ActivePowerLimitState,
    inputs: ActivePowerLimitInputs,
    settings: ActivePowerLimitSettings,
    dt: float,
) -> tuple[ActivePowerLimitState, float]:
    """Advance by ``dt`` seconds; returns the new state and the active power output (pu)."""
    target = max(0.0, min(1.0, settings.AP_LIMIT)) if settings.AP_LIMIT_ENABLE else 1.0
    limit = ramp(state.limit_pu, target, settings.AP_RT, dt)
    return ActivePowerLimitState(limit), max(0.0, min(inputs.p_avail_pu, limit))
