"""Clamping one DER's power to the limits that bind it: customer limits, the envelope in force.

A :class:`Bound` is one source's limits on one DER (magnitudes: it may export up to ``export_w`` and import
up to ``import_w``). :func:`clamp` keeps a value inside every bound at once; the most restrictive bound on the
side the value is on wins and is named (``"customer-export"``, ``"envelope-import"``, ...). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bound:
    """``source`` allows a DER ``[-import_w, export_w]`` W until ``valid_until`` (UNIX s; inf: no expiry)."""

    source: str
    export_w: float
    import_w: float
    valid_until: float = math.inf

    def __post_init__(self) -> None:
        for name in ("export_w", "import_w"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.source} {name} {value!r} is not a finite magnitude >= 0")


@dataclass(frozen=True, slots=True)
class Clamped:
    """``w`` inside every bound; ``binding`` names the bound that moved it (``None``: the value was inside)."""

    w: float
    binding: str | None
    export_w: float  # the tightest export limit over all bounds
    import_w: float  # the tightest import limit over all bounds


def clamp(value: float, bounds: Sequence[Bound]) -> Clamped:
    """``value`` (W, export positive) clamped to ``[-min import_w, min export_w]`` over ``bounds``.

    On a tie the earlier bound in ``bounds`` is named, so list the more fundamental ones first (the customer's
    connection agreement before the envelope). With no bounds the value passes unchanged.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot clamp {value!r}: not a finite power")
    export_w = min((b.export_w for b in bounds), default=math.inf)
    import_w = min((b.import_w for b in bounds), default=math.inf)
    if value > export_w:
        first = next(b for b in bounds if b.export_w == export_w)
        return Clamped(export_w, f"{first.source}-export", export_w, import_w)
    if value < -import_w:
        first = next(b for b in bounds if b.import_w == import_w)
        return Clamped(0.0 - import_w, f"{first.source}-import", export_w, import_w)  # never -0.0
    return Clamped(value, None, export_w, import_w)
