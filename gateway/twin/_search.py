"""Batched AC bracketing: the largest level along many independent lines that passes the AC check.

Owns :func:`bracket`. Each *line* ``m`` maps a level ``t >= 0`` (watts, or a fraction of rating) to one AC
scenario (all DERs of an envelope at ``t``; or a new DER of ``t`` W at one bus). Passing is assumed monotone in
``t`` (the scenario at 0 passes, and once a level fails every larger one does), so each line keeps a bracket
``[lo, hi)``: ``lo`` the largest level seen to pass (the answer), ``hi`` the smallest seen to fail. Every batch
solves a few levels of every open line together, in one ``solve_batch`` call:

- first, levels around the line's estimate: a pair ``rtol`` apart around it when the caller states how
  uncertain it is (``spread``), and two further out by that uncertainty when it exceeds ``rtol``
  (``REFINE_TIGHT``, ``REFINE``); without ``spread`` (a linear estimate, several % off), ``guess * FIRST``.
  Clipped to ``t_max``;
- while nothing has failed, levels around the root the two highest passing levels' margins extrapolate to: a
  pair ``rtol`` apart and insurance above when that root is near (within ``NEAR``), ``root * AHEAD`` when it is
  further; ``lo * GROW`` when the margins point to none;
- once bracketed, levels around the root of the binding margin, interpolated by a quadratic through ``lo``,
  ``hi`` and the nearest other level solved (the secant when there is none): a pair ``rtol`` apart around it,
  and two further out by the larger of ``rtol`` and the gap between the quadratic and the secant roots
  (``REFINE_TIGHT``, ``REFINE``). When ``hi`` did not converge, evenly spaced levels instead.

Levels the caller already solved (``seed``: for ``equal``, the ratings where DERs stop rising, and the
finite-difference levels) are history like any other: the bracket starts from them, and where passing is not
monotone along a line (an unbalanced feeder, DERs stopping at their ratings) the smallest failing level bounds
the answer all the same.

A line is done when ``hi <= lo * (1 + rtol)``, ``hi - lo <= atol`` or ``lo`` reached ``t_max``. Its answer is
``lo``, a level an AC solve passed: never above the first level that fails (where passing is monotone between
the levels solved), at most ``rtol`` below it when done.

The search state is plain Python floats per line: a line holds a dozen levels at most, and numpy's per-call cost
on arrays that small is most of the work (the power flows are batched by the caller all the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.twin._flow import FlowResult

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

#: Multiples of a linear estimate tried first.
FIRST = (0.9, 1.0, 1.08, 1.18, 1.32)
#: Multiples of an extrapolated root tried while nothing has failed yet and that root is far.
AHEAD = (0.98, 1.02, 1.08, 1.2)
#: Multiples of ``lo`` tried while nothing has failed and the margins point nowhere.
GROW = (1.5, 2.2, 3.5, 6.0)
#: Offsets around an estimated root: a tight pair in units of ``rtol`` (the bracket closes when the root is
#: between them), and insurance in units of the spread (``rtol`` or the estimate's uncertainty, the larger).
REFINE_TIGHT = (-0.5, 0.4)
REFINE = (-2.5, 1.5)
#: An extrapolated root at most this far above ``lo`` (relative) is refined like an interpolated one.
NEAR = 0.05

#: ``evaluate(line, level) -> (result, margins)``: solve one batch, a scenario per ``(line[k], level[k])``.
Evaluate = Callable[[IntArray, FloatArray], tuple[FlowResult, FloatArray]]
#: Levels already solved in the first batch: ``(levels (M, K), margins (M, K, 3), rows (M, K))``.
Seed = tuple[FloatArray, FloatArray, IntArray]


@dataclass(frozen=True, slots=True, eq=False)
class Bracket:
    """Where each line's search ended. ``lo_ref``/``hi_ref`` ``(M, 2)``: (batch, row) of the AC solve at
    ``lo``/``hi`` in ``results`` (-1: none). ``done``: the bracket met the tolerance or ``lo`` hit ``t_max``."""

    lo: FloatArray
    hi: FloatArray
    margins_lo: FloatArray
    margins_hi: FloatArray
    lo_ref: NDArray[np.intp]
    hi_ref: NDArray[np.intp]
    done: NDArray[np.bool_]
    results: list[FlowResult]
    solves: int


def _passes(margins: list[float]) -> bool:
    return margins[0] <= 0.0 and margins[1] <= 0.0 and margins[2] <= 0.0  # NaN never passes


def _around(root: float, rtol: float, unit: float) -> list[float]:
    return [root * (1.0 + rtol * o) for o in REFINE_TIGHT] + [root * (1.0 + unit * o) for o in REFINE]


def _root(t0: float, t1: float, t2: float, c0: float, c1: float, c2: float) -> tuple[float, float]:
    """The root of one margin crossing from ``c0 <= 0`` at ``t0`` to ``c1 > 0`` at ``t1``: quadratic through the
    three points (``t2`` another level, NaN: none), and secant through the first two; NaN: no crossing."""
    if not (c0 <= 0.0 < c1 and math.isfinite(c0) and math.isfinite(c1)):
        return math.nan, math.nan
    secant = t0 + (t1 - t0) * (-c0) / (c1 - c0)
    if not (math.isfinite(c2) and math.isfinite(t2)):
        return secant, secant
    # Newton form through the three points: c(t) = c0 + d1 (t - t0) + d2 (t - t0)(t - t1).
    d1 = (c1 - c0) / (t1 - t0)
    d2 = ((c2 - c1) / (t2 - t1) - d1) / (t2 - t0)
    # In u = t - t0: d2 u^2 + (d1 - d2 (t1 - t0)) u + c0 = 0; take the root inside the bracket.
    b = d1 - d2 * (t1 - t0)
    disc = b * b - 4.0 * d2 * c0
    if not disc >= 0.0:
        return secant, secant
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))  # the numerically stable pair of roots: q / d2 and c0 / q
    best = math.inf
    for r in (t0 + q / d2 if d2 != 0.0 else math.inf, t0 + c0 / q if q != 0.0 else math.inf):
        if t0 <= r <= t1 and r < best:
            best = r
    return (best if math.isfinite(best) else secant), secant


class _Line:
    """One line's history (levels, their margins, whether each passed, and where each was solved: (batch, row))
    and the bracket read off it."""

    __slots__ = ("at_hi", "at_lo", "hi", "levels", "lo", "margins", "ok", "refs", "t_max")

    def __init__(self, t_max: float) -> None:
        self.t_max = t_max
        self.levels: list[float] = []
        self.margins: list[list[float]] = []
        self.ok: list[bool] = []
        self.refs: list[tuple[int, int]] = []
        self.lo, self.hi, self.at_lo, self.at_hi = -1.0, math.inf, 0, -1

    def add(self, level: float, margins: list[float], ref: tuple[int, int]) -> None:
        self.levels.append(level)
        self.margins.append(margins)
        self.ok.append(_passes(margins))
        self.refs.append(ref)

    def settle(self) -> None:
        """Monotone: the smallest failing level bounds the line; passing levels count only below it."""
        hi, at_hi = math.inf, -1
        for k, (t, good) in enumerate(zip(self.levels, self.ok, strict=True)):
            if not good and t < hi:
                hi, at_hi = t, k
        lo, at_lo = -1.0, 0
        for k, (t, good) in enumerate(zip(self.levels, self.ok, strict=True)):
            if good and lo < t < hi:
                lo, at_lo = t, k
        self.lo, self.hi, self.at_lo, self.at_hi = lo, hi, at_lo, at_hi

    def candidates(self, rtol: float, guess: float, spread: float | None, first: bool) -> list[float]:
        """Levels to try next, increasing, strictly inside the bracket."""
        lo, hi, t_max = self.lo, self.hi, self.t_max
        if first:
            if spread is None or not math.isfinite(spread):
                raw = [guess * f for f in FIRST]
            else:
                raw = [guess * (1.0 + rtol * o) for o in REFINE_TIGHT]
                if spread > rtol:
                    raw += [guess * (1.0 + spread * o) for o in REFINE]
            raw = [min(t, t_max) for t in raw]
        elif hi < math.inf:
            raw = self._near(rtol)
        else:
            root = self._ahead()
            if root is None:
                raw = [min(lo * g, t_max) for g in GROW]
            elif root <= lo * (1.0 + NEAR):
                raw = [min(t, t_max) for t in _around(root, rtol, max(rtol, 0.5 * (root / lo - 1.0)))]
            else:
                raw = [min(root * a, t_max) for a in AHEAD]
        raw.sort()
        kept: list[float] = []
        last = lo
        for t in raw:
            if last < t < hi:
                kept.append(t)
                last = t
        return kept

    def _near(self, rtol: float) -> list[float]:
        """Levels around the interpolated root of a bracketed line (evenly spaced when there is none)."""
        lo, hi = self.lo, self.hi
        third, nearest = -1, math.inf
        for k, t in enumerate(self.levels):
            if t not in (lo, hi):
                d = min(abs(t - lo), abs(t - hi))
                if d < nearest:
                    third, nearest = k, d
        c_lo, c_hi = self.margins[self.at_lo], self.margins[self.at_hi]
        t2, c2 = (self.levels[third], self.margins[third]) if third >= 0 else (math.nan, [math.nan] * 3)
        root, secant = math.inf, math.nan
        for j in range(3):
            quad, sec = _root(lo, hi, t2, c_lo[j], c_hi[j], c2[j])
            if quad < root:
                root, secant = quad, sec
        if not (math.isfinite(root) and root > 0.0):
            k = len(REFINE) + len(REFINE_TIGHT)
            return [lo + (hi - lo) * (i / (k + 1)) for i in range(1, k + 1)]
        return _around(root, rtol, max(rtol, 1.5 * abs(root - secant) / root))

    def _ahead(self) -> float | None:
        """Root extrapolated from the two highest passing levels, None when the margins point to none."""
        lo = self.lo
        prev, at = -1.0, -1
        for k, (t, good) in enumerate(zip(self.levels, self.ok, strict=True)):
            if good and prev < t < lo:
                prev, at = t, k
        if at < 0:
            return None
        m_lo, m_prev = self.margins[self.at_lo], self.margins[at]
        root = math.inf
        for j in range(3):
            slope = (m_lo[j] - m_prev[j]) / (lo - prev)
            if slope > 0.0 and math.isfinite(slope):
                root = min(root, lo - m_lo[j] / slope)
        return root if math.isfinite(root) and root > lo else None


def bracket(evaluate: Evaluate, guess: FloatArray, t_max: FloatArray, margins0: FloatArray, ref0: IntArray,
            results: list[FlowResult], *, rtol: float, atol: FloatArray, max_batches: int,
            seed: Seed | None = None, spread: FloatArray | None = None) -> Bracket:
    """Search every line whose level-0 scenario passed (``margins0`` ``(M, 3)``, solved in row ``ref0`` ``(M,)``
    of ``results[0]``): see the module docstring. ``guess`` ``(M,)`` finite and > 0; ``t_max`` ``(M,)``
    finite. ``seed``: levels ``(M, K)`` (NaN: none) already solved in ``results[0]``, their margins
    ``(M, K, 3)`` and rows ``(M, K)``; they count as any level solved by the search. ``spread`` ``(M,)``: the
    guess's relative uncertainty (None, or NaN for a line: a linear estimate, tried at ``FIRST`` multiples).
    ``results`` gets one entry per batch."""
    lines: list[_Line] = []
    for t, m0, r0 in zip(t_max.tolist(), margins0.tolist(), ref0.tolist(), strict=True):
        line = _Line(t)
        line.add(0.0, m0, (0, r0))
        lines.append(line)
    if seed is not None:  # levels already solved in results[0] (NaN: none)
        for line, levels, margins, rows in zip(lines, *(a.tolist() for a in seed), strict=True):
            for t, m, r in zip(levels, margins, rows, strict=True):
                if math.isfinite(t):
                    line.add(t, m, (0, r))
    for line in lines:
        line.settle()
    # inside what the seed already brackets
    guesses = [min(max(g, line.lo), line.hi, line.t_max) for g, line in zip(guess.tolist(), lines, strict=True)]
    spreads: list[float | None] = [None] * len(lines) if spread is None else list(spread.tolist())
    tolerance = atol.tolist()
    done = [not line.ok[0] or line.t_max <= 0 or line.lo >= line.t_max for line in lines]
    solves = 0
    for batch in range(max_batches):
        open_ = [k for k, d in enumerate(done) if not d]
        if not open_:
            break
        want = [lines[k].candidates(rtol, guesses[k], spreads[k], batch == 0) for k in open_]
        if batch == 0 and not any(want):  # the seed already brackets every guess
            want = [lines[k].candidates(rtol, guesses[k], spreads[k], False) for k in open_]
        line_of = [k for k, levels in zip(open_, want, strict=True) for _ in levels]
        level = [t for levels in want for t in levels]
        if not level:
            break
        res, margins = evaluate(np.array(line_of, dtype=np.intp), np.array(level))
        results.append(res)
        b = len(results) - 1
        for row, (k, t, m) in enumerate(zip(line_of, level, margins.tolist(), strict=True)):
            lines[k].add(t, m, (b, row))
        solves += len(level)
        for k in open_:
            line = lines[k]
            line.settle()
            lo, hi = line.lo, line.hi
            done[k] = lo >= line.t_max or hi <= lo * (1.0 + rtol) or hi - lo <= tolerance[k]
    nan3 = [math.nan] * 3
    return Bracket(
        np.array([line.lo for line in lines]), np.array([line.hi for line in lines]),
        np.array([line.margins[line.at_lo] for line in lines]).reshape(-1, 3),
        np.array([line.margins[line.at_hi] if line.at_hi >= 0 else nan3 for line in lines]).reshape(-1, 3),
        np.array([line.refs[line.at_lo] for line in lines], dtype=np.intp).reshape(-1, 2),
        np.array([line.refs[line.at_hi] if line.at_hi >= 0 else (-1, -1) for line in lines],
                 dtype=np.intp).reshape(-1, 2),
        np.array(done, dtype=bool), results, solves)
