"""The ``max-total`` policy: the largest total export (import), each DER within its rating, AC-certified.

Owns :func:`max_total`. A sequential LP, both directions in the same batches:

1. at the iterate ``x`` (first: every DER at 0 W), one batched AC solve of ``x`` and ``x`` plus one step per
   DER gives every constrained quantity and its sensitivity to each DER (:func:`gateway.twin._sensitivity.jacobian`);
2. an LP (HiGHS, through ``scipy.optimize.linprog``) maximises the total over ``0 <= x_i <= rating_i`` with
   those quantities linearised at ``x``, kept inside the limits minus margins (rows that cannot bind inside
   the box are dropped); its answer is the next iterate. The first LP's answer is the linear estimate;
3. it stops when the total changes by less than ``rtol`` or after ``MAX_ITERATIONS``; then one batch of AC
   solves at ``alpha * x`` for the back-off factors ``BACKOFF`` publishes the largest passing one (or the
   best iterate that passed, if larger).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linprog

from gateway.twin._criteria import DIRECTIONS, Check, bounds, describe, judge, observables, passes, solve_rows
from gateway.twin._envelope import SIGN, EnvelopeRequest, Outcome, Work, failure, worst_values
from gateway.twin._flow import FlowResult, PowerFlow
from gateway.twin._sensitivity import jacobian

FloatArray = NDArray[np.float64]

MAX_ITERATIONS = 4
#: Multiples of the last iterate the final AC batch tries (``rtol`` steps first, then coarser).
BACKOFF_RTOL = np.array([0.0, 1.0, 2.5, 6.0])
BACKOFF = np.array([0.98, 0.95, 0.9, 0.8])


def _lp(x0: FloatArray, jac: FloatArray, at: FloatArray, rating: FloatArray, lower: FloatArray,
        upper: FloatArray) -> FloatArray | None:
    """Maximise ``sum(x)``, ``0 <= x <= rating``, ``lower <= x0 + jac (x - at) <= upper``; None if infeasible.

    Solved in fractions of rating (``y = x / rating``) so the LP is well scaled."""
    a = jac * rating[None, :]
    offset = x0 - a @ (at / rating)
    reach_hi = offset + np.clip(a, 0, None).sum(axis=1)
    reach_lo = offset + np.clip(a, None, 0).sum(axis=1)
    valid = np.isfinite(x0)
    up = valid & np.isfinite(upper) & (reach_hi > upper)
    down = valid & np.isfinite(lower) & (reach_lo < lower)
    a_ub = np.concatenate([a[up], -a[down]])
    b_ub = np.concatenate([upper[up] - offset[up], offset[down] - lower[down]])
    cost = -rating / rating.max()
    box = np.stack([np.zeros_like(rating), np.ones_like(rating)], axis=1)
    if not a_ub.shape[0]:
        return rating.copy()
    sol = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=box, method="highs")
    if sol.status != 0:
        return None
    y: FloatArray = np.clip(sol.x, 0.0, 1.0)
    return y * rating


def max_total(engine: PowerFlow, check: Check, request: EnvelopeRequest, rating: FloatArray,
              work: Work) -> tuple[Outcome, Outcome]:
    """Both directions of the ``max-total`` envelope (see the module docstring)."""
    n = rating.size
    lower, upper = bounds(engine, check)
    total_load = float(np.abs(check.load_p_w).sum(axis=1).max())
    step = np.minimum(max(0.02 * total_load, 1e3) / n, 0.5 * rating)
    x = np.zeros((2, n))
    linear: list[FloatArray | None] = [None, None]
    best: list[tuple[float, FloatArray, FlowResult, int] | None] = [None, None]
    reason: list[str | None] = [None, None]
    open_ = [True, True]
    converged = [False, False]
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
        work.solves += points.shape[0]
        work.batches += 1
        margins = judge(check, res)
        obs = observables(engine, res)
        for k, d in enumerate(dirs):
            base = k * (n + 1)
            if passes(margins[base : base + 1])[0]:
                total = float(x[d].sum())
                if best[d] is None or total > best[d][0]:  # type: ignore[index]
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
            if change <= request.rtol * max(nxt.sum(), 1e-9):
                converged[d] = True
                open_[d] = False
    return _back_off(engine, check, request, x, best, linear, reason, converged, work)


def _back_off(engine: PowerFlow, check: Check, request: EnvelopeRequest, x: FloatArray,
              best: list[tuple[float, FloatArray, FlowResult, int] | None], linear: list[FloatArray | None],
              reason: list[str | None], converged: list[bool], work: Work) -> tuple[Outcome, Outcome]:
    alpha = np.concatenate([1.0 - request.rtol * BACKOFF_RTOL, BACKOFF])
    dirs = [d for d in (0, 1) if best[d] is not None]
    found: dict[int, tuple[float, FloatArray, FlowResult, int]] = {}
    if dirs:
        points = np.concatenate([alpha[:, None] * x[d][None, :] for d in dirs])
        direction = np.repeat(np.array(dirs, dtype=np.intp), alpha.size)
        res = solve_rows(engine, check, direction, SIGN[direction, None] * points)
        work.solves += points.shape[0]
        work.batches += 1
        ok = passes(judge(check, res))
        for k, d in enumerate(dirs):
            rows = np.flatnonzero(ok[k * alpha.size : (k + 1) * alpha.size])
            if rows.size:
                row = k * alpha.size + int(rows[0])
                found[d] = (float(points[row].sum()), points[row], res, row)
    outcomes = []
    n = x.shape[1]
    for d in (0, 1):
        lin: FloatArray = np.full(n, np.nan) if linear[d] is None else np.asarray(linear[d], dtype=np.float64)
        kept = best[d]
        if kept is None:
            outcomes.append(Outcome(np.zeros(n), lin, False, reason[d] or f"{DIRECTIONS[d]}: no AC solve passed"))
            continue
        if d in found and found[d][0] >= kept[0]:
            kept = found[d]
        _, point, res, row = kept
        margins = judge(check, res)[row]
        binding = describe(engine, res, row, int(np.argmax(margins)))
        met = converged[d] and d in found and found[d][0] >= (1.0 - request.rtol) * x[d].sum()
        outcomes.append(Outcome(point.copy(), lin, True, None, worst_values(res, row), binding, bool(met)))
    return outcomes[0], outcomes[1]
