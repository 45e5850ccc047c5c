"""What an AC solve must show to certify an envelope: limits minus margins, under the worst-case loads.

Owns :class:`Criteria` (the limits, the safety margin and the load bound a request states), its resolution
against one feeder and operating point (:func:`resolve` -> :class:`Check`; :func:`resolved` keeps it with the
engine for the next cycle), and the reading of a batch of AC solves against it (:func:`judge`): per scenario,
the three constraint margins (voltage high, voltage low, loading; <= 0 means inside), the worst values seen
(:func:`worst_values`) and, in words, what binds or fails (:func:`describe`, :func:`failure`). Pure: arrays in,
arrays out.

Worst-case loads. An envelope must hold for every load inside its interval; voltage rise and reverse flow are
worst at the **minimum** load (the export check) and voltage drop and forward flow at the **maximum** load (the
import check). A load with an interval in the feeder (``Loads.p_min_w``/``p_max_w``) takes its ends; any other
load takes its operating-point power times ``Criteria.load_bound`` (default ``(0.2, 1.2)``: 20 % to 120 % of
the operating point; a load whose operating-point power is negative, net generation, takes the two ends the other
way round, so that its minimum is still its least consumption). Reactive power follows active power at the load's
own power factor. Set ``load_bound`` to ``(1.0, 1.0)`` to treat loads without an interval as measured.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.twin._errors import ScenarioError
from gateway.twin._feeder import FLOAT, Feeder
from gateway.twin._flow import FlowResult, PowerFlow

FloatArray = NDArray[np.float64]

#: The two directions, as row indices of :attr:`Check.load_p_w`, and the sign of DER output in each.
EXPORT, IMPORT = 0, 1
DIRECTIONS = ("export", "import")
SIGN = np.array([1.0, -1.0])  # export injects, import draws
#: Constraint categories, the columns of :func:`judge`'s margins.
CATEGORIES = ("vmax", "vmin", "loading")

#: How far inside the limits (pu voltage, fraction of rating) the linearised targets of :func:`bounds` sit: an LP
#: (``max-total``) lands exactly on them, and its AC solve there reads the limit to ~1e-11, which another engine
#: or the unreduced model can read on the other side. Far above the power flow's noise (Newton tolerance 1e-8
#: pu), far below the margins (1e-3 pu).
NUMERIC_GUARD = 1e-6


@dataclass(frozen=True, slots=True)
class Criteria:
    """Limits (``None``: the feeder's :class:`~gateway.twin.Limits`), margins and the load bound of a check.

    An AC solve passes when every phase voltage is in ``[vmin_pu + margin_v_pu, vmax_pu - margin_v_pu]`` and
    every rated line and transformer is at most ``max_loading - margin_loading`` (1.0 = 100 % of rating).
    """

    vmin_pu: float | None = None
    vmax_pu: float | None = None
    max_loading: float | None = None
    margin_v_pu: float = 0.002
    margin_loading: float = 0.01
    load_bound: tuple[float, float] = (0.2, 1.2)

    def __post_init__(self) -> None:
        for name in ("vmin_pu", "vmax_pu", "max_loading"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ScenarioError(f"Criteria.{name}: must be a positive number, got {value!r}")
        for name in ("margin_v_pu", "margin_loading"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ScenarioError(f"Criteria.{name}: must be a number >= 0, got {value!r}")
        lo, hi = self.load_bound
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise ScenarioError(f"Criteria.load_bound: expected 0 <= low <= high, got {self.load_bound!r}")


@dataclass(frozen=True, slots=True, eq=False)
class Check:
    """:class:`Criteria` resolved for one feeder and operating point.

    ``vmin_pu``/``vmax_pu``/``max_loading`` are the limits as stated; ``v_low``/``v_high``/``loading_high``
    the limits minus the margins (what a solve must keep). ``load_p_w``/``load_q_var`` ``(2, n_load)``: the
    worst-case loads, row :data:`EXPORT` (minimum) and row :data:`IMPORT` (maximum).
    """

    criteria: Criteria
    vmin_pu: float
    vmax_pu: float
    max_loading: float
    v_low: float
    v_high: float
    loading_high: float
    load_p_w: FloatArray
    load_q_var: FloatArray
    source_v_pu: float | None

    def rows(self, direction: NDArray[np.intp]) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        """The loads (and source voltage) of scenarios in ``direction`` ``(S,)``, as ``solve_batch`` takes them."""
        source = None if self.source_v_pu is None else np.full(direction.shape[0], self.source_v_pu, dtype=FLOAT)
        return self.load_p_w[direction], self.load_q_var[direction], source


def _vector(value: ArrayLike | None, default: FloatArray, name: str) -> FloatArray:
    if value is None:
        return default
    array = np.asarray(value, dtype=FLOAT)
    if array.shape != default.shape or not np.isfinite(array).all():
        raise ScenarioError(f"{name}: expected {default.shape[0]} finite values, got shape {array.shape}")
    return array


def resolve(criteria: Criteria, feeder: Feeder, *, load_p_w: ArrayLike | None = None,
            load_q_var: ArrayLike | None = None, source_v_pu: float | None = None) -> Check:
    """Resolve ``criteria`` for ``feeder`` at an operating point (loads ``(n_load,)``; ``None``: the feeder's
    nominal loads; ``source_v_pu`` ``None``: the feeder's source voltage)."""
    limits = feeder.limits
    vmin = limits.vmin_pu if criteria.vmin_pu is None else criteria.vmin_pu
    vmax = limits.vmax_pu if criteria.vmax_pu is None else criteria.vmax_pu
    loading = limits.max_loading if criteria.max_loading is None else criteria.max_loading
    v_low, v_high = vmin + criteria.margin_v_pu, vmax - criteria.margin_v_pu
    if not v_low < v_high:
        raise ScenarioError(f"limits: vmin {vmin} + margin and vmax {vmax} - margin leave no band")
    loads = feeder.loads
    p = _vector(load_p_w, loads.p_w, "load_p_w")
    q = _vector(load_q_var, loads.q_var, "load_q_var")
    bound_lo, bound_hi = criteria.load_bound
    # a load drawing negative power (net generation: an estimate can say so) consumes least at the bound's high end
    lo = np.where(p < 0, bound_hi, bound_lo)
    hi = np.where(p < 0, bound_lo, bound_hi)
    bounded = np.isfinite(loads.p_min_w) & np.isfinite(loads.p_max_w)
    p_lo = np.where(bounded, loads.p_min_w, p * lo)
    p_hi = np.where(bounded, loads.p_max_w, p * hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        pf = np.where(p != 0, q / p, 0.0)  # reactive power follows active power at the load's power factor
    q_lo = np.where(bounded, pf * p_lo, q * lo)
    q_hi = np.where(bounded, pf * p_hi, q * hi)
    if source_v_pu is not None and not (math.isfinite(source_v_pu) and source_v_pu > 0):
        raise ScenarioError(f"source_v_pu: must be a positive number, got {source_v_pu!r}")
    return Check(criteria, vmin, vmax, loading, v_low, v_high, loading - criteria.margin_loading,
                 np.stack([p_lo, p_hi]), np.stack([q_lo, q_hi]), source_v_pu)


def _frozen(*arrays: FloatArray) -> None:
    """Kept arrays are shared between calls: read-only."""
    for array in arrays:
        array.setflags(write=False)


def _array_key(value: ArrayLike | None) -> Hashable:
    if value is None:
        return None
    array = np.asarray(value, dtype=FLOAT)
    return array.shape, array.tobytes()


def resolved(engine: PowerFlow, criteria: Criteria, *, load_p_w: ArrayLike | None = None,
             load_q_var: ArrayLike | None = None, source_v_pu: float | None = None) -> Check:
    """:func:`resolve` for ``engine``'s feeder, kept by the engine for the next call at the same operating point
    (:meth:`PowerFlow.derived`): a gateway certifies the same criteria at each cycle."""

    def build() -> Check:
        check = resolve(criteria, engine.feeder, load_p_w=load_p_w, load_q_var=load_q_var, source_v_pu=source_v_pu)
        _frozen(check.load_p_w, check.load_q_var)
        return check

    return engine.derived(("check", criteria, _array_key(load_p_w), _array_key(load_q_var), source_v_pu), build)


def solve_rows(engine: PowerFlow, check: Check, direction: NDArray[np.intp], der_p_w: FloatArray) -> FlowResult:
    """One batched AC solve: scenario ``k`` has the DER output ``der_p_w[k]`` and the worst-case loads of
    ``direction[k]``."""
    p, q, source = check.rows(direction)
    return engine.solve_batch(der_p_w, load_p_w=p, load_q_var=q, source_v_pu=source)


def judge(check: Check, res: FlowResult) -> FloatArray:
    """Constraint margins ``(S, 3)``: ``vmax - v_high``, ``v_low - vmin``, ``max_loading - loading_high``.

    A scenario passes when all three are <= 0 (:func:`passes`). Unrated feeders have loading margin -inf;
    scenarios that did not converge have +inf everywhere (they never pass).
    """
    margins = np.empty((res.scenarios, 3))
    np.subtract(res.vmax_pu, check.v_high, out=margins[:, 0])
    np.subtract(check.v_low, res.vmin_pu, out=margins[:, 1])
    np.subtract(res.max_loading, check.loading_high, out=margins[:, 2])
    margins[np.isnan(res.max_loading), 2] = -np.inf
    margins[~res.converged] = np.inf
    return margins


def passes(margins: FloatArray) -> NDArray[np.bool_]:
    """Which scenarios pass (every margin <= 0)."""
    result: NDArray[np.bool_] = np.asarray((margins <= 0.0).all(axis=1), dtype=bool)
    return result


def observables(engine: PowerFlow, res: FlowResult) -> FloatArray:
    """Every constrained quantity of each scenario, ``(S, n_obs)``: phase voltages (one per bus when the solve
    is symmetric), then line loadings, then transformer loadings. NaN: unconstrained (absent, unrated)."""
    v = res.v_pu[:, :, 0] if engine.symmetric else res.v_pu.reshape(res.v_pu.shape[0], -1)
    return np.concatenate([v, res.line_loading, res.trafo_loading], axis=1)


def _counts(engine: PowerFlow) -> tuple[int, int]:
    """How many of :func:`observables` are voltages, and how many loadings."""
    feeder = engine.feeder
    n_v = feeder.buses.name.size * (1 if engine.symmetric else 3)
    return n_v, feeder.lines.name.size + feeder.transformers.name.size


def bounds(engine: PowerFlow, check: Check, guard: float = NUMERIC_GUARD) -> tuple[FloatArray, FloatArray]:
    """Lower and upper limits ``(n_obs,)`` of :func:`observables` (margins and ``guard`` applied: 0 for where the
    check itself passes; kept by the engine: the caller must not modify them)."""

    def build() -> tuple[FloatArray, FloatArray]:
        n_v, n_l = _counts(engine)
        g = guard
        lower = np.concatenate([np.full(n_v, check.v_low + g), np.full(n_l, -np.inf)])
        upper = np.concatenate([np.full(n_v, check.v_high - g), np.full(n_l, check.loading_high - g)])
        _frozen(lower, upper)
        return lower, upper

    return engine.derived(("bounds", check.v_low, check.v_high, check.loading_high, guard), build)


def fit_powers(engine: PowerFlow) -> FloatArray:
    """The power each of :func:`observables` is fitted in by :func:`gateway.twin._sensitivity.quadratic_step`
    ``(n_obs,)``: 4 for voltages, 2 for loadings (kept by the engine: the caller must not modify it)."""

    def build() -> FloatArray:
        n_v, n_l = _counts(engine)
        powers = np.concatenate([np.full(n_v, 4.0), np.full(n_l, 2.0)])
        _frozen(powers)
        return powers

    return engine.derived(("fit powers",), build)


def search_cap_w(check: Check) -> float:
    """The level searched up to where nothing else bounds it: ten times the larger total load, at least 1 MW."""
    return float(max(10.0 * np.abs(check.load_p_w).sum(axis=1).max(), 1e6))


def worst_values(res: FlowResult, row: int) -> tuple[float, float, float]:
    """``(vmax_pu, vmin_pu, max_loading)`` of scenario ``row``."""
    return float(res.vmax_pu[row]), float(res.vmin_pu[row]), float(res.max_loading[row])


def failure(engine: PowerFlow, check: Check, res: FlowResult, row: int, margins: FloatArray) -> str:
    """Why scenario ``row`` (its margins ``(3,)``) fails, in words."""
    if not res.converged[row]:
        return "the AC power flow did not converge"
    k = int(np.argmax(margins))
    value = worst_values(res, row)[k]
    limit = (check.v_high, check.v_low, check.loading_high)[k]
    side = ("above", "below", "above")[k]
    return f"{describe(engine, res, row, k)} is {value:.4f}, {side} {limit:.4f} ({CATEGORIES[k]} limit with margin)"


def describe(engine: PowerFlow, res: FlowResult, row: int, category: int) -> str:
    """Name what the margin ``category`` of scenario ``row`` is about: the bus or the element."""
    names = engine.feeder.buses.name
    if category == 0:
        return f"vmax at bus {names[res.vmax_bus[row]]}"
    if category == 1:
        return f"vmin at bus {names[res.vmin_bus[row]]}"
    both = np.concatenate([res.line_loading[row], res.trafo_loading[row]])
    if not np.isfinite(both).any():
        return "loading"
    k = int(np.nanargmax(both))
    n_line = res.line_loading.shape[1]
    if k < n_line:
        return f"loading of line {engine.feeder.lines.name[k]}"
    return f"loading of transformer {engine.feeder.transformers.name[k - n_line]}"
