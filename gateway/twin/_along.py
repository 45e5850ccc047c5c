"""The ``equal`` and ``proportional`` policies: the largest common level every DER can take at once.

Owns :func:`along`. ``equal``: every DER at the same W (each capped at its rating), the level in W;
``proportional``: every DER at the same fraction of its rating, the level a fraction in ``[0, 1]``. Both
directions are searched in the same batches:

1. one batched AC solve of four scenarios (each direction at level 0 and at one small step) gives every
   constrained quantity and its slope along the policy's direction: the linear first estimate
   (:func:`gateway.twin._sensitivity.linear_step`). For ``equal`` the same batch solves the line's kinks (each
   DER rating below the largest, where that DER stops rising): passing need not be monotone across them;
2. :func:`gateway.twin._search.bracket` corrects it with a few batches of AC solves until the largest passing
   level is bracketed to ``rtol``. The answer is the highest level an AC solve passed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gateway.twin._criteria import (
    EXPORT,
    IMPORT,
    SIGN,
    Check,
    bounds,
    describe,
    failure,
    judge,
    observables,
    passes,
    solve_rows,
    worst_values,
)
from gateway.twin._flow import FlowResult, PowerFlow
from gateway.twin._outcome import Outcome, Work
from gateway.twin._search import bracket
from gateway.twin._sensitivity import linear_step

FloatArray = NDArray[np.float64]


def profile(equal: bool, rating: FloatArray, level: FloatArray) -> FloatArray:
    """DER outputs ``(R, n)`` (magnitudes, W) at ``level`` ``(R,)`` along the policy's direction."""
    if equal:
        return np.minimum(level[:, None], rating[None, :])
    result: FloatArray = level[:, None] * rating[None, :]
    return result


def _mean_capped(rating: FloatArray, level: float) -> float:
    """``equal``: the mean DER output at ``level``, each capped at its rating."""
    return float(np.minimum(level, rating).mean())


def _uncap(rating: FloatArray, mean: float) -> float:
    """``equal``: the level whose mean capped output is ``mean`` (inverse of :func:`_mean_capped`)."""
    r = np.sort(rating)
    n = r.size
    # Between r[k-1] and r[k], mean(t) = (sum(r[:k]) + (n - k) t) / n.
    below = np.concatenate([[0.0], np.cumsum(r)[:-1]])
    level = (n * mean - below) / (n - np.arange(n))
    lower = np.concatenate([[0.0], r[:-1]])
    inside = (level >= lower) & (level <= r)
    return float(level[inside][0]) if inside.any() else float(r[-1])


def along(engine: PowerFlow, check: Check, *, equal: bool, rating: FloatArray, rated: NDArray[np.bool_],
          rtol: float, max_batches: int, work: Work) -> tuple[Outcome, Outcome]:
    """Export and import :class:`Outcome` of ``equal`` (``equal`` True) or ``proportional``.

    ``rating`` ``(n,)`` W, finite: the DERs' ratings, the search cap for those without one (``rated`` False).
    """
    t_max = float(rating.max()) if equal else 1.0
    total_load = float(np.abs(check.load_p_w).sum(axis=1).max())
    step_w = max(0.02 * total_load, 1e3)  # the finite-difference step, all DERs together
    step = min(step_w / rating.size if equal else step_w / float(rating.sum()), 0.5 * t_max)
    # equal: the ratings below t_max are the kinks of the line (a DER stops rising there); passing need not be
    # monotone across them on an unbalanced feeder, so they are solved in the first batch and seed the search.
    kinks = np.unique(rating[rating < t_max]) if equal else np.zeros(0)
    k = kinks.size
    direction = np.concatenate([[EXPORT, EXPORT, IMPORT, IMPORT], np.repeat([EXPORT, IMPORT], k)]).astype(np.intp)
    level = np.concatenate([[0.0, step, 0.0, step], kinks, kinks])
    sens = solve_rows(engine, check, direction, SIGN[direction, None] * profile(equal, rating, level))
    work.add(direction.size)
    x = observables(engine, sens)
    lower, upper = bounds(engine, check)
    # Linear in the mean output (equal: DERs stop at their rating, so the level is the mean's inverse).
    unit = _mean_capped(rating, step) if equal else step
    u_lin, _ = linear_step(x[[0, 2]], x[[1, 3]], np.array([unit, unit]), lower, upper)
    t_lin = np.array([_uncap(rating, u) if equal and np.isfinite(u) else u for u in u_lin])
    margins = judge(check, sens)
    margins0 = margins[[0, 2]]
    guess = np.clip(np.where(np.isfinite(t_lin), t_lin, t_max), 1e-3 * t_max, t_max)
    seed = (np.stack([kinks, kinks]), margins[4:].reshape(2, k, 3), 4 + np.arange(2 * k).reshape(2, k))

    def evaluate(line: NDArray[np.intp], lv: FloatArray) -> tuple[FlowResult, FloatArray]:
        res = solve_rows(engine, check, line, SIGN[line, None] * profile(equal, rating, lv))
        return res, judge(check, res)

    found = bracket(evaluate, guess, np.full(2, t_max), margins0, np.array([0, 2], dtype=np.intp), [sens],
                    rtol=rtol, atol=np.full(2, 1e-9 * t_max), max_batches=max_batches, seed=seed)
    work.add(found.solves, len(found.results) - 1)
    outcomes = []
    for d in (EXPORT, IMPORT):
        linear = profile(equal, rating, np.array([min(t_lin[d], t_max)]))[0]
        if not passes(margins0[d : d + 1])[0]:
            reason = "fails with every DER at 0 W: " + failure(engine, check, sens, 2 * d, margins0[d])
            outcomes.append(Outcome(np.zeros_like(rating), linear, False, reason))
            continue
        lo = float(found.lo[d])
        batch, row = found.lo_ref[d]
        res = found.results[batch]
        hb, hr = found.hi_ref[d]
        if lo >= t_max:
            # Every DER is at its rating, or (unrated) at the level searched up to.
            binding = "rating" if rated.all() else "search bound (no rating)"
        elif hb < 0:
            binding = "search not closed (no failing level found)"
        elif np.isfinite(found.margins_hi[d]).all():
            binding = describe(engine, found.results[hb], hr, int(np.argmax(found.margins_hi[d])))
        else:
            binding = "non-convergence"
        outcomes.append(Outcome(profile(equal, rating, np.array([lo]))[0], linear, True, None,
                                worst_values(res, row), binding, bool(found.done[d])))
    return outcomes[0], outcomes[1]
