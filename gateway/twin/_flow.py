"""AC power flow over a feeder: the engine the state estimator and the envelope build on.

Owns :class:`PowerFlow` (a power-grid-model model built once per feeder, solving batches of scenarios by
iterative current on radial feeders and Newton-Raphson on meshed ones or where iterative current does not
converge: :class:`FlowOptions`) and :class:`FlowResult` (what a batch solve returns). Pure: no I/O, no clocks,
no threads.

Usage::

    engine = PowerFlow(feeder)                        # validates, builds the PGM model, settles the base case
    base = engine.solve()                             # a batch of one: nominal loads, every DER at 0 W
    res = engine.solve_batch(der_p_w,                 # (S, n_der) W, + export / - import, feeder.ders order
                             der_q_var=None,          # (S, n_der) var, + export; None: 0
                             load_scale=None,         # (S,) or (S, n_load): multiplies each load's P and Q
                             load_p_w=None,           # (S, n_load) W: replaces nominal P (before load_scale)
                             load_q_var=None,         # (S, n_load) var: replaces nominal Q (before load_scale)
                             source_v_pu=None)        # (S,) pu: the source voltage; None: the feeder's
    res.converged, res.vmax_pu, res.max_loading, ...  # (S,) arrays; see FlowResult

Scenarios are rows: a single solve is a batch of one, and rows never interact. DERs are constant-power
generators at their bus (three-phase: a third per phase; single-phase: on their phase). Loads follow OpenDSS's
voltage dependence (:mod:`gateway.twin._loadmodel`): each scenario starts every load in the regime it settled on
in the nearest scenario the engine solved lately (the base case's when none is nearer: :class:`_RegimeMemory`, a
speed-up only), solves, re-classifies each load (and phase) by its voltage, and re-solves only the scenarios where
a regime changed, until none changes (a scenario that does not converge is retried once from every banded load at
constant impedance) (``FlowResult.load_passes`` counts the passes; at most ``FlowOptions.max_load_passes``,
after which the last solve stands: the characteristic is continuous, so a load flickering at a band edge
costs only the difference between two pieces that meet there).

Balanced feeders (every load and DER three-phase) use the symmetric calculation, others the asymmetric one.

Speed (2-core machine, CPU medians; ``python -m tests.benchmarks.bench_twin`` prints our figures beside OpenDSS):
the Baran-Wu 33-bus feeder ~0.07 ms for ``solve()``, ~0.15 ms for one changed scenario with all its results, ~15 us
more per scenario in a batch (iterative current; ~30 us with Newton-Raphson); the IEEE European LV feeder
(asymmetric, its 907 buses solved as 111) ~0.3 ms for ``solve()``, ~0.65 ms for one changed scenario, ~0.2 ms more
per scenario in a batch. An engine reuses preallocated update/output buffers per batch size and remembers recent
load regimes, and is therefore not thread-safe: use one engine per thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from power_grid_model import CalculationMethod, ComponentType

from gateway.twin._errors import ScenarioError
from gateway.twin._feeder import FLOAT, Feeder, Phase
from gateway.twin._loadmodel import Regime, classify, coefficients
from gateway.twin._pgm import SQRT3, PgmLayout, Runner, Workspace, pgm_layout, phase_share
from gateway.twin._reduce import ExpandScratch, reduce_feeder
from gateway.twin._validate import assert_valid_feeder

FloatArray = NDArray[np.float64]
T = TypeVar("T")
#: The values of :attr:`FlowOptions.method`.
METHODS = ("auto", "newton_raphson", "iterative_current")


@dataclass(frozen=True, slots=True)
class FlowOptions:
    """Solver settings: Newton tolerance (pu voltage) and iterations, load-model passes, speed-ups."""

    error_tolerance: float = 1e-8
    max_iterations: int = 20
    max_load_passes: int = 8
    fast_path: bool = True
    reduce: bool = True  # solve the exact reduction (gateway.twin._reduce); False: the feeder as given
    #: power-grid-model's method: "newton_raphson"; "iterative_current" (about twice as fast per scenario: it
    #: factorises the admittance matrix once per batch; scenarios it does not converge within ``max_iterations``
    #: are re-solved with Newton-Raphson); "auto": iterative current on a radial feeder, Newton-Raphson on a meshed
    #: one. Iterative current converges linearly, so it is held to a hundredth of ``error_tolerance``
    #: (:data:`gateway.twin._pgm.ITERATIVE_TIGHTER`): on the Baran-Wu and European LV feeders the two then agree to
    #: ~1e-11 pu (voltages) and their envelopes to ~1e-8 (relative; the envelope's tolerance is 2e-3).
    method: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ScenarioError(f"FlowOptions.method: expected one of {', '.join(METHODS)}, got {self.method!r}")


@dataclass(frozen=True, slots=True)
class FlowResult:
    """A batch of ``S`` solved scenarios. Rows of a scenario that did not converge are NaN (indices -1).

    - ``converged`` ``(S,)`` bool.
    - ``v_pu`` ``(S, n_bus, 3)``: phase-to-neutral voltage magnitude of phases a, b, c, pu of the bus nominal
      (``u_rated_v / sqrt(3)``). Every bus has three phases (NaN is kept for "absent" should that change);
      a symmetric solve repeats the positive-sequence value on the three.
    - ``vmin_pu``/``vmax_pu`` ``(S,)``: extremes over every bus and phase; ``vmin_bus``/``vmax_bus`` ``(S,)``: the
      bus index where they occur.
    - ``line_loading`` ``(S, n_line)``: the largest phase current at either end / ``i_rated_a`` (NaN: unrated).
    - ``trafo_loading`` ``(S, n_trafo)``: the larger apparent power of the two sides / ``sn_va``; when
      asymmetric, the worst phase's apparent power times three / ``sn_va`` (the worst phase against a third of
      the rating).
    - ``max_loading`` ``(S,)``: the largest of both (NaN when nothing is rated).
    - ``losses_w`` ``(S,)``: active losses in lines and transformers, W.
    - ``source_p_w``/``source_q_var`` ``(S,)``: power the source delivers into the feeder;
      ``source_p_ph_w``/``source_q_ph_var`` ``(S, 3)``: the same per phase a, b, c (a symmetric solve: a third each).
    - ``load_passes``: power-flow passes the load-model loop took (1 when no load changed regime).
    """

    converged: NDArray[np.bool_]
    v_pu: FloatArray
    vmin_pu: FloatArray
    vmax_pu: FloatArray
    vmin_bus: NDArray[np.intp]
    vmax_bus: NDArray[np.intp]
    line_loading: FloatArray
    trafo_loading: FloatArray
    max_loading: FloatArray
    losses_w: FloatArray
    source_p_w: FloatArray
    source_q_var: FloatArray
    source_p_ph_w: FloatArray
    source_q_ph_var: FloatArray
    load_passes: int

    @property
    def scenarios(self) -> int:
        return int(self.converged.shape[0])


@dataclass(frozen=True, slots=True)
class _Scenario:
    """One batch's inputs, validated: (S, n) arrays (``p``/``q`` may be (1, n): the same in every scenario);
    ``None`` = zero (``der_q``) or the feeder's (``source``)."""

    der_p: FloatArray
    der_q: FloatArray | None
    p: FloatArray
    q: FloatArray
    source: FloatArray | None
    base: bool = False  # the base case: the PGM model's own input (no update needed)


