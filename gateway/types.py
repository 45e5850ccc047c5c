"""The value types shared along the data path, each defined once: frozen, slotted, validated where built.

``Measurement`` (what a device measured) flows up from ``devices`` to the twin and the uplinks; ``DeviceState``
is a device's latest measurement with its freshness. ``Envelope`` (per-DER limits the twin certified, or the
configured default) flows up to the uplinks and down to dispatch; a ``Command`` (a request from an authority,
already authenticated) becomes a ``Setpoint`` only in ``dispatch``, after clamping.

Sign convention for DER power everywhere: positive W = export (generation, battery discharge), negative W =
import (battery charge, load). Limits are magnitudes: ``export_w`` caps export, ``import_w`` caps import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

#: Sign convention: ``w``/``var`` are positive when the device exports (generation, battery discharge) for DERs,
#: and positive when the site imports for meters (the SunSpec 20x convention). ``role`` says which applies.


@dataclass(frozen=True, slots=True)
class Measurement:
    """One device's normalised reading at ``at`` (UNIX seconds, UTC). ``None`` = not measured by the device.

    ``w_ph``/``var_ph``/``v_ph``: a three-phase meter's readings per phase A, B, C (W, var with the sign of
    ``w``/``var``; line-to-neutral volts), None unless the device gave all three phases of that quantity.
    """

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
    w_ph: tuple[float, float, float] | None = None  # per phase A, B, C (meters 203/204/213/214)
    var_ph: tuple[float, float, float] | None = None
    v_ph: tuple[float, float, float] | None = None  # line-to-neutral voltage of phases A, B, C


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A device as the gateway sees it: the latest measurement and whether it can be trusted now."""

    device_id: str
    measurement: Measurement | None
    stale: bool
    reason: str | None
    last_success: float | None  # UNIX seconds of the last good read


@dataclass(frozen=True, slots=True)
class DerLimit:
    """One DER's operating envelope: it may export up to ``export_w`` and import up to ``import_w`` (both >= 0)."""

    der_id: str
    export_w: float
    import_w: float


@dataclass(frozen=True, slots=True)
class EnvelopeCertificate:
    """What the AC power flow saw with every DER at its limit at once (export and import checks, worst of both)."""

    vmax_pu: float
    vmin_pu: float
    max_loading: float  # fraction of rating of the most loaded line or transformer
    margin_pu: float  # voltage margin kept inside [vmin, vmax]
    method: str
    ac_solves: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """Per-DER limits valid over ``[valid_from, valid_until)`` (UNIX s), issued by ``issuer`` with ``sequence``.

    ``certified`` False means the configured default envelope, published because the twin could not certify;
    ``reason`` says why. ``certificate`` is None exactly when not certified. ``connection_points``: limits on the
    net export/import at connection points (``DerLimit.der_id`` naming the point), when the envelope has them.
    """

    issuer: str
    sequence: int
    valid_from: float
    valid_until: float
    limits: tuple[DerLimit, ...]
    certified: bool
    certificate: EnvelopeCertificate | None = None
    reason: str | None = None
    connection_points: tuple[DerLimit, ...] = ()

    def limit(self, der_id: str) -> DerLimit | None:
        return next((lim for lim in self.limits if lim.der_id == der_id), None)


class Authority(StrEnum):
    """Who asks. Their rank is configuration (dispatch), not this order."""

    GRID_OPERATOR = "grid-operator"
    AGGREGATOR = "aggregator"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Command:
    """An authenticated request for one DER's active power: ``target_w`` (export positive) over its validity.

    Built only by an uplink after it verified the signature, issuer, expiry and replay window; ``command_id``
    is the issuer's id, unique per issuer. ``source`` names the channel (``mqtt``, ``openadr``, ``local``).
    """

    command_id: str
    issuer: str
    authority: Authority
    der_id: str
    target_w: float
    valid_from: float
    valid_until: float
    source: str
    received_at: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Setpoint:
    """What dispatch decided to write to a DER: ``w`` after clamping, ``requested_w`` before, and what bound it.

    ``binding`` is ``"command"`` when nothing clamped, else the constraint that did (e.g. ``"envelope-export"``,
    ``"customer-import"``, ``"authority:grid-operator"``).
    """

    der_id: str
    w: float
    requested_w: float
    binding: str
    command_id: str | None
    authority: Authority | None
    valid_until: float
