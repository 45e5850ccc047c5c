"""Batched AC bracketing: the largest level along many independent lines that passes the AC check.

Owns :func:`bracket`. Each *line* ``m`` maps a level ``t >= 0`` (watts, or a fraction of rating) to one AC
scenario (all DERs of an envelope at ``t``; or a new DER of ``t`` W at one bus). Passing is assumed monotone in
``t`` (the scenario at 0 passes, and once a level fails every larger one does), so each line keeps a bracket
``[lo, hi)``: ``lo`` the largest level seen to pass (the answer), ``hi`` the smallest seen to fail. Every batch
solves a few levels of every open line together, in one ``solve_batch`` call:

- first, levels around the line's linear estimate (``guess * FIRST``, clipped to ``t_max``);
- while nothing has failed, levels around the root the passing levels' margins extrapolate to (or ``lo * GROW``
  when they do not point to one);
- once bracketed, levels around the root of the binding margin, interpolated by a quadratic through ``lo``,
  ``hi`` and the nearest other level solved (the secant when there is none): a pair ``rtol`` apart around it,
  and two further out by the larger of ``rtol`` and the gap between the quadratic and the secant roots
  (``REFINE_TIGHT``, ``REFINE``). When ``hi`` did not converge, evenly spaced levels instead.

Levels the caller already solved (``seed``: for ``equal``, the ratings where DERs stop rising) are history like
any other: the bracket starts from them, and where passing is not monotone along a line (an unbalanced feeder,
DERs stopping at their ratings) the smallest failing level bounds the answer all the same.

A line is done when ``hi <= lo * (1 + rtol)``, ``hi - lo <= atol`` or ``lo`` reached ``t_max``. Its answer is
``lo``, a level an AC solve passed: never above the first level that fails (where passing is monotone between
the levels solved), at most ``rtol`` below it when done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.twin._criteria import passes
from gateway.twin._flow import FlowResult

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

#: Multiples of the linear estimate tried first.
FIRST = np.array([0.9, 1.0, 1.08, 1.18, 1.32])
#: Multiples of an extrapolated root tried while nothing has failed yet.
AHEAD = np.array([0.98, 1.02, 1.08, 1.2])
#: Multiples of ``lo`` tried while nothing has failed and the margins point nowhere.
GROW = np.array([1.5, 2.2, 3.5, 6.0])
#: Offsets around an interpolated root: a tight pair in units of ``rtol`` (the bracket closes when the root is
#: between them), and insurance in units of the spread (``rtol`` or the estimate's uncertainty, the larger).
REFINE_TIGHT = np.array([-0.5, 0.4])
REFINE = np.array([-2.5, 1.5])

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


def _pad(a: FloatArray, k: int) -> FloatArray:
    return a if a.shape[1] == k else np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=np.nan)


def _roots(t: FloatArray, c: FloatArray, lo: FloatArray, hi: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per line, the root of each margin ``c`` ``(M, 3, cat)`` through the points ``t`` ``(M, 3)`` (the first
    two bracket it): quadratic, and secant through the first two. NaN where there is no crossing."""
    t0, t1, t2 = t[:, 0, None], t[:, 1, None], t[:, 2, None]
    c0, c1, c2 = c[:, 0], c[:, 1], c[:, 2]
    crossing = (c1 > 0) & (c0 <= 0) & np.isfinite(c0) & np.isfinite(c1)
    secant = np.where(crossing, t0 + (t1 - t0) * (-c0) / (c1 - c0), np.nan)
    # Newton form through the three points: c(t) = c0 + d1 (t - t0) + d2 (t - t0)(t - t1).
    d1 = (c1 - c0) / (t1 - t0)
    d2 = ((c2 - c1) / (t2 - t1) - (c1 - c0) / (t1 - t0)) / (t2 - t0)
    # In u = t - t0: d2 u^2 + (d1 - d2 (t1 - t0)) u + c0 = 0; take the root inside the bracket.
    b = d1 - d2 * (t1 - t0)
    disc = np.sqrt(b * b - 4.0 * d2 * c0)
    q = -0.5 * (b + np.copysign(disc, b))  # the numerically stable pair of roots: q / d2 and c0 / q
    candidates = np.stack([t0 + q / d2, t0 + c0 / q])
    inside = (candidates >= lo[:, None]) & (candidates <= hi[:, None]) & np.isfinite(candidates)
    quad = np.where(inside, candidates, np.inf).min(axis=0)
    quad = np.where(crossing & np.isfinite(quad) & np.isfinite(c2), quad, secant)
    return quad, secant