class _Raw:
    """Per-scenario raw outputs gathered across passes (the first pass writes every row)."""

    def __init__(self, size: int, n_bus: int, phases: int, n_line: int, n_trafo: int, angles: bool) -> None:
        self.u = np.empty((size, n_bus, phases), dtype=FLOAT)
        self.angle = np.empty((size, n_bus, phases) if angles else (0, 0, 0), dtype=FLOAT)
        # Reduced (``angles``): one more column, always 0, the current of lines on dead ends (chain index -1).
        self.line_i = np.empty((size, n_line + angles), dtype=FLOAT)
        if angles:
            self.line_i[:, -1] = 0.0
        self.trafo_s = np.empty((size, n_trafo), dtype=FLOAT)
        self.losses = np.empty(size, dtype=FLOAT)
        self.source_p = np.empty(size, dtype=FLOAT)
        self.source_q = np.empty(size, dtype=FLOAT)
        self.source_p_ph = np.empty((size, 3), dtype=FLOAT)
        self.source_q_ph = np.empty((size, 3), dtype=FLOAT)
        self.failed = np.zeros(size, dtype=bool)


class _RegimeMemory:
    """Settled load regimes of recent scenarios; a new scenario starts from those of the nearest one.

    A speed-up only. Without it every scenario starts from the base case's regimes, and a batch away from the
    base case (the envelope's worst-case loads and source voltage) solves most scenarios twice. Every scenario is
    still re-solved until its regimes match its voltages, so it settles on the same regimes (and the same
    answer) whichever it starts from; only a scenario still flickering at ``max_load_passes`` could differ, and
    a better start makes that rarer. Nearest: by source voltage, every load's P and every DER's P (one unit of
    distance: 1 % of voltage, or 10 % of the feeder's total nominal load). The base case is always remembered, so
    a scenario nearer to it than to anything solved since starts where it did before.
    """

    SIZE = 64  # scenarios remembered (the latest), besides the base case

    def __init__(self, base: NDArray[np.int8], source_v_pu: float, load_p_w: FloatArray, n_der: int) -> None:
        p_ref = max(float(np.abs(load_p_w).sum()), 1.0)
        self._scale = np.concatenate([[0.01], np.full(load_p_w.shape[0] + n_der, 0.1 * p_ref)])
        self._base, self._source = base, source_v_pu
        first = np.concatenate([[source_v_pu], load_p_w, np.zeros(n_der)])[None] / self._scale
        self._features, self._norms, self._regimes = first, (first**2).sum(axis=1), base[None]
        self._all_base = True  # every remembered scenario settled on the base regimes

    def features(self, sc: _Scenario) -> FloatArray:
        size = sc.der_p.shape[0]
        result = np.empty((size, self._scale.shape[0]), dtype=FLOAT)
        result[:, 0] = self._source if sc.source is None else sc.source
        n_load = sc.p.shape[1]
        result[:, 1 : 1 + n_load] = sc.p
        result[:, 1 + n_load :] = sc.der_p
        result /= self._scale
        return result

    @property
    def all_base(self) -> bool:
        """Every remembered scenario settled on the base regimes: a new one starts from them."""
        return self._all_base

    def start(self, features: FloatArray, regime: NDArray[np.int8]) -> bool:
        """Fill ``regime`` ``(S, n_load, phases)`` with the nearest remembered scenarios' regimes; False (and
        ``regime`` untouched) when that would be the base regimes everywhere."""
        if self._all_base:
            return False
        distance = self._norms[None, :] - 2.0 * (features @ self._features.T)  # + |features|^2, the same per row
        np.take(self._regimes, distance.argmin(axis=1), axis=0, out=regime)
        return True

    def remember(self, features: FloatArray, regime: NDArray[np.int8], keep: NDArray[np.bool_]) -> None:
        if keep.all():
            new_features, new_regimes = features, regime
        elif keep.any():
            new_features, new_regimes = features[keep], regime[keep]
        else:
            return
        features = np.concatenate([self._features, new_features])
        regimes = np.concatenate([self._regimes, new_regimes])
        excess = features.shape[0] - 1 - self.SIZE
        if excess > 0:  # row 0, the base case, stays; the rest is the latest SIZE scenarios
            features = np.concatenate([features[:1], features[1 + excess :]])
            regimes = np.concatenate([regimes[:1], regimes[1 + excess :]])
        self._features, self._regimes = features, regimes
        self._norms = (self._features**2).sum(axis=1)
        self._all_base = bool((self._regimes == self._base).all())


