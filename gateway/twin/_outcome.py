"""What an envelope policy hands back for one direction, and the AC work it spent (internal to the envelope).

Owns :class:`Outcome` and :class:`Work`, shared by the policies (:mod:`gateway.twin._along`,
:mod:`gateway.twin._maxtotal`) and read by :func:`gateway.twin.certify_envelope`, which turns them into the
published envelope and its certificate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(slots=True)
class Outcome:
    """One direction's answer: the limits (W, magnitudes) an AC solve passed, the linear first estimate, whether
    it is certified (else ``reason``), the worst ``(vmax_pu, vmin_pu, max_loading)`` that solve saw, what stops
    the limits going higher and whether the search closed to its tolerance."""

    limit_w: FloatArray
    linear_w: FloatArray
    certified: bool
    reason: str | None
    values: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    binding: str = ""
    tolerance_met: bool = False


@dataclass(slots=True)
class Work:
    """AC scenarios solved and batches (``solve_batch`` calls) spent."""

    solves: int = 0
    batches: int = 0

    def add(self, scenarios: int, batches: int = 1) -> None:
        self.solves += scenarios
        self.batches += batches
