"""Fail-safe layer 1: which envelope dispatch clamps to now, the certified one or the configured default.

The twin's envelope is used only while it is certified, inside its validity and every device feeding the twin
is fresh. Otherwise (none yet, a twin error, uncertified, expired, not yet valid, stale devices, malformed
limits) the default envelope from ``[dispatch.default_envelope]`` is in force, and the reason says why. A DER
the certified envelope does not cover gets its default limits. Pure: the caller passes the time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.dispatch._clamp import Bound
from gateway.dispatch._policy import DispatchPolicy
from gateway.types import Envelope


@dataclass(frozen=True, slots=True)
class InForce:
    """The envelope in force: ``default`` True means the configured default, and ``reason`` says why."""

    envelope: Envelope
    default: bool
    reason: str | None

    def bound(self, der_id: str, policy: DispatchPolicy) -> Bound:
        """The envelope's limits on ``der_id`` as a bound (``"envelope"`` or ``"default-envelope"``)."""
        lim = None if self.default else self.envelope.limit(der_id)
        if lim is None:
            fallback = policy.default_limits[der_id]
            return Bound("default-envelope", fallback.export_w, fallback.import_w)
        return Bound("envelope", lim.export_w, lim.import_w, self.envelope.valid_until)

    @property
    def key(self) -> tuple[str, int, bool, str | None]:
        """What identifies it for "has the envelope in force changed?"."""
        return (self.envelope.issuer, self.envelope.sequence, self.default, self.reason)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _why_not(envelope: Envelope | None, now: float, problem: str | None, stale: Mapping[str, str]) -> str | None:
    if envelope is None:
        return problem or "no certified envelope yet"
    if not envelope.certified or envelope.certificate is None:
        return f"uncertified envelope: {envelope.reason or 'no reason given'}"
    if now < envelope.valid_from:
        return f"envelope {envelope.issuer}#{envelope.sequence} not valid until {_iso(envelope.valid_from)}"
    if now >= envelope.valid_until:
        return f"envelope {envelope.issuer}#{envelope.sequence} expired at {_iso(envelope.valid_until)}"
    for lim in envelope.limits:
        if not all(math.isfinite(v) and v >= 0 for v in (lim.export_w, lim.import_w)):
            return f"envelope {envelope.issuer}#{envelope.sequence} has malformed limits for {lim.der_id}"
    if stale:
        return "stale devices: " + ", ".join(f"{d} ({why})" for d, why in sorted(stale.items()))
    return None


def envelope_in_force(envelope: Envelope | None, now: float, policy: DispatchPolicy, *,
                      problem: str | None = None, stale: Mapping[str, str] | None = None) -> InForce:
    """The certified ``envelope`` if it may be used at ``now``, else the default envelope and why.

    ``problem``: why there is no envelope (e.g. ``"twin error: ..."``), used when ``envelope`` is None.
    ``stale``: device id -> stale reason for every device that is stale now.
    """
    reason = _why_not(envelope, now, problem, stale or {})
    if reason is None and envelope is not None:
        return InForce(envelope, False, None)
    default = Envelope(issuer=policy.default_issuer, sequence=0, valid_from=0.0, valid_until=math.inf,
                       limits=tuple(policy.default_limits.values()), certified=False, reason=reason)
    return InForce(default, True, reason)
