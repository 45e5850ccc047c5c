"""Smooth drivers of the simulated plant: clear-sky irradiance over the day, passing clouds, household load.

All pure functions of (simulated) time and explicit random samples, so a fixed seed replays a day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def clear_sky(hour: float, sunrise: float = 6.0, sunset: float = 18.0) -> float:
    """Clear-sky irradiance as a fraction of peak (0 at night, 1 at solar noon): a sine bell, sharpened.

    ``hour`` is the simulated time of day in hours (wraps every 24 h).
    """
    h = hour % 24.0
    if not sunrise < h < sunset:
        return 0.0
    return float(math.sin(math.pi * (h - sunrise) / (sunset - sunrise)) ** 1.3)


@dataclass(frozen=True, slots=True)
class CloudState:
    """A slowly varying cloud index (an Ornstein-Uhlenbeck process around 0)."""

    x: float = 0.0


def clouds(state: CloudState, normal: float, cloudiness: float, dt: float, tau: float = 600.0) -> tuple[
    CloudState, float
]:
    """Advance the cloud process by ``dt`` simulated seconds with one standard-normal sample ``normal``.

    Returns the new state and the transmittance factor in ``[1 - cloudiness, 1]``.
    """
    a = math.exp(-max(dt, 0.0) / tau)
    x = state.x * a + math.sqrt(1.0 - a * a) * normal
    transmittance = 1.0 - cloudiness * min(1.0, abs(x))
    return CloudState(x), transmittance


def household_load(hour: float) -> float:
    """A household's load as a fraction of its peak: a night base, a morning and a larger evening peak."""
    h = hour % 24.0
    morning = math.exp(-(((h - 7.5) / 1.2) ** 2))
    evening = math.exp(-(((h - 19.0) / 2.0) ** 2))
    return 0.15 + 0.35 * morning + 0.6 * evening