def _history_point(levels: FloatArray, lo: FloatArray, hi: FloatArray) -> IntArray:
    """Index of the solved level nearest the bracket but not at its ends (-1: none)."""
    hi_f = np.where(np.isfinite(hi), hi, lo)
    dist = np.minimum(np.abs(levels - lo[:, None]), np.abs(levels - hi_f[:, None]))
    dist = np.where((levels == lo[:, None]) | (levels == hi[:, None]) | np.isnan(levels), np.inf, dist)
    index = dist.argmin(axis=1)
    return np.where(np.isfinite(dist[np.arange(levels.shape[0]), index]), index, -1)


class _Lines:
    """The search state of every line: the history of solved levels (slot 0: level 0), margins and where each
    was solved; the bracket is read off the history."""

    def __init__(self, margins0: FloatArray, ref0: IntArray, t_max: FloatArray, width: int,
                 seed: Seed | None) -> None:
        m = margins0.shape[0]
        k = 0 if seed is None else seed[0].shape[1]
        self.rows = np.arange(m)
        self.t_max = t_max
        self.levels = np.full((m, width + k), np.nan)
        self.levels[:, 0] = 0.0
        self.margins = np.full((m, width + k, 3), np.nan)
        self.margins[:, 0] = margins0
        self.ok = np.zeros((m, width + k), dtype=bool)
        self.ok[:, 0] = passes(margins0)
        self.ids = np.full((m, width + k), -1, dtype=np.intp)
        self.ids[:, 0] = ref0
        if seed is not None:  # levels already solved in results[0] (NaN: none)
            levels, margins, ids = seed
            self.levels[:, 1 : k + 1] = levels
            self.margins[:, 1 : k + 1] = margins
            self.ok[:, 1 : k + 1] = np.isfinite(levels) & passes(margins.reshape(-1, 3)).reshape(m, k)
            self.ids[:, 1 : k + 1] = ids
        self.count = np.full(m, 1 + k, dtype=np.intp)
        self._bounds()

    def _bounds(self) -> None:
        # Monotone: the smallest failing level bounds the line; passing levels count only below it.
        levels = self.levels
        self.hi = np.where(self.ok | np.isnan(levels), np.inf, levels).min(axis=1)
        good = np.where(self.ok & (levels < self.hi[:, None]), levels, -1.0)
        self.slot_lo = good.argmax(axis=1)
        self.lo = good[self.rows, self.slot_lo]
        self.slot_hi = np.where(self.ok | np.isnan(levels), np.inf, levels).argmin(axis=1)

    def record(self, line: IntArray, level: FloatArray, margins: FloatArray, first_id: int) -> None:
        order = np.arange(level.size)
        slot = self.count[line] + order - np.searchsorted(line, line)  # rows come line by line
        self.levels[line, slot] = level
        self.margins[line, slot] = margins
        self.ok[line, slot] = passes(margins)
        self.ids[line, slot] = first_id + order
        self.count += np.bincount(line, minlength=self.count.size)
        self._bounds()

    def candidates(self, guess: FloatArray, rtol: float, first: bool) -> FloatArray:
        """Levels ``(M, K)`` to try next (NaN: none)."""
        lo, hi, t_max = self.lo, self.hi, self.t_max
        bracketed = np.isfinite(hi)
        if first:
            levels = np.minimum(guess[:, None] * FIRST, t_max[:, None])
        else:
            k = REFINE.size + REFINE_TIGHT.size
            if bracketed.all():
                levels = self._near(rtol, k)
            else:
                ahead = self._ahead()
                grow = np.where(np.isfinite(ahead)[:, None], ahead[:, None] * AHEAD, lo[:, None] * GROW)
                levels = np.where(bracketed[:, None], self._near(rtol, k), _pad(np.minimum(grow, t_max[:, None]), k))
        levels.sort(axis=1)  # NaN last
        keep = (levels > lo[:, None]) & (levels < hi[:, None])
        keep[:, 1:] &= levels[:, 1:] > levels[:, :-1]  # no repeats (levels clipped to t_max)
        return np.where(keep, levels, np.nan)

    def _near(self, rtol: float, k: int) -> FloatArray:
        """Levels around the interpolated root of bracketed lines (evenly spaced when there is none)."""
        lo, hi, rows = self.lo, self.hi, self.rows
        third = _history_point(self.levels, lo, hi)
        t = np.stack([lo, hi, np.where(third >= 0, self.levels[rows, third], np.nan)], axis=1)
        c = np.stack([self.margins[rows, self.slot_lo], self.margins[rows, self.slot_hi],
                      np.where((third >= 0)[:, None], self.margins[rows, third], np.nan)], axis=1)
        quad, secant = _roots(t, c, lo, hi)
        binding = np.where(np.isfinite(quad), quad, np.inf).argmin(axis=1)
        root = quad[rows, binding]
        unit = np.fmax(rtol, 1.5 * np.abs(root - secant[rows, binding]) / root)
        offsets = np.concatenate([np.broadcast_to(rtol * REFINE_TIGHT, (rows.size, REFINE_TIGHT.size)),
                                  unit[:, None] * REFINE], axis=1)
        near = root[:, None] * (1.0 + offsets)
        width = np.where(np.isfinite(hi), hi - lo, 0.0)
        even = lo[:, None] + width[:, None] * (np.arange(1, k + 1) / (k + 1))
        result: FloatArray = np.where(np.isfinite(root)[:, None], near, even)
        return result

    def _ahead(self) -> FloatArray:
        """Root extrapolated from the two highest passing levels, NaN when the margins point to none."""
        lo, rows = self.lo, self.rows
        below = np.where(self.ok & (self.levels < lo[:, None]), self.levels, -1.0)
        prev = below.argmax(axis=1)
        t_prev = below[rows, prev]
        m_lo = self.margins[rows, self.slot_lo]
        slope = (m_lo - self.margins[rows, prev]) / (lo - t_prev)[:, None]
        valid = (t_prev >= 0) & (lo > t_prev)
        root = np.where((slope > 0) & np.isfinite(slope), lo[:, None] - m_lo / slope, np.inf).min(axis=1)
        return np.where(valid & np.isfinite(root) & (root > lo), root, np.nan)


