"""State estimation: the feeder's operating point from what the gateway measures, and how sure of it we are.

Owns :class:`StateEstimator` (built once per feeder, estimates batches), :class:`EstimateOptions`,
:class:`Estimate` (what it returns) and :class:`ObservabilityError`. Usage::

    estimator = StateEstimator(feeder)                       # priors: load_priors(feeder) unless given
    m = Measurements.create(feeder, der_p=(p, 50.0), der_q=(q, 50.0), head_p=..., head_q=..., head_v=...)
    est = estimator.estimate(m)                              # S scenarios (rows); a single one is a batch of one
    est.v_pu, est.v_sigma_pu                                 # (S, n_bus, 3) phase voltages and their 1-sigma
    est.load_p_w, est.load_p_sigma_w                         # (S, n_load) each load's P (and Q) and its 1-sigma
    StateEstimator(feeder, EstimateOptions(uncertainty=False))  # the same values without sigmas (see below)

The estimate. power-grid-model's weighted-least-squares state estimation (Newton-Raphson by default, the WLS
optimum; or its iterative linear method, a slightly less efficient estimate; symmetric on balanced feeders,
asymmetric otherwise) on the feeder downstream of the head meter (:mod:`gateway.twin._estimate_model`; buses
upstream of it come back NaN). Its inputs are the DER readings (P, Q, V from SunSpec), the head meter (P, Q, V per
phase), AMI readings of some loads, and a pseudo-measurement for every other load (its prior,
:func:`gateway.twin.load_priors`; an AMI reading replaces the prior of its load, it is not fused with it).
Scenarios are grouped by which readings they have; each group is one batched PGM call (retried at other power
scales where PGM's solver fails, :mod:`gateway.twin._estimate_pgm`). A scenario the estimator cannot solve comes
back with ``converged`` False and NaN, never an exception; a pattern of readings that cannot determine the state
raises :class:`ObservabilityError` naming what is missing.

The uncertainty: the linearised estimator (the delta method), from finite differences of the estimator itself.
With ``z`` the scenario's readings (priors included) and ``y = g(z)`` the estimate, every reading ``i`` is moved
by ``step * sigma_i`` and the estimator re-run (all in the same batch: ``1 + m`` estimates per scenario, ``m``
readings: ~80 on Baran-Wu's feeder with three DERs, ~130 on the IEEE European LV one). Column ``i`` of
``L = (g(z + step sigma_i e_i) - g(z)) / step`` is ``sigma_i dg/dz_i``, and the covariance of the estimate's error
is ``L L^T`` (``J R J^T``, ``R`` = the readings' variances); each reported sigma is the square root of its diagonal.
This assumes:

1. every reading, prior included, is the truth plus an independent zero-mean Gaussian error with the stated sigma
   (for a prior: the true load is distributed as the prior says). A sigma stated too small makes every sigma
   derived from it too small; bias (a meter off by a constant) is not covered;
2. the network model is right (topology, impedances, phase connections); in an asymmetric estimate the head bus's
   phase angles are 0, -120, +120 degrees (the truth's differ by the transformer's unbalanced drop: 1e-5 pu of
   voltage error on the test feeders with exact readings);
3. the estimator is linear over the spread of the errors (first order). The exact readings of a true state give
   back that state (zero residual), so the error is ``J (z - z_true)``.

With the WLS weights equal to the readings' inverse variances, ``J R J^T`` is the gain-matrix covariance
``(H^T W H)^-1`` mapped onto the outputs. The estimator's weights differ in places (the absent phases of
single-phase elements, PGM's one sigma per three-phase voltage sensor), which costs a little optimality; the
reported sigmas stay honest because they propagate each reading's own sigma through the estimator actually used.

Losses are quadratic in the currents, so the losses of the estimated state understate the losses to expect given
the readings by ``sum over lines of tr(G Cov(dV))`` (``G`` the line's conductance matrix in the phase frame,
``dV`` the voltage across it; a third of a sigma on both test feeders): the reported losses include that
correction, computed from the same finite differences (shunt capacitance and transformers inside the feeder are
left out of it). Their sigma is first order like every other.

DER voltages in an asymmetric estimate: power-grid-model 1.12 has no single-phase voltage sensor, so they are
applied after the solve as a linear-Gaussian (Kalman, Joseph form) update of every output, with the covariance
above: what adding them to the linearised WLS would do. In a symmetric estimate they are PGM voltage sensors.

Without the uncertainty (``EstimateOptions(uncertainty=False)``, for a caller that uses the estimate and not its
sigmas): one PGM estimate per scenario instead of ``1 + m``, the same values (the same PGM calls on the same
inputs), every ``*_sigma*`` NaN and ``losses_w`` NaN (its correction above is made of the covariance). Except in
an asymmetric estimate with DER voltage readings: those are applied through the covariance, so its finite
differences still run (the values stay the same, the cost does too) and are then dropped. A scenario counts as
solved when its one estimate solves (with the uncertainty: when all ``1 + m`` do at the same power scale).

Measured (tests/twin/test_estimate.py): over 200 noisy draws on Baran-Wu's feeder and 16 on the European LV one
(and 8 more seeds of each, run by hand), errors / sigma are standard normal for voltages, loads, DERs, head flow
and losses; pandapower's own WLS estimator finds the same state to 1e-13 pu. Cost (tests/benchmarks/
bench_estimate.py, 2-core machine under other load): Baran-Wu with 3 DERs ~15 ms per scenario with every sigma
(pandapower's WLS estimate alone: ~60 ms); the European LV feeder ~0.2-0.4 s per scenario (129 asymmetric PGM
estimates of ~1-3 ms on its reduced network).
Without the uncertainty (tests/benchmarks/bench_segment.py, the daemon's point from one scenario): Baran-Wu ~2 ms
instead of ~10 ms; the European LV feeder no faster (~0.33 s, two estimates), its DER voltage readings needing the
covariance (without them, by hand over 24 draws of tests/test_segment.py: ~11 ms, but voltages no closer to the
truth than head-meter scaling's).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.twin._errors import FeederIssue
from gateway.twin._estimate_model import Cut, Pattern, SensorPlan, cut_at_head, observability_issues
from gateway.twin._estimate_pgm import Columns, EstimationError, SeModel, SeOutput, choose_scale, scales
from gateway.twin._feeder import FLOAT, Feeder
from gateway.twin._measurements import MeasurementError, Measurements, validate_measurements
from gateway.twin._pgm import SQRT3, phase_share
from gateway.twin._priors import LoadPriors, load_priors
from gateway.twin._reduce import FORTESCUE, FORTESCUE_INV, Reduction, reduce_feeder
from gateway.twin._validate import assert_valid_feeder

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

__all__ = ["Estimate", "EstimateOptions", "EstimationError", "ObservabilityError", "StateEstimator"]


class ObservabilityError(MeasurementError):
    """The readings cannot determine the state: ``issues`` names what is missing (and in which scenario rows)."""


@dataclass(frozen=True, slots=True)
class EstimateOptions:
    """Estimator settings.

    ``method``: power-grid-model's ``"newton_raphson"`` (the WLS optimum) or ``"iterative_linear"``.
    ``head``: where the head meter sits (:func:`gateway.twin._estimate_model.cut_at_head`).
    ``reduce``: estimate on the exact reduction of the network (:mod:`gateway.twin._reduce`).
    ``step``: the finite-difference step of the uncertainty, in sigmas of the moved reading.
    ``uncertainty``: False skips the finite-difference covariance: same values, every sigma and ``losses_w`` NaN.
    """

    method: str = "newton_raphson"
    head: str = "auto"
    reduce: bool = True
    error_tolerance: float | None = None  # pu voltage; None: 1e-10 (Newton-Raphson), 1e-8 (iterative linear)
    max_iterations: int | None = None  # None: 30 (Newton-Raphson), 500 (iterative linear: linear convergence)
    step: float = 0.1
    uncertainty: bool = True

    @property
    def tolerance(self) -> float:
        if self.error_tolerance is not None:
            return self.error_tolerance
        return 1e-10 if self.method == "newton_raphson" else 1e-8

    @property
    def iterations(self) -> int:
        if self.max_iterations is not None:
            return self.max_iterations
        return 30 if self.method == "newton_raphson" else 500

    def __post_init__(self) -> None:
        issues = []
        if self.method not in ("newton_raphson", "iterative_linear"):
            issues.append(FeederIssue("estimator", "method", (self.method,),
                                      "expected 'newton_raphson' or 'iterative_linear'"))
        if not (math.isfinite(self.tolerance) and self.tolerance > 0) or self.iterations < 1:
            issues.append(FeederIssue("estimator", "error_tolerance", (), "needs error_tolerance > 0 and "
                                                                         "max_iterations >= 1"))
        if not isinstance(self.uncertainty, bool):
            issues.append(FeederIssue("estimator", "uncertainty", (), f"expected true or false, got "
                                                                      f"{self.uncertainty!r}"))
        if not (math.isfinite(self.step) and 0 < self.step <= 1):
            issues.append(FeederIssue("estimator", "step", (), f"expected 0 < step <= 1 sigma, got {self.step!r}"))
        if issues:
            raise MeasurementError(issues)


@dataclass(frozen=True, slots=True, eq=False)
class Estimate:
    """``S`` estimated scenarios, feeder order; every ``*_sigma*`` is the 1-sigma of the value beside it.

    - ``converged`` ``(S,)``: the estimator solved the scenario (rows that did not are NaN).
    - ``v_pu``/``v_sigma_pu`` ``(S, n_bus, 3)``: phase-to-neutral voltage magnitudes, pu of the bus nominal (a
      symmetric estimate repeats the positive-sequence value); NaN for buses upstream of the head meter.
    - ``load_p_w``/``load_q_var`` ``(S, n_load)``: the power each load draws (+ consumption).
    - ``der_p_w``/``der_q_var`` ``(S, n_der)``: each DER's output (+ export), estimated also where unmeasured.
    - ``head_p_w``/``head_q_var`` ``(S,)``: the power flowing into the feeder at the head meter.
    - ``losses_w`` ``(S,)``: active losses downstream of the head meter.
    - ``readings`` ``(S,)``: how many readings (priors included) the uncertainty propagates.
    - ``head_bus``: the bus the head meter measures (index into the feeder's buses).
    - ``uncertainty``: False when made with ``EstimateOptions(uncertainty=False)``: then every ``*_sigma*`` array
      and ``losses_w`` (the expected losses need the covariance) are NaN; every other value is the same.

    A sigma is NaN when a finite-difference estimate of its scenario did not converge.
    """

    converged: BoolArray
    v_pu: FloatArray
    v_sigma_pu: FloatArray
    load_p_w: FloatArray
    load_p_sigma_w: FloatArray
    load_q_var: FloatArray
    load_q_sigma_var: FloatArray
    der_p_w: FloatArray
    der_p_sigma_w: FloatArray
    der_q_var: FloatArray
    der_q_sigma_var: FloatArray
    head_p_w: FloatArray
    head_p_sigma_w: FloatArray
    head_q_var: FloatArray
    head_q_sigma_var: FloatArray
    losses_w: FloatArray
    losses_sigma_w: FloatArray
    readings: NDArray[np.intp]
    head_bus: int
    method: str
    uncertainty: bool = True

    @property
    def scenarios(self) -> int:
        return int(self.converged.shape[0])


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each output sits in a flat output row: voltage magnitudes of the cut buses (x phases), the scalars
    (load P, load Q, DER P, DER Q, head P, head Q, losses), then the real and imaginary parts of the solved
    network's complex voltages (for the DER-voltage update and the loss correction)."""

    n_v: int
    n_load: int
    n_der: int
    n_c: int

    def sl(self, k: int) -> slice:
        sizes = [self.n_v, self.n_load, self.n_load, self.n_der, self.n_der, 1, 1, 1, self.n_c, self.n_c]
        start = sum(sizes[:k])
        return slice(start, start + sizes[k])

    @property
    def width(self) -> int:
        return self.n_v + 2 * self.n_load + 2 * self.n_der + 3 + 2 * self.n_c


def _conductances(solved: Feeder, symmetric: bool) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[Any]]:
    """Per line of the solved network: its ends and ``G`` with ``losses = dV^H G dV`` for the voltage difference
    ``dV`` across it in pu: ``(n_line,)`` when symmetric (three phases of the positive sequence), ``(n_line, 3, 3)``
    Hermitian otherwise (phase frame, from the sequence impedances). W per pu**2; shunt capacitance ignored."""
    ln = solved.lines
    base_v = solved.buses.u_rated_v[ln.from_bus] / SQRT3  # V per pu, phase to neutral
    z1 = ln.r1_ohm + 1j * ln.x1_ohm
    if symmetric:
        g: NDArray[Any] = 3.0 * np.real(1.0 / z1) * base_v**2
        return ln.from_bus.astype(np.intp), ln.to_bus.astype(np.intp), g
    z0 = ln.r0_ohm + 1j * ln.x0_ohm
    seq = np.zeros((len(ln), 3, 3), dtype=np.complex128)
    seq[:, 0, 0], seq[:, 1, 1], seq[:, 2, 2] = z0, z1, z1
    z = FORTESCUE @ seq @ FORTESCUE_INV
    y = np.linalg.inv(z)
    g = 0.5 * (y + np.conj(np.swapaxes(y, 1, 2))) * (base_v**2)[:, None, None]
    return ln.from_bus.astype(np.intp), ln.to_bus.astype(np.intp), g


