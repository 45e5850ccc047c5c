"""AC power flow over a feeder: the engine the state estimator and the envelope build on.

Owns :class:`PowerFlow` (a power-grid-model Newton-Raphson model built once per feeder, solving batches of
scenarios) and :class:`FlowResult` (what a batch solve returns). Pure: no I/O, no clocks, no threads.

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
voltage dependence (:mod:`gateway.twin._loadmodel`): each solve starts every load in its base-case regime,
solves, re-classifies each load (and phase) by its voltage, and re-solves only the scenarios where a regime
changed, until none changes (a scenario that does not converge is retried once from every banded load at
constant impedance) (``FlowResult.load_passes`` counts the passes; at most ``FlowOptions.max_load_passes``,
after which the last solve stands: the characteristic is continuous, so a load flickering at a band edge
costs only the difference between two pieces that meet there).

Balanced feeders (every load and DER three-phase) use the symmetric calculation, others the asymmetric one.

Speed (2-core machine, medians; see tests/twin/test_timing.py): one solve on the Baran-Wu 33-bus feeder
~0.1 ms, a batch ~25 us per scenario; the IEEE European LV feeder (asymmetric, 907 buses) ~1 ms per scenario.
An engine reuses preallocated update/output buffers per batch size and is therefore not thread-safe: use one
engine per thread.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class FlowOptions:
    """Solver settings: Newton tolerance (pu voltage) and iterations, load-model passes, speed-ups."""

    error_tolerance: float = 1e-8
    max_iterations: int = 20
    max_load_passes: int = 8
    fast_path: bool = True
    reduce: bool = True  # solve the exact reduction (gateway.twin._reduce); False: the feeder as given
    #: power-grid-model's method: "newton_raphson", or "iterative_current" (faster in batches: it factorises the
    #: admittance matrix once; scenarios it does not converge are re-solved with Newton-Raphson).
    method: str = "newton_raphson"


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
    - ``source_p_w``/``source_q_var`` ``(S,)``: power the source delivers into the feeder.
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
    load_passes: int

    @property
    def scenarios(self) -> int:
        return int(self.converged.shape[0])


@dataclass(frozen=True, slots=True)
class _Scenario:
    """One batch's inputs, validated: (S, n) arrays; ``None`` = zero (``der_q``) or the feeder's (``source``)."""

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
        self.line_i = np.empty((size, n_line), dtype=FLOAT)
        self.trafo_s = np.empty((size, n_trafo), dtype=FLOAT)
        self.losses = np.empty(size, dtype=FLOAT)
        self.source_p = np.empty(size, dtype=FLOAT)
        self.source_q = np.empty(size, dtype=FLOAT)
        self.failed = np.zeros(size, dtype=bool)


def _worst_phase(a: FloatArray, symmetric: bool) -> FloatArray:
    return a if symmetric else a.max(axis=-1)


def _total(a: FloatArray, symmetric: bool) -> FloatArray:
    return a if symmetric else a.sum(axis=-1)


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
        line_rating = feeder.lines.i_rated_a
        self._line_rating = np.where(line_rating > 0, line_rating, np.nan)
        self._trafo_rating = feeder.transformers.sn_va / (1.0 if self.symmetric else 3.0)
        # The PGM model holds, per load, only the ZIP pieces the regimes met so far use; a regime needing another
        # rebuilds it (rare: it only grows). This keeps PGM free of loads that are always zero.
        self._pieces = np.zeros((self._n_load, 3), dtype=bool)
        self._base_regime = np.zeros((self._n_load, self._phases), dtype=np.int8)
        self._scratch: dict[int, ExpandScratch] = {}  # per batch size, for expanding the reduced solution
        self._base_ready = False  # the PGM input holds the settled base case: solve() needs no update
        self._ensure_pieces(self._base_regime[None])
        self._base_regime = self._settle_base()
        self._base_ready = True
        self._build()

    # -- public API -----------------------------------------------------------------------------------------
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
        regime = np.empty((size, self._n_load, self._phases), dtype=np.int8)
        regime[:] = self._base_regime
        scenario = _Scenario(der_p, der_q, np.broadcast_to(p, (size, self._n_load)),
                             np.broadcast_to(q, (size, self._n_load)), source)
        raw, passes = self._passes(scenario, regime)
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
                              angles=self.reduction is not None, method=self.options.method)

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
        p, q = p_all[rows], q_all[rows]
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
            raw.line_i[rows] = _worst_phase(np.maximum(line["i_from"], line["i_to"]), sym)
            losses += _total(line["p_from"] + line["p_to"], sym).sum(axis=1)
        if self._n_trafo:
            trafo = out[ComponentType.transformer]
            raw.trafo_s[rows] = _worst_phase(np.maximum(trafo["s_from"], trafo["s_to"]), sym)
            losses += _total(trafo["p_from"] + trafo["p_to"], sym).sum(axis=1)
        raw.losses[rows] = losses
        source = out[ComponentType.source]
        raw.source_p[rows] = _total(source["p"], sym).sum(axis=1)
        raw.source_q[rows] = _total(source["q"], sym).sum(axis=1)
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

    def _passes(self, sc: _Scenario, regime: NDArray[np.int8]) -> tuple[_Raw, int]:
        size = sc.der_p.shape[0]
        raw = _Raw(size, self._n_bus, self._phases, self._n_line, self._n_trafo, self.reduction is not None)
        rows: NDArray[np.intp] | slice = slice(None)
        count, passes, banded = size, 0, self._banded
        retried = np.zeros(size, dtype=bool)
        while True:
            passes += 1
            coef = self._table[self._row + regime[rows]]  # (k, n_load, phases, [pq, i, z])
            if passes > 1:
                self._ensure_pieces(regime[rows])
            if passes == 1 and sc.base and self._base_ready:
                ws = self._runner.workspace(1, single=True)  # the model's own input is this scenario
            else:
                ws = self._runner.workspace(count, source=sc.source is not None)
                self._fill(ws, rows, sc, coef)
            failed = self._runner.run(ws)
            self._collect(ws, rows, failed, raw)
            if failed.any() and self._runner.method != CalculationMethod.newton_raphson:
                failed = self._newton_fallback(np.arange(size)[rows], failed, sc, regime, raw)
            if passes >= self.options.max_load_passes or not banded.size:
                break
            index = np.arange(size)[rows]
            v_load = raw.u[rows][:, self._band_bus, :] * self._band_k
            new = classify(v_load, *self._band)
            changed = ((new != regime[rows][:, banded, :]) & self._band_mask).any(axis=(1, 2)) & ~failed
            # A scenario that failed with its loads at constant power is retried once with every banded load an
            # impedance (what OpenDSS's loads become at low voltage); the next pass re-classifies from there.
            retry = failed & ~retried[index]
            if not (changed.any() or retry.any()):
                break
            regime[index[changed][:, None], banded[None, :], :] = new[changed]
            regime[index[retry][:, None], banded[None, :], :] = Regime.ZLOW
            retried[index[retry]] = True
            nxt = index[changed | retry]
            rows, count = nxt, int(nxt.shape[0])
        return raw, passes

    def _result(self, raw: _Raw, passes: int) -> FlowResult:
        size = raw.failed.shape[0]
        failed = raw.failed
        phases = self._phases
        magnitude, line_i = raw.u, raw.line_i
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
            line_i = np.where(red.line_chain >= 0, raw.line_i[:, np.maximum(red.line_chain, 0)], 0.0)
        u = magnitude.reshape(size, -1)
        vmax, vmin = u.max(axis=1), u.min(axis=1)  # NaN only for failed scenarios: every bus has its phases
        vmax_bus = u.argmax(axis=1) // phases
        vmin_bus = u.argmin(axis=1) // phases
        v = np.repeat(magnitude, 3, axis=2) if self.symmetric else magnitude
        line_loading = line_i / self._line_rating
        trafo_loading = raw.trafo_s / self._trafo_rating
        both = np.concatenate([line_loading, trafo_loading], axis=1)
        max_loading = np.fmax.reduce(both, axis=1) if both.shape[1] else np.full(size, np.nan)
        if failed.any():
            for array in (v, vmax, vmin, line_loading, trafo_loading, max_loading, raw.losses, raw.source_p,
                          raw.source_q):
                array[failed] = np.nan
            vmax_bus[failed] = vmin_bus[failed] = -1
        return FlowResult(
            converged=~failed, v_pu=v, vmin_pu=vmin, vmax_pu=vmax, vmin_bus=vmin_bus, vmax_bus=vmax_bus,
            line_loading=line_loading, trafo_loading=trafo_loading, max_loading=max_loading, losses_w=raw.losses,
            source_p_w=raw.source_p, source_q_var=raw.source_q, load_passes=passes,
        )