def _worst_phase(a: FloatArray, symmetric: bool) -> FloatArray:
    return a if symmetric else a.max(axis=-1)


def _total(a: FloatArray, symmetric: bool) -> FloatArray:
    return a if symmetric else a.sum(axis=-1)


def _phases(a: FloatArray, symmetric: bool) -> FloatArray:
    """Per phase a, b, c on the last axis (a symmetric output: a third of its total on each)."""
    return np.repeat(a[..., None] / 3.0, 3, axis=-1) if symmetric else a


class PowerFlow:
    """The power-flow engine of one feeder: built once, solves batches (see the module docstring)."""

    def __init__(self, feeder: Feeder, options: FlowOptions | None = None) -> None:
        assert_valid_feeder(feeder)
        self.feeder = feeder
        self.options = options or FlowOptions()
        reduction = reduce_feeder(feeder) if self.options.reduce else None
        self.reduction = None if reduction is None or reduction.trivial else reduction
        self._solved = feeder if self.reduction is None else self.reduction.feeder
        self.symmetric = feeder.balanced
        method = self.options.method
        if method == "auto":  # connected (validated): radial when there is one branch fewer than buses
            radial = len(feeder.lines) + len(feeder.transformers) == len(feeder.buses) - 1
            method = "iterative_current" if radial else "newton_raphson"
        self._method = method
        loads = self._solved.loads
        self._n_bus, self._n_line = len(self._solved.buses), len(self._solved.lines)
        self._n_trafo, self._n_load, self._n_der = len(self._solved.transformers), len(loads), len(feeder.ders)
        self._phases = 1 if self.symmetric else 3
        node_base = self._solved.buses.u_rated_v[loads.bus] / SQRT3
        load_base = np.where(loads.phase == Phase.ABC, loads.u_rated_v / SQRT3, loads.u_rated_v)
        self._k = np.where(np.isnan(load_base), 1.0, node_base / load_base)  # load pu = bus pu * k
        table = coefficients(loads)  # (n, regimes, [pq, i, z]) on the load's own voltage base
        # Loads whose characteristic has more than one piece: only these are classified between passes.
        self._banded = np.flatnonzero((table != table[:, :1, :]).any(axis=(1, 2)))
        table[:, :, 1] *= self._k[:, None]
        table[:, :, 2] *= (self._k**2)[:, None]
        self._table = table.reshape(-1, 3)  # row = load * len(Regime) + regime
        self._row = (np.arange(self._n_load) * len(Regime))[None, :, None]
        b = self._banded
        self._band = (loads.vmin_pu[b, None], loads.vmax_pu[b, None], np.nan_to_num(loads.vlow_pu[b, None]))
        self._band_bus = loads.bus[b]
        self._band_k = self._k[b, None]
        self._load_share = phase_share(loads.phase)
        self._band_mask = np.ones((len(b), 1), dtype=bool) if self.symmetric else self._load_share[b] > 0
        self._band_all = bool(self._band_mask.all())
        line_rating = feeder.lines.i_rated_a
        self._line_rating = np.where(line_rating > 0, line_rating, np.nan)
        if self.reduction is not None:
            # Each reduced line carries one current through its chain: the chain's worst loading is that current
            # over its smallest rating (NaN: none rated). Dead-end lines carry none: loading 0 where rated.
            chain = self.reduction.line_chain
            smallest = np.full(self._n_line, np.inf)
            np.fmin.at(smallest, chain[chain >= 0], self._line_rating[chain >= 0])
            self._chain_rating = np.where(np.isfinite(smallest), smallest, np.nan)
            self._dead_rated = bool(np.isfinite(self._line_rating[chain < 0]).any())
        self._trafo_rating = feeder.transformers.sn_va / (1.0 if self.symmetric else 3.0)
        # The PGM model holds, per load, only the ZIP pieces the regimes met so far use; a regime needing another
        # rebuilds it (rare: it only grows). This keeps PGM free of loads that are always zero.
        self._pieces = np.zeros((self._n_load, 3), dtype=bool)
        self._set_base(np.zeros((self._n_load, self._phases), dtype=np.int8))  # the regimes the base settles from
        self._scratch: dict[int, ExpandScratch] = {}  # per batch size, for expanding the reduced solution
        self._base_ready = False  # the PGM input holds the settled base case: solve() needs no update
        self._ensure_pieces(self._base_regime[None])
        self._set_base(self._settle_base())
        self._base_ready = True
        self._build()
        self._memory = _RegimeMemory(self._base_regime, feeder.source.v_pu, loads.p_w, self._n_der)
        self._derived: OrderedDict[Hashable, Any] = OrderedDict()

    # -- public API -----------------------------------------------------------------------------------------
    #: Values kept by :meth:`derived` (the latest used).
    DERIVED_SIZE = 16

    def derived(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, kept under ``key`` for the next call with an equal key: for values that ``key`` and this
        engine's feeder (immutable) determine alone, such as a check resolved at an operating point. Callers
        must not modify what it returns."""
        cache = self._derived
        if key in cache:
            cache.move_to_end(key)
            value: T = cache[key]
            return value
        value = cache[key] = build()
        if len(cache) > self.DERIVED_SIZE:
            cache.popitem(last=False)
        return value

    @property
    def layout(self) -> PgmLayout:
        """Where the solved (reduced) feeder's elements sit in the power-grid-model model."""
        return self._runner.layout

    def solve(self) -> FlowResult:
        """The base case: nominal loads, every DER at 0 W (a batch of one)."""
        loads = self.feeder.loads
        regime = self._base_regime[None].copy()
        raw, passes = self._passes(_Scenario(np.zeros((1, self._n_der), dtype=FLOAT), None, loads.p_w[None, :],
                                             loads.q_var[None, :], None, base=True), regime)
        return self._result(raw, passes)

    def solve_batch(
        self, der_p_w: ArrayLike, *, der_q_var: ArrayLike | None = None, load_scale: ArrayLike | None = None,
        load_p_w: ArrayLike | None = None, load_q_var: ArrayLike | None = None,
        source_v_pu: ArrayLike | None = None,
    ) -> FlowResult:
        """Solve ``S`` scenarios, one per row of ``der_p_w`` ``(S, n_der)`` (see the module docstring)."""
        der_p = self._matrix(der_p_w, "der_p_w", None, self._n_der)
        size = der_p.shape[0]
        der_q = None if der_q_var is None else self._matrix(der_q_var, "der_q_var", size, self._n_der)
        loads = self.feeder.loads
        p = loads.p_w[None, :] if load_p_w is None else self._matrix(load_p_w, "load_p_w", size, self._n_load)
        q = loads.q_var[None, :] if load_q_var is None else self._matrix(load_q_var, "load_q_var", size,
                                                                           self._n_load)
        if load_scale is not None:
            scale = np.asarray(load_scale, dtype=FLOAT)
            if scale.shape == (size,):
                scale = scale[:, None]
            elif scale.shape != (size, self._n_load):
                raise ScenarioError(f"load_scale: expected shape ({size},) or ({size}, {self._n_load}), "
                                    f"got {scale.shape}")
            p, q = p * scale, q * scale
        source = None
        if source_v_pu is not None:
            source = np.asarray(source_v_pu, dtype=FLOAT)
            if source.shape != (size,) or not np.isfinite(source).all():
                raise ScenarioError(f"source_v_pu: expected ({size},) finite values, got shape {source.shape}")
        scenario = _Scenario(der_p, der_q, p, q, source)  # p, q: (S, n_load) or (1, n_load) for every scenario
        regime = np.empty((size, self._n_load, self._phases), dtype=np.int8)
        memory = self._memory
        features = None if memory.all_base else memory.features(scenario)
        recalled = features is not None and memory.start(features, regime)
        if not recalled:
            regime[:] = self._base_regime
        raw, passes = self._passes(scenario, regime, recalled=recalled)
        if recalled or passes > 1:  # else every scenario settled on the base regimes: nothing new to remember
            memory.remember(memory.features(scenario) if features is None else features, regime, ~raw.failed)
        return self._result(raw, passes)

    # -- internals ------------------------------------------------------------------------------------------
    @staticmethod
    def _matrix(value: ArrayLike, name: str, size: int | None, n: int) -> FloatArray:
        array = np.asarray(value, dtype=FLOAT)
        if array.ndim != 2 or array.shape[1] != n or (size is not None and array.shape[0] != size):
            rows = "S" if size is None else str(size)
            raise ScenarioError(f"{name}: expected shape ({rows}, {n}), got {array.shape}")
        if not np.isfinite(array).all():
            raise ScenarioError(f"{name}: every value must be a finite number")
        return array

    def _ensure_pieces(self, regime: NDArray[np.int8]) -> None:
        """(Re)build the PGM model if ``regime`` needs a ZIP piece it does not hold."""
        needed = (self._table[self._row + regime] != 0).any(axis=(0, 2))  # (n_load, 3)
        if hasattr(self, "_runner") and not (needed & ~self._pieces).any():
            return
        self._pieces |= needed
        self._build()

    def _build(self) -> None:
        """Build the PGM model with the current pieces; its input is the base case once that is settled."""
        layout = pgm_layout(self._solved, symmetric=self.symmetric, pieces=self._pieces)
        self._blocks = []
        offset = 0
        for piece, index in enumerate(layout.load_blocks):
            if len(index):
                self._blocks.append((piece, offset, offset + len(index), index, self._load_share[index]))
            offset += len(index)
        if self._base_ready and layout.load_id.size:
            loads = self._solved.loads
            phase = () if self.symmetric else (3,)
            p = np.zeros((1, layout.load_id.size, *phase), dtype=FLOAT)
            q = np.zeros_like(p)
            self._load_values(slice(None), loads.p_w[None, :], loads.q_var[None, :],
                              self._table[self._row + self._base_regime[None]], p, q)
            layout.input_data[layout.load_type]["p_specified"] = p[0]
            layout.input_data[layout.load_type]["q_specified"] = q[0]
        self._runner = Runner(layout, self.feeder.frequency_hz, error_tolerance=self.options.error_tolerance,
                              max_iterations=self.options.max_iterations, fast=self.options.fast_path,
                              angles=self.reduction is not None, method=self._method)

    def _set_base(self, regime: NDArray[np.int8]) -> None:
        """The base case's regimes ``(n_load, phases)``, and what a batch starting from them uses."""
        self._base_regime = regime
        self._base_coef = self._table[self._row + regime[None]]  # (1, n_load, phases, [pq, i, z])
        self._base_banded = regime[self._banded]

    def _settle_base(self) -> NDArray[np.int8]:
        loads = self._solved.loads
        regime = np.zeros((1, self._n_load, self._phases), dtype=np.int8)
        self._passes(_Scenario(np.zeros((1, self._n_der), dtype=FLOAT), None, loads.p_w[None, :],
                               loads.q_var[None, :], None), regime)
        base: NDArray[np.int8] = regime[0]
        return base

    def _load_values(self, rows: NDArray[np.intp] | slice, p_all: FloatArray, q_all: FloatArray, coef: FloatArray,
                     out_p: FloatArray, out_q: FloatArray) -> None:
        """PGM load powers (each ZIP piece of each load, per phase when asymmetric) into ``out_p``/``out_q``."""
        p, q = (p_all, q_all) if p_all.shape[0] == 1 else (p_all[rows], q_all[rows])
        for piece, start, stop, index, share in self._blocks:
            c = coef[..., piece][:, index]  # (k, loads of this piece, phases)
            if self.symmetric:
                out_p[:, start:stop] = p[:, index] * c[:, :, 0]
                out_q[:, start:stop] = q[:, index] * c[:, :, 0]
            else:
                out_p[:, start:stop] = p[:, index, None] * share * c
                out_q[:, start:stop] = q[:, index, None] * share * c

    def _fill(self, ws: Workspace, rows: NDArray[np.intp] | slice, sc: _Scenario, coef: FloatArray) -> None:
        self._load_values(rows, sc.p, sc.q, coef, ws.load_p, ws.load_q)
        if self._n_der:
            der_p = sc.der_p[rows]
            der_q = 0.0 if sc.der_q is None else sc.der_q[rows]
            if self.symmetric:
                ws.gen_p[:] = der_p
                ws.gen_q[:] = der_q
            else:
                share = self._runner.layout.der_share
                ws.gen_p[:] = der_p[:, :, None] * share
                ws.gen_q[:] = 0.0 if sc.der_q is None else sc.der_q[rows][:, :, None] * share
        if sc.source is not None:
            ws.source_u[:, 0] = sc.source[rows]

    def _collect(self, ws: Workspace, rows: NDArray[np.intp] | slice, failed: NDArray[np.bool_], raw: _Raw) -> None:
        if failed.any():  # power-grid-model leaves a failed scenario's outputs unset: any bits, NaN'd in _result
            with np.errstate(all="ignore"):
                self._gather(ws, rows, failed, raw)
        else:
            self._gather(ws, rows, failed, raw)

    def _gather(self, ws: Workspace, rows: NDArray[np.intp] | slice, failed: NDArray[np.bool_], raw: _Raw) -> None:
        sym, out = self.symmetric, ws.out
        node = out[ComponentType.node]
        u = node["u_pu"]
        raw.u[rows] = u[:, :, None] if sym else u
        if self.reduction is not None:
            angle = node["u_angle"]
            raw.angle[rows] = angle[:, :, None] if sym else angle
        losses = np.zeros(ws.size, dtype=FLOAT)
        if self._n_line:
            line = out[ComponentType.line]
            raw.line_i[rows, : self._n_line] = _worst_phase(np.maximum(line["i_from"], line["i_to"]), sym)
            losses += _total(line["p_from"] + line["p_to"], sym).sum(axis=1)
        if self._n_trafo:
            trafo = out[ComponentType.transformer]
            raw.trafo_s[rows] = _worst_phase(np.maximum(trafo["s_from"], trafo["s_to"]), sym)
            losses += _total(trafo["p_from"] + trafo["p_to"], sym).sum(axis=1)
        raw.losses[rows] = losses
        source = out[ComponentType.source]
        raw.source_p[rows] = _total(source["p"], sym).sum(axis=1)
        raw.source_q[rows] = _total(source["q"], sym).sum(axis=1)
        raw.source_p_ph[rows] = _phases(source["p"], sym).sum(axis=1)
        raw.source_q_ph[rows] = _phases(source["q"], sym).sum(axis=1)
        raw.failed[rows] = failed

    def _newton_fallback(self, index: NDArray[np.intp], failed: NDArray[np.bool_], sc: _Scenario,
                         regime: NDArray[np.int8], raw: _Raw) -> NDArray[np.bool_]:
        """Re-solve with Newton-Raphson the scenarios another method did not converge."""
        again = index[failed]
        ws = self._runner.workspace(len(again), source=sc.source is not None)
        self._fill(ws, again, sc, self._table[self._row + regime[again]])
        still = self._runner.run(ws, CalculationMethod.newton_raphson)
        self._collect(ws, again, still, raw)
        result = failed.copy()
        result[failed] = still
        return result

    def _passes(self, sc: _Scenario, regime: NDArray[np.int8], *, recalled: bool = False) -> tuple[_Raw, int]:
        """Solve ``sc`` from the load regimes ``regime`` ``(S, n_load, phases)`` (updated in place to the settled
        ones); ``recalled``: they came from :class:`_RegimeMemory`, not all from the base case."""
        size = sc.der_p.shape[0]
        raw = _Raw(size, self._n_bus, self._phases, self._n_line, self._n_trafo, self.reduction is not None)
        index = np.arange(size)
        rows: NDArray[np.intp] | slice = slice(None)
        count, passes, banded = size, 0, self._banded
        retried = np.zeros(size, dtype=bool)
        while True:
            passes += 1
            current = regime[rows]
            if passes == 1 and sc.base and self._base_ready:
                ws = self._runner.workspace(1, single=True)  # the model's own input is this scenario
            else:
                if passes > 1 or recalled:
                    # Recalled regimes were solved before, so the model holds their pieces (they only grow).
                    if passes > 1:
                        self._ensure_pieces(current)
                    coef = self._table[self._row + current]  # (k, n_load, phases, [pq, i, z])
                else:
                    coef = self._base_coef  # (1, n_load, phases, [pq, i, z]): every row in the base regimes
                ws = self._runner.workspace(count, source=sc.source is not None)
                self._fill(ws, rows, sc, coef)
            failed = self._runner.run(ws)
            self._collect(ws, rows, failed, raw)
            if failed.any() and self._runner.method != CalculationMethod.newton_raphson:
                failed = self._newton_fallback(index[rows], failed, sc, regime, raw)
            if passes >= self.options.max_load_passes or not banded.size:
                break
            sub = index[rows]
            first = passes == 1 and not recalled  # every row in the base regimes: no gathers
            u = raw.u if first else raw.u[sub]
            v_load = u[:, self._band_bus] * self._band_k  # (k, n_banded, phases)
            new = classify(v_load, *self._band)
            differs = new != (self._base_banded if first else current[:, banded])
            if not self._band_all:
                differs &= self._band_mask
            changed = differs.any(axis=(1, 2)) & ~failed
            # A scenario that failed with its loads at constant power is retried once with every banded load an
            # impedance (what OpenDSS's loads become at low voltage); the next pass re-classifies from there.
            retry = failed & ~retried[sub]
            if not (changed.any() or retry.any()):
                break
            regime[sub[changed][:, None], banded[None, :], :] = new[changed]
            regime[sub[retry][:, None], banded[None, :], :] = Regime.ZLOW
            retried[sub[retry]] = True
            again = sub[changed | retry]
            rows, count = again, int(again.shape[0])
        return raw, passes

    def _result(self, raw: _Raw, passes: int) -> FlowResult:
        if raw.failed.any():  # their rows hold whatever power-grid-model left there until NaN'd below
            with np.errstate(all="ignore"):
                return self._assemble(raw, passes)
        return self._assemble(raw, passes)

    def _assemble(self, raw: _Raw, passes: int) -> FlowResult:
        size = raw.failed.shape[0]
        failed = raw.failed
        phases = self._phases
        magnitude = raw.u
        if self.reduction is not None:
            red = self.reduction
            scratch = self._scratch.get(size)
            if scratch is None:
                scratch = self._scratch[size] = red.scratch(size, phases)
                while len(self._scratch) > Runner.MAX_WORKSPACES:
                    self._scratch.pop(next(iter(self._scratch)))
            magnitude = red.expand_magnitude(raw.u * np.exp(1j * raw.angle), scratch)
            if not self.symmetric:
                magnitude = magnitude.copy()  # the scratch is reused; the result is the caller's
            line_loading = np.take(raw.line_i, red.line_chain, axis=1)  # chain -1: the zero column
            line_loading /= self._line_rating
            worst = [raw.line_i[:, :-1] / self._chain_rating]  # the same maxima, over the chains only
            if self._dead_rated:
                worst.append(np.zeros((size, 1)))
        else:
            line_loading = raw.line_i / self._line_rating
            worst = [line_loading]
        u = magnitude.reshape(size, -1)
        rows = np.arange(size)
        vmax_at, vmin_at = u.argmax(axis=1), u.argmin(axis=1)
        vmax, vmin = u[rows, vmax_at], u[rows, vmin_at]  # NaN only for failed scenarios
        vmax_bus, vmin_bus = vmax_at // phases, vmin_at // phases
        v = np.repeat(magnitude, 3, axis=2) if self.symmetric else magnitude
        trafo_loading = raw.trafo_s / self._trafo_rating
        both = np.concatenate([*worst, trafo_loading], axis=1)
        max_loading = np.fmax.reduce(both, axis=1) if both.shape[1] else np.full(size, np.nan)
        if failed.any():
            for array in (v, vmax, vmin, line_loading, trafo_loading, max_loading, raw.losses, raw.source_p,
                          raw.source_q, raw.source_p_ph, raw.source_q_ph):
                array[failed] = np.nan
            vmax_bus[failed] = vmin_bus[failed] = -1
        return FlowResult(
            converged=~failed, v_pu=v, vmin_pu=vmin, vmax_pu=vmax, vmin_bus=vmin_bus, vmax_bus=vmax_bus,
            line_loading=line_loading, trafo_loading=trafo_loading, max_loading=max_loading, losses_w=raw.losses,
            source_p_w=raw.source_p, source_q_var=raw.source_q, source_p_ph_w=raw.source_p_ph,
            source_q_ph_var=raw.source_q_ph, load_passes=passes,
        )
