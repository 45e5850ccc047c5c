"""The ``equal`` and ``proportional`` policies: the largest common level every DER can take at once.

Owns :func:`along`. ``equal``: every DER at the same W (each capped at its rating), the level in W;
``proportional``: every DER at the same fraction of its rating, the level a fraction in ``[0, 1]``. Both
directions are searched in the same batches:

1. one batched AC solve of six scenarios (each direction at level 0 and two small steps, ``s`` and ``2 s``)
   gives every constrained quantity along the policy's direction: the linear estimate from 0 and ``s``
   (:func:`gateway.twin._sensitivity.linear_step`, reported as ``linear_w``) and the quadratic one from all three
   (:func:`gateway.twin._sensitivity.quadratic_estimate`: voltages fitted to the 4th power, loadings squared),
   which the search starts from, with how uncertain it is. For ``equal`` the same batch solves the line's kinks
   (each DER rating below the largest, where that DER stops rising): passing need not be monotone across them,
   and the quadratic goes through the levels around the first failing one, in the mean DER output (both
   estimates: the level is its inverse);
2. :func:`gateway.twin._search.bracket` corrects it with AC solves until the largest passing level is bracketed
   to ``rtol``: typically one batch of two levels per direction. The answer is the highest level an AC solve
   passed.
"""

from __future__ import annotations

import math

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
    fit_powers,
    judge,
    observables,
    passes,
    solve_rows,
    worst_values,
)
from gateway.twin._flow import FlowResult, PowerFlow
from gateway.twin._outcome import Outcome, Work
from gateway.twin._search import bracket
from gateway.twin._sensitivity import linear_step, quadratic_estimate

#: Finite-difference levels per direction in the first batch: 0, ``s`` and ``2 s``.
FD = 3

FloatArray = NDArray[np.float64]


def profile(equal: bool, rating: FloatArray, level: FloatArray) -> FloatArray:
    """DER outputs ``(R, n)`` (magnitudes, W) at ``level`` ``(R,)`` along the policy's direction."""
    if equal:
        return np.minimum(level[:, None], rating[None, :])
    result: FloatArray = level[:, None] * rating[None, :]
    return result


def _mean_capped(ratings: list[float], level: float) -> float:
    """``equal``: the mean DER output at ``level``, each capped at its rating."""
    return sum(min(level, r) for r in ratings) / len(ratings)


def _uncap(ratings: list[float], mean: float) -> float:
    """``equal``: the level whose mean capped output is ``mean`` (inverse of :func:`_mean_capped`; ``ratings``
    sorted)."""
    n, below, lower = len(ratings), 0.0, 0.0
    for k, r in enumerate(ratings):
        # Between the ratings r[k-1] and r[k], mean(t) = (sum(r[:k]) + (n - k) t) / n.
        level = (n * mean - below) / (n - k)
        if lower <= level <= r:
            return level
        below, lower = below + r, r
    return ratings[-1]


def _nodes(fd: list[float], kinks: list[float], ok: list[bool], direction: int) -> list[int]:
    """Rows of the first batch (``FD`` finite-difference levels per direction, then the kinks of each direction)
    the quadratic estimate of ``direction`` goes through, the row it starts from first: the last level passing
    and the two around it (the first failing one among them), or the last three levels when none fails."""
    k = len(kinks)
    rows = [direction * FD + i for i in range(FD)] + [2 * FD + direction * k + i for i in range(k)]
    points = list(zip(fd + kinks, rows, strict=True))
    if k:
        points = []
        for t, row in sorted(zip(fd + kinks, rows, strict=True), key=lambda p: p[0]):  # stable: a kink at s once
            if not points or t > points[-1][0]:
                points.append((t, row))
    n = len(points)
    j = next((i for i, (_, row) in enumerate(points) if not ok[row]), n)
    if n < 3:  # a line of zero length (every rating 0 W): no estimate (NaN)
        pick = [0, 0, 0]
    elif j >= n:  # nothing fails: extrapolate from the last three
        pick = [n - 1, n - 2, n - 3]
    elif j <= 1:
        pick = [0, 1, 2]
    else:
        pick = [j - 1, j, j - 2]
    return [points[i][1] for i in pick]


