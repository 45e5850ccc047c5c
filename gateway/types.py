"""The value types shared along the data path, each defined once: frozen, slotted, validated where built.

``Measurement`` (what a device measured) flows up from ``devices`` to the twin and the uplinks; ``DeviceState``
is a device's latest measurement with its freshness. Later stages add ``Envelope``, ``Command`` and
``Setpoint`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Sign convention: ``w``/``var`` are positive when the device exports (generation, battery discharge) for DERs,
#: and positive when the site imports for meters (the SunSpec 20x convention). ``role`` says which applies.


@dataclass(frozen=True, slots=True)
class Measurement:
    """One device's normalised reading at ``at`` (UNIX seconds, UTC). ``None`` = not measured by the device."""

    device_id: str
    at: float
    role: str
    w: float | None = None
    var: float | None = None
    v: float | None = None  # mean line-to-neutral voltage of the phases measured
    hz: float | None = None
    wh: float | None = None  # lifetime energy exported (DER) or imported (meter)
    soc_pct: float | None = None
    w_max: float | None = None  # the active power rating or current setting of WMax
    state: int | None = None  # SunSpec operating state (1xx St / 7xx St)


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A device as the gateway sees it: the latest measurement and whether it can be trusted now."""

    device_id: str
    measurement: Measurement | None
    stale: bool
    reason: str | None
    last_success: float | None  # UNIX seconds of the last good read