class StateEstimator:
    """The state estimator of one feeder: built once, estimates batches (see the module docstring). Not
    thread-safe: one estimator per thread."""

    #: Built PGM models kept (one per reading pattern and power scale seen lately).
    MAX_MODELS = 8

    def __init__(self, feeder: Feeder, options: EstimateOptions | None = None, *,
                 priors: LoadPriors | None = None) -> None:
        assert_valid_feeder(feeder)
        self.feeder = feeder
        self.options = options or EstimateOptions()
        self.cut: Cut = cut_at_head(feeder, self.options.head)
        reduction = reduce_feeder(self.cut.feeder) if self.options.reduce else None
        self.reduction: Reduction | None = None if reduction is None or reduction.trivial else reduction
        self._solved = self.cut.feeder if self.reduction is None else self.reduction.feeder
        self.symmetric = feeder.balanced
        self.priors = priors if priors is not None else load_priors(feeder)
        self.priors.check(feeder, self.priors.p.value.shape[0])
        self._phases = 1 if self.symmetric else 3
        self._columns = Columns(len(feeder.loads), len(feeder.ders))
        n_cut, n_solved = len(self.cut.feeder.buses), len(self._solved.buses)
        self._out = _Layout(n_cut * self._phases, len(feeder.loads), len(feeder.ders), n_solved * self._phases)
        self._lines = _conductances(self._solved, self.symmetric)
        self._models: OrderedDict[tuple[bytes, float], SeModel] = OrderedDict()

    # -- public API -----------------------------------------------------------------------------------------
    def estimate(self, measurements: Measurements, *, priors: LoadPriors | None = None) -> Estimate:
        """Estimate every scenario of ``measurements`` (feeder order, see :class:`~gateway.twin.Measurements`);
        ``priors`` replace the estimator's for this call. Raises :class:`MeasurementError` for readings that do
        not fit the feeder, :class:`ObservabilityError` when a scenario's readings cannot determine the state."""
        feeder = self.feeder
        issues = validate_measurements(feeder, measurements)
        if issues:
            raise MeasurementError(issues)
        size = measurements.scenarios
        priors = priors if priors is not None else self.priors
        priors.check(feeder, size)
        value, sigma = self._rows(measurements, priors)
        patterns = self._patterns(value)
        groups: dict[bytes, list[int]] = {}
        for row, pattern in enumerate(patterns):
            groups.setdefault(pattern.key, []).append(row)
        self._check_observable(patterns, groups)
        powers = sigma[:, self._columns.powers]
        alpha = choose_scale(powers[np.isfinite(powers)], self.symmetric)
        est = _Blank(size, self._out)
        for rows in groups.values():
            index = np.asarray(rows, dtype=np.intp)
            self._estimate_group(patterns[rows[0]], value[index], sigma[index], index, alpha, est)
        return self._result(est)

    # -- readings -------------------------------------------------------------------------------------------
    def _rows(self, m: Measurements, priors: LoadPriors) -> tuple[FloatArray, FloatArray]:
        """Rows of readings (S, width) and their sigmas, NaN = absent; loads without AMI take their prior;
        a DER (or the head meter) with P or Q missing counts as unmeasured."""
        c, size = self._columns, m.scenarios
        value = np.full((size, c.width), np.nan, dtype=FLOAT)
        sigma = np.full((size, c.width), np.nan, dtype=FLOAT)
        for col, reading, prior in ((c.load_p, m.load_p, priors.p), (c.load_q, m.load_q, priors.q)):
            present = reading.present
            value[:, col] = np.where(present, reading.value, np.broadcast_to(prior.value, present.shape))
            sigma[:, col] = np.where(present, reading.sigma, np.broadcast_to(prior.sigma, present.shape))
        der_pq = m.der_p.present & m.der_q.present
        head_pq = (m.head_p.present & m.head_q.present).all(axis=1, keepdims=True)
        for col, reading, keep in ((c.der_p, m.der_p, der_pq), (c.der_q, m.der_q, der_pq),
                                   (c.der_v, m.der_v, m.der_v.present), (c.head_p, m.head_p, head_pq),
                                   (c.head_q, m.head_q, head_pq), (c.head_v, m.head_v, m.head_v.present)):
            value[:, col] = np.where(keep, reading.value, np.nan)
            sigma[:, col] = np.where(keep, reading.sigma, np.nan)
        return value, sigma

    def _patterns(self, value: FloatArray) -> list[Pattern]:
        c = self._columns
        present: BoolArray = ~np.isnan(value)
        der_pq, der_v = present[:, c.der_p], present[:, c.der_v]
        head_pq = np.asarray(present[:, c.head_p].all(axis=1), dtype=bool)
        head_v = np.asarray(present[:, c.head_v].all(axis=1), dtype=bool)
        return [Pattern(der_pq[k], der_v[k], bool(head_pq[k]), bool(head_v[k])) for k in range(value.shape[0])]

    def _check_observable(self, patterns: list[Pattern], groups: dict[bytes, list[int]]) -> None:
        issues: list[FeederIssue] = []
        for rows in groups.values():
            shown = ", ".join(str(r) for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
            issues.extend(FeederIssue(i.component, i.field, i.ids, f"{i.message} (scenario rows {shown})")
                          for i in observability_issues(patterns[rows[0]], self.symmetric, self.feeder.ders.name))
        if issues:
            raise ObservabilityError(issues)

    def _model(self, pattern: Pattern, alpha: float) -> SeModel:
        key = (pattern.key, alpha)
        model = self._models.pop(key, None)
        if model is None:
            o = self.options
            model = SeModel(self._solved, SensorPlan.of(pattern, self.symmetric), symmetric=self.symmetric,
                            alpha=alpha, method=o.method, error_tolerance=o.tolerance,
                            max_iterations=o.iterations)
        self._models[key] = model
        while len(self._models) > self.MAX_MODELS:
            self._models.popitem(last=False)
        return model

    # -- estimating -----------------------------------------------------------------------------------------
    def _estimate_group(self, pattern: Pattern, value: FloatArray, sigma: FloatArray, index: NDArray[np.intp],
                        alpha: float, est: _Blank) -> None:
        """Estimate one group of scenarios sharing a pattern: per scenario the estimate and ``m``
        finite-difference estimates in one batch, at the first power scale that solves them all (``m`` = 0 without
        the uncertainty, unless DER voltage readings are applied after the solve: that needs the covariance)."""
        c = self._columns
        present = ~np.isnan(value[0])
        post = np.zeros(c.width, dtype=bool)
        if not self.symmetric:
            post[c.der_v] = True  # applied after the solve (no single-phase voltage sensor in PGM)
        channels = np.flatnonzero(present & ~post)
        updates = np.flatnonzero(present & post) - c.der_v.start
        est.readings[index] = channels.size + updates.size
        moved = channels if self.options.uncertainty or updates.size else channels[:0]
        m, step = moved.size, self.options.step
        rows = np.repeat(value[:, None, :], m + 1, axis=1)
        rows[:, 1 + np.arange(m), moved] += step * sigma[:, moved]
        sigmas = np.repeat(sigma[:, None, :], m + 1, axis=1)
        pending = np.arange(value.shape[0])
        for scale in scales(alpha):
            out = self._model(pattern, scale).run(rows[pending].reshape(-1, c.width),
                                                  sigmas[pending].reshape(-1, c.width))
            solved = ~out.failed.reshape(pending.size, m + 1).any(axis=1)
            for k in np.flatnonzero(solved):
                self._finish(out, slice(k * (m + 1), (k + 1) * (m + 1)), int(pending[k]), int(index[pending[k]]),
                             updates, value, sigma, est)
            pending = pending[~solved]
            if not pending.size:
                break

    def _finish(self, out: SeOutput, block: slice, k: int, s: int, updates: NDArray[np.intp], value: FloatArray,
                sigma: FloatArray, est: _Blank) -> None:
        """Scenario ``s`` (row ``k`` of its group) from its ``1 + m`` estimates: the estimate, its 1-sigma, the
        DER-voltage update, the loss correction."""
        y = self._flat(out, block)
        base = y[0]
        spread = (y[1:] - base).T / self.options.step  # (n_y, m): sigma_i dg/dz_i per reading
        if updates.size:
            base, spread = self._der_voltages(base, spread, updates, value[k], sigma[k])
        o = self._out
        if self.options.uncertainty:  # without it the expected losses are not reported (NaN)
            base[o.sl(7)] += self._loss_gap(spread[o.sl(8)] + 1j * spread[o.sl(9)])
        est.converged[s] = True
        est.y[s] = base
        est.var[s] = np.einsum("ij,ij->i", spread, spread)

    def _flat(self, out: SeOutput, block: slice) -> FloatArray:
        """Output rows ``(m + 1, n_y)`` of one scenario (see :class:`_Layout`)."""
        v = out.v[block]
        n = v.shape[0]
        full = v
        if self.reduction is not None:
            full = self.reduction.expand(v if v.shape[2] == 3 else v[:, :, 0])
            full = full if full.ndim == 3 else full[:, :, None]
        solved = v.reshape(n, -1)
        return np.concatenate([np.abs(full).reshape(n, -1), out.load_p[block], out.load_q[block],
                               out.der_p[block], out.der_q[block], out.head_p[block, None],
                               out.head_q[block, None], out.losses[block, None], solved.real, solved.imag], axis=1)

    def _der_voltages(self, base: FloatArray, spread: FloatArray, ders: NDArray[np.intp], value: FloatArray,
                      sigma: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Apply DER voltage readings as a linear-Gaussian update of the estimate ``base`` whose error has the
        covariance ``spread @ spread.T``. Returns the updated estimate and a factor of the updated covariance."""
        cut = self.cut.feeder
        weights = phase_share(cut.ders.phase[ders])  # (k, 3): the reading is the (mean) phase magnitude
        where = cut.ders.bus[ders].astype(np.intp)[:, None] * 3 + np.arange(3)[None, :]  # (k, 3) into |V|
        c = self._columns
        z = value[c.der_v][ders]
        r = sigma[c.der_v][ders] ** 2
        predicted = (base[where] * weights).sum(axis=1)
        hl = np.einsum("kj,kjm->km", weights, spread[where])  # (k, m): the readings' own error factor
        s = hl @ hl.T + np.diag(r)
        gain = np.linalg.solve(s, hl @ spread.T).T  # (n_y, k) = spread hl^T s^-1
        updated = base + gain @ (z - predicted)
        # Joseph form, as a factor: (I - gain h) spread and gain sqrt(r).
        factor = np.concatenate([spread - gain @ hl, gain * np.sqrt(r)[None, :]], axis=1)
        return updated, factor

    def _loss_gap(self, spread: NDArray[np.complex128]) -> float:
        """``E[losses] - losses(estimate)``: ``sum tr(G Cov(dV))`` over the lines, from the error factor of the
        solved network's complex voltages ``(n_solved * phases, k)``."""
        start, end, g = self._lines
        if not start.size:
            return 0.0
        v = spread.reshape(-1, self._phases, spread.shape[1])
        dv = v[start] - v[end]  # (n_line, phases, k)
        if self.symmetric:
            return float(np.einsum("l,lk->", g, np.abs(dv[:, 0, :]) ** 2))
        return float(np.einsum("lpk,lpq,lqk->", np.conj(dv), g, dv).real)

    def _result(self, est: _Blank) -> Estimate:
        size, o, feeder, uncertainty = est.converged.shape[0], self._out, self.feeder, self.options.uncertainty
        y, sd = est.y, np.sqrt(est.var)
        if not uncertainty:  # nothing computed from the covariance leaves (module docstring)
            sd = np.full_like(sd, np.nan)
            y[:, o.sl(7)] = np.nan
        n_cut = len(self.cut.feeder.buses)
        v = np.full((size, len(feeder.buses), 3), np.nan, dtype=FLOAT)
        v_sd = np.full_like(v, np.nan)
        vc = y[:, o.sl(0)].reshape(size, n_cut, self._phases)
        vs = sd[:, o.sl(0)].reshape(size, n_cut, self._phases)
        v[:, self.cut.bus_from, :] = vc if self._phases == 3 else np.repeat(vc, 3, axis=2)
        v_sd[:, self.cut.bus_from, :] = vs if self._phases == 3 else np.repeat(vs, 3, axis=2)
        sigmas = (f"1-sigma by the linearised estimator: finite differences of {self.options.step:g} sigma per "
                  "reading" if uncertainty else "no 1-sigma (EstimateOptions.uncertainty=False)")
        method = (f"power-grid-model WLS state estimation ({self.options.method}, "
                  f"{'symmetric' if self.symmetric else 'asymmetric'}); {sigmas}")
        return Estimate(
            converged=est.converged, v_pu=v, v_sigma_pu=v_sd,
            load_p_w=y[:, o.sl(1)], load_p_sigma_w=sd[:, o.sl(1)],
            load_q_var=y[:, o.sl(2)], load_q_sigma_var=sd[:, o.sl(2)],
            der_p_w=y[:, o.sl(3)], der_p_sigma_w=sd[:, o.sl(3)],
            der_q_var=y[:, o.sl(4)], der_q_sigma_var=sd[:, o.sl(4)],
            head_p_w=y[:, o.sl(5)][:, 0], head_p_sigma_w=sd[:, o.sl(5)][:, 0],
            head_q_var=y[:, o.sl(6)][:, 0], head_q_sigma_var=sd[:, o.sl(6)][:, 0],
            losses_w=y[:, o.sl(7)][:, 0], losses_sigma_w=sd[:, o.sl(7)][:, 0],
            readings=est.readings, head_bus=int(self.cut.bus_from[self.cut.feeder.source.bus]), method=method,
            uncertainty=uncertainty,
        )


class _Blank:
    """The arrays an estimate is written into, scenario by scenario (NaN until written)."""

    def __init__(self, size: int, layout: _Layout) -> None:
        self.converged = np.zeros(size, dtype=bool)
        self.y = np.full((size, layout.width), np.nan, dtype=FLOAT)
        self.var = np.full((size, layout.width), np.nan, dtype=FLOAT)
        self.readings = np.zeros(size, dtype=np.intp)