def along(engine: PowerFlow, check: Check, *, equal: bool, rating: FloatArray, rated: NDArray[np.bool_],
          rtol: float, max_batches: int, work: Work) -> tuple[Outcome, Outcome]:
    """Export and import :class:`Outcome` of ``equal`` (``equal`` True) or ``proportional``.

    ``rating`` ``(n,)`` W, finite: the DERs' ratings, the search cap for those without one (``rated`` False).
    """
    ratings = sorted(rating.tolist())
    t_max = ratings[-1] if equal else 1.0
    total_load = float(np.abs(check.load_p_w).sum(axis=1).max())
    step_w = max(0.02 * total_load, 1e3)  # the finite-difference step, all DERs together
    step = min(step_w / len(ratings) if equal else step_w / sum(ratings), 0.5 * t_max)
    # equal: the ratings below t_max are the kinks of the line (a DER stops rising there); passing need not be
    # monotone across them on an unbalanced feeder, so they are solved in the first batch and seed the search.
    kinks = sorted({r for r in ratings if r < t_max}) if equal else []
    k = len(kinks)
    # Rows: export at 0, s, 2s; import at 0, s, 2s; then the kinks of each direction.
    fd = [i * step for i in range(FD)]
    direction = np.array([EXPORT] * FD + [IMPORT] * FD + [EXPORT] * k + [IMPORT] * k, dtype=np.intp)
    level = np.array(fd + fd + kinks + kinks)
    sens = solve_rows(engine, check, direction, SIGN[direction, None] * profile(equal, rating, level))
    work.add(direction.size)
    x = observables(engine, sens)
    lower, upper = bounds(engine, check)
    # Linear in the mean output (equal: DERs stop at their rating, so the level is the mean's inverse).
    unit = _mean_capped(ratings, step) if equal else step
    u_lin, _ = linear_step(x[[0, FD]], x[[1, FD + 1]], np.array([unit, unit]), lower, upper)
    t_lin = [_uncap(ratings, u) if equal and np.isfinite(u) else u for u in u_lin.tolist()]
    margins = judge(check, sens)
    ok = passes(margins).tolist()
    nodes = [_nodes(fd, kinks, ok, d) for d in (EXPORT, IMPORT)]
    rows = np.array(nodes, dtype=np.intp)
    # In the mean output too: smooth across the kinks, where the level's own scale bends. Where the check itself
    # fails (no numeric guard: within a few W of the limit it would move the estimate).
    u = level[rows]
    if equal and float(u.max()) > ratings[0]:  # some DER capped at a node
        u = np.array([[_mean_capped(ratings, t) for t in r] for r in u.tolist()])
    u_fit, u_spread = quadratic_estimate(u, x[rows], *bounds(engine, check, 0.0), fit_powers(engine))
    guess, spread = [], []
    for fit, off, lin in zip(u_fit.tolist(), u_spread.tolist(), u_lin.tolist(), strict=True):
        if not math.isfinite(fit):  # no quadratic estimate: the linear one, tried as such (spread NaN)
            fit, off = lin, math.nan
        t = (_uncap(ratings, fit) if equal else fit) if math.isfinite(fit) else t_max
        guess.append(min(max(t, 1e-9 * t_max), t_max))
        # As a share of the level, which moves more than the mean output where DERs are capped.
        wide = (_uncap(ratings, fit * (1.0 + off)) if equal else fit * (1.0 + off)) / t - 1.0 if t > 0 else math.nan
        spread.append(wide if math.isfinite(off) else math.nan)
    seed_rows = np.array([[d * FD + i for i in range(1, FD)] + [2 * FD + d * k + i for i in range(k)]
                          for d in (EXPORT, IMPORT)], dtype=np.intp).reshape(2, FD - 1 + k)
    seed = (level[seed_rows], margins[seed_rows], seed_rows)

    def evaluate(line: NDArray[np.intp], lv: FloatArray) -> tuple[FlowResult, FloatArray]:
        res = solve_rows(engine, check, line, SIGN[line, None] * profile(equal, rating, lv))
        return res, judge(check, res)

    base = np.array([0, FD], dtype=np.intp)
    found = bracket(evaluate, np.array(guess), np.full(2, t_max), margins[base], base, [sens], rtol=rtol,
                    atol=np.full(2, 1e-9 * t_max), max_batches=max_batches, seed=seed, spread=np.array(spread))
    work.add(found.solves, len(found.results) - 1)
    outcomes = []
    for d in (EXPORT, IMPORT):
        linear = profile(equal, rating, np.array([min(t_lin[d], t_max)]))[0]
        if not ok[FD * d]:
            reason = "fails with every DER at 0 W: " + failure(engine, check, sens, FD * d, margins[FD * d])
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