def bracket(evaluate: Evaluate, guess: FloatArray, t_max: FloatArray, margins0: FloatArray, ref0: IntArray,
            results: list[FlowResult], *, rtol: float, atol: FloatArray, max_batches: int,
            seed: Seed | None = None) -> Bracket:
    """Search every line whose level-0 scenario passed (``margins0`` ``(M, 3)``, solved in row ``ref0`` ``(M,)``
    of ``results[0]``): see the module docstring. ``guess`` ``(M,)`` finite and > 0; ``t_max`` ``(M,)``
    finite. ``seed``: levels ``(M, K)`` (NaN: none) already solved in ``results[0]``, their margins
    ``(M, K, 3)`` and rows ``(M, K)``; they count as any level solved by the search. ``results`` gets one entry
    per batch."""
    width = 1 + max_batches * max(FIRST.size, AHEAD.size, GROW.size, REFINE.size + REFINE_TIGHT.size)
    offsets = [0, results[0].scenarios]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        state = _Lines(margins0, ref0, t_max, width, seed)
        guess = np.clip(guess, state.lo, np.fmin(state.hi, t_max))  # inside what the seed already brackets
        solves = 0
        done = ~state.ok[:, 0] | (t_max <= 0) | (state.lo >= t_max)
        for batch in range(max_batches):
            if done.all():
                break
            levels = state.candidates(guess, rtol, first=batch == 0)
            levels[done] = np.nan
            if batch == 0 and not np.isfinite(levels).any():  # the seed already brackets every guess
                levels = state.candidates(guess, rtol, first=False)
                levels[done] = np.nan
            line, col = np.nonzero(np.isfinite(levels))
            level = levels[line, col]
            if not level.size:
                break
            res, margins = evaluate(line, level)
            results.append(res)
            solves += level.size
            state.record(line, level, margins, offsets[-1])
            offsets.append(offsets[-1] + level.size)
            lo, hi = state.lo, state.hi
            done |= (lo >= t_max) | (hi <= lo * (1.0 + rtol)) | (hi - lo <= atol)
    rows = state.rows
    refs = []
    for slot in (state.slot_lo, state.slot_hi):
        gid = np.where(np.isfinite(state.levels[rows, slot]), state.ids[rows, slot], -1)
        batch_of = np.searchsorted(offsets, gid, side="right") - 1
        refs.append(np.where(gid[:, None] >= 0, np.stack([batch_of, gid - np.take(offsets, batch_of)], axis=1),
                             -1))
    no_hi = ~np.isfinite(state.hi)
    refs[1][no_hi] = -1
    m_hi = np.where(no_hi[:, None], np.nan, state.margins[rows, state.slot_hi])
    return Bracket(state.lo, state.hi, state.margins[rows, state.slot_lo], m_hi, refs[0], refs[1], done, results,
                   solves)
