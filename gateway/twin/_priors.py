"""Pseudo-measurements of unmeasured loads: :class:`LoadPriors` and :func:`load_priors`.

Owns what the state estimator assumes about a load nobody measures. A prior is a Gaussian: a mean and a standard
deviation per load, for P and Q (W, var, positive = consumption, the power actually drawn). The estimator treats it
as a measurement with that sigma, so the uncertainty it reports for such a load is only as honest as this sigma.

:func:`load_priors` builds them from the feeder: a load with an interval ``[p_min_w, p_max_w]`` is read as
mean +- 2 sigma for P (the interval holds ~95 %), its Q following at the nominal power factor; any other load has
its nominal power as the mean and ``fraction`` of its nominal apparent power as the sigma of P. Q's sigma is
``fraction`` of the apparent power at the mean for every load. Every sigma is at least ``floor`` (W/var), so a
load of nominal 0 still has a usable, positive sigma. Replace them with
forecasts when there are any (build :class:`LoadPriors` directly; rows may be scenarios).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from gateway.twin._errors import FeederIssue
from gateway.twin._feeder import FLOAT, Feeder
from gateway.twin._measurements import MeasurementError, Reading

#: Default sigma of an unmeasured load without an interval, as a fraction of its nominal apparent power.
DEFAULT_FRACTION = 0.5
#: Default lower bound of every prior sigma, W (var).
DEFAULT_FLOOR = 1.0


@dataclass(frozen=True, slots=True)
class LoadPriors:
    """Per load, the pseudo-measurement of P (W) and Q (var): values ``(1, n_load)`` (every scenario) or
    ``(S, n_load)`` (one row per scenario), in feeder order; every value finite, every sigma > 0."""

    p: Reading
    q: Reading

    def check(self, feeder: Feeder, scenarios: int) -> None:
        """Raise :class:`MeasurementError` unless these priors fit ``feeder`` and ``scenarios`` rows."""
        issues: list[FeederIssue] = []
        n = len(feeder.loads)
        for field, r in (("prior_p", self.p), ("prior_q", self.q)):
            if r.value.ndim != 2 or r.value.shape[1] != n or r.value.shape[0] not in (1, scenarios):
                issues.append(FeederIssue("load", field, (), f"expected shape (1, {n}) or ({scenarios}, {n}), "
                                                            f"got {r.value.shape}"))
                continue
            bad = ~np.isfinite(r.value) | ~(np.isfinite(r.sigma) & (r.sigma > 0))
            if bad.any():
                names = tuple(str(x) for x in feeder.loads.name[bad.any(axis=0)])
                issues.append(FeederIssue("load", field, names, "a prior needs a finite value and a finite sigma > 0"))
        if issues:
            raise MeasurementError(issues)


def load_priors(feeder: Feeder, *, fraction: float = DEFAULT_FRACTION, floor: float = DEFAULT_FLOOR,
                p_w: ArrayLike | None = None, q_var: ArrayLike | None = None) -> LoadPriors:
    """Priors of every load of ``feeder`` (see the module docstring). ``p_w``/``q_var`` ``(n_load,)`` replace the
    nominal powers as means (e.g. a forecast), keeping the sigma rule."""
    if not (math.isfinite(fraction) and fraction > 0 and math.isfinite(floor) and floor > 0):
        raise MeasurementError((FeederIssue("load", "prior", (), f"fraction and floor must be numbers > 0, got "
                                                                 f"{fraction!r}, {floor!r}"),))
    loads = feeder.loads
    p = loads.p_w if p_w is None else np.asarray(p_w, dtype=FLOAT)
    q = loads.q_var if q_var is None else np.asarray(q_var, dtype=FLOAT)
    if p.shape != loads.p_w.shape or q.shape != loads.p_w.shape:
        raise MeasurementError((FeederIssue("load", "prior", (), f"p_w and q_var must have shape "
                                                                 f"{loads.p_w.shape}"),))
    bounded = np.isfinite(loads.p_min_w) & np.isfinite(loads.p_max_w)
    with np.errstate(divide="ignore", invalid="ignore"):
        pf = np.where(p != 0, q / p, 0.0)
    mean_p = np.where(bounded, 0.5 * (loads.p_min_w + loads.p_max_w), p)
    mean_q = np.where(bounded, pf * mean_p, q)
    apparent = np.hypot(mean_p, mean_q)
    sigma_p = np.where(bounded, 0.25 * (loads.p_max_w - loads.p_min_w), fraction * apparent)
    sigma_p = np.maximum(sigma_p, floor)
    sigma_q = np.maximum(fraction * apparent, floor)
    priors = LoadPriors(Reading(mean_p[None, :], sigma_p[None, :]), Reading(mean_q[None, :], sigma_q[None, :]))
    priors.check(feeder, 1)
    return priors
