"""The ``max-total`` policy: the largest total export (import), each DER within its rating, AC-certified.

Owns :func:`max_total`. A sequential LP, both directions in the same batches:

1. at the iterate ``x`` (first: every DER at 0 W), one batched AC solve of ``x`` and ``x`` plus one step per
   DER gives every constrained quantity and its sensitivity to each DER (:func:`gateway.twin._sensitivity.jacobian`);
2. an LP (HiGHS, through ``scipy.optimize.linprog``) maximises the total over ``0 <= x_i <= rating_i`` with
   those quantities linearised at ``x``, kept inside the limits minus margins (rows that cannot bind inside
   the box are dropped); its answer is the next iterate. The first LP's answer is the linear estimate;
3. it stops when the total changes by less than ``rtol`` or after ``MAX_ITERATIONS``; then the AC bracket of
   :mod:`gateway.twin._search` scales the last iterate (``alpha * x``, inside the ratings) to the largest
   ``alpha`` that passes, to ``rtol``. The published point is that one, or the best iterate that passed AC
   if its total is larger.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gateway.twin._criteria import (
    DIRECTIONS,
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
from gateway.twin._errors import TwinError
from gateway.twin._flow import FlowResult, PowerFlow
from gateway.twin._outcome import Outcome, Work
from gateway.twin._search import bracket
from gateway.twin._sensitivity import jacobian

FloatArray = NDArray[np.float64]

MAX_ITERATIONS = 5

#: A point an AC solve passed: (total W, DER outputs (n,), the batch, its row).
Passed = tuple[float, FloatArray, FlowResult, int]


def _lp(x0: FloatArray, jac: FloatArray, at: FloatArray, rating: FloatArray, lower: FloatArray,
        upper: FloatArray) -> FloatArray | None:
    """Maximise ``sum(x)``, ``0 <= x <= rating``, ``lower <= x0 + jac (x - at) <= upper``; None if infeasible.

    Solved in fractions of rating (``y = x / rating``) so the LP is well scaled; DERs rated 0 W stay at 0."""
    from scipy.optimize import linprog  # HiGHS; scipy.optimize takes 0.3 s to import: only when this policy runs

    live = rating > 0
    result = np.zeros_like(rating)
    if not live.any():
        return result
    r = rating[live]
    a = jac[:, live] * r[None, :]
    offset = x0 - a @ (at[live] / r)
    reach_hi = offset + np.clip(a, 0, None).sum(axis=1)
    reach_lo = offset + np.clip(a, None, 0).sum(axis=1)
    valid = np.isfinite(x0)
    up = valid & np.isfinite(upper) & (reach_hi > upper)
    down = valid & np.isfinite(lower) & (reach_lo < lower)
    a_ub = np.concatenate([a[up], -a[down]])
    b_ub = np.concatenate([upper[up] - offset[up], offset[down] - lower[down]])
    if not a_ub.shape[0]:
        result[live] = r
        return result
    cost = -r / r.max()
    box = np.stack([np.zeros_like(r), np.ones_like(r)], axis=1)
    sol = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=box, method="highs")
    if sol.status != 0:
        return None
    result[live] = np.clip(sol.x, 0.0, 1.0) * r
    return result


def max_total(engine: PowerFlow, check: Check, rating: FloatArray, *, rtol: float, max_batches: int,
              work: Work) -> tuple[Outcome, Outcome]:
    """Export and import :class:`Outcome` of the ``max-total`` policy (see the module docstring).

    ``rating`` ``(n,)`` W, finite (the search cap for DERs without a rating)."""
    n = rating.size
    lower, upper = bounds(engine, check)
    total_load = float(np.abs(check.load_p_w).sum(axis=1).max())
    step = np.maximum(np.minimum(max(0.02 * total_load, 1e3) / n, 0.5 * rating), 1.0)  # 1 W for 0 W ratings
    x = np.zeros((2, n))
    linear: list[FloatArray | None] = [None, None]
    best: list[Passed | None] = [None, None]
    reason: list[str | None] = [None, None]
    open_ = [True, True]
    converged = [False, False]
    first: tuple[FlowResult, list[int]] | None = None  # the first batch: every DER at 0 W in both directions
    eye = np.eye(n)
    for _ in range(MAX_ITERATIONS):
        dirs = [d for d in (0, 1) if open_[d]]
        if not dirs:
            break
        # Step down from DERs at their rating, up from the others.
        steps = {d: np.where(x[d] + step > rating, -step, step) for d in dirs}
        points = np.concatenate([np.vstack([x[d], x[d] + eye * steps[d]]) for d in dirs])
        direction = np.repeat(np.array(dirs, dtype=np.intp), n + 1)
        res = solve_rows(engine, check, direction, SIGN[direction, None] * points)
        work.add(points.shape[0])
        if first is None:
            first = (res, [0, n + 1])
        margins = judge(check, res)
        obs = observables(engine, res)
        for k, d in enumerate(dirs):
            base = k * (n + 1)
            if passes(margins[base : base + 1])[0]:
                total, kept = float(x[d].sum()), best[d]
                if kept is None or total > kept[0]:
                    best[d] = (total, x[d].copy(), res, base)
            elif best[d] is None:  # the very first point, every DER at 0 W, fails
                reason[d] = "fails with every DER at 0 W: " + failure(engine, check, res, base, margins[base])
                open_[d] = False
                continue
            jac = jacobian(obs[base], obs[base + 1 : base + n + 1], steps[d])
            nxt = _lp(obs[base], jac, x[d], rating, lower, upper)
            if nxt is None:
                open_[d] = False
                continue
            if linear[d] is None:
                linear[d] = nxt
            change = abs(nxt.sum() - x[d].sum())
            x[d] = nxt
            if change <= rtol * max(nxt.sum(), 1e-9):
                converged[d] = True
                open_[d] = False
    if first is None:  # not reached: MAX_ITERATIONS >= 1 and both directions are open in the first iteration
        raise TwinError("max-total: no AC batch was solved")
    scaled, done = _scale(engine, check, x, rating, best, first, rtol=rtol, max_batches=max_batches, work=work)
    outcomes = []
    for d in (0, 1):
        lin: FloatArray = np.full(n, np.nan) if linear[d] is None else np.asarray(linear[d], dtype=np.float64)
        kept = best[d]
        if kept is None:
            outcomes.append(Outcome(np.zeros(n), lin, False, reason[d] or f"{DIRECTIONS[d]}: no AC solve passed"))
            continue
        found = scaled[d]
        if found is not None and found[0] >= kept[0]:
            kept = found
        _, point, res, row = kept
        margins = judge(check, res)[row]
        binding = "rating" if np.all(point >= rating) else describe(engine, res, row, int(np.argmax(margins)))
        met = converged[d] and done[d]  # the ray closed to rtol; the kept point is at least its lower end
        outcomes.append(Outcome(point.copy(), lin, True, None, worst_values(res, row), binding, bool(met)))
    return outcomes[0], outcomes[1]


def _scale(engine: PowerFlow, check: Check, x: FloatArray, rating: FloatArray, best: list[Passed | None],
           first: tuple[FlowResult, list[int]], *, rtol: float, max_batches: int,
           work: Work) -> tuple[list[Passed | None], list[bool]]:
    """Per direction whose 0 W point passed, the largest ``alpha * x[d]`` (inside the ratings) an AC solve
    passes, bracketed to ``rtol``; and whether the bracket closed."""
    scaled: list[Passed | None] = [None, None]
    done = [False, False]
    res0, rows0 = first
    dirs = np.array([d for d in (0, 1) if best[d] is not None and x[d].sum() > 0], dtype=np.intp)
    if not dirs.size:
        return scaled, done
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha_max = np.array([np.where(x[d] > 0, rating / x[d], np.inf).min() for d in dirs])
    margins0 = judge(check, res0)[np.take(rows0, dirs)]

    def evaluate(line: NDArray[np.intp], alpha: FloatArray) -> tuple[FlowResult, FloatArray]:
        d = dirs[line]
        res = solve_rows(engine, check, d, SIGN[d, None] * np.minimum(alpha[:, None] * x[d], rating[None, :]))
        return res, judge(check, res)

    found = bracket(evaluate, np.minimum(1.0, alpha_max), alpha_max, margins0, np.take(rows0, dirs), [res0],
                    rtol=rtol, atol=np.full(dirs.size, 1e-9), max_batches=max_batches)
    work.add(found.solves, len(found.results) - 1)
    for m, d in enumerate(dirs):
        alpha = float(found.lo[m])
        batch, row = found.lo_ref[m]
        if alpha > 0 and batch >= 0:
            point = np.minimum(alpha * x[d], rating)
            scaled[d] = (float(point.sum()), point, found.results[batch], int(row))
        done[d] = bool(found.done[m])
    return scaled, done
