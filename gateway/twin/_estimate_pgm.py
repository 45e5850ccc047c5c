"""The state estimator's power-grid-model model: one sensor plan at one power scale, solving batches of readings.

Owns :class:`Columns` (where each reading sits in a row of readings) and :class:`SeModel`:
the PGM model of the estimator's network (cut at the head meter, reduced, scaled: :mod:`gateway.twin._estimate_model`)
carrying the sensors of one :class:`~gateway.twin._estimate_model.SensorPlan`. :meth:`SeModel.run` turns rows of
readings into PGM sensor updates, runs one batched weighted-least-squares state estimation and returns the
estimated state per row (:class:`SeOutput`, in W/var/pu, unscaled).

How readings become PGM sensors:

- every load has a power sensor (its AMI reading, else its prior); every DER with P and Q a generator power sensor;
  the head meter's P and Q a power sensor on the source; the head meter's voltage a voltage sensor on the head bus;
  in a symmetric estimate each DER voltage a voltage sensor on its bus.
- symmetric: the head meter's three phases are summed (P, Q; sigmas in quadrature) or averaged (voltage: sigma
  ``sqrt(sum sigma**2) / 3``).
- asymmetric: a single-phase element's reading goes on its phase and the two absent phases are measured as 0 with
  sigma :data:`ZERO_PHASE` times its own (weight 1e4 times its own: near exact, without widening much the spread of
  sigmas PGM's solver has to take, see "Power scale" below); a three-phase element's
  reading is split equally, sigma ``sigma / sqrt(3)`` per phase. PGM's asymmetric voltage sensor has one sigma for
  its three phases: the RMS of the three.

Power scale: power-grid-model's Newton-Raphson estimator solves a saddle-point system whose diagonal holds each
injection's variance (pu of its fixed 1 MVA base) beside admittances, with pivot perturbation at 1e-13 of the
matrix norm; it fails ("sparse matrix error") when power sigmas are small in that base. Measured with 1.12 on
Baran-Wu's feeder, the IEEE European LV feeder and tests/twin/_data.small_feeder with realistic readings (and with
0.1 % AMI): it solves when the smallest power sigma (times :data:`ZERO_PHASE` in an asymmetric estimate) is above
~1-10 W, i.e. 1e-6 to 1e-5 pu, and the largest below ~1e10 W; the LV feeder's readings fail as they are. So the
model is built at a power scale ``alpha`` (:func:`gateway.twin._estimate_model.scale_powers`: an exact similarity,
the same voltages, powers times ``alpha``) chosen by :func:`choose_scale` to lift the smallest sigma to
:data:`SIGMA_FLOOR_W` (1e-4 pu) while keeping the largest under :data:`SIGMA_CEILING_W`; a scenario that still
fails is retried at the other scales of :func:`scales` before it is reported unsolved.

These are the *estimator's weights*. The uncertainty the estimator reports does not rest on them being exact: it
propagates each reading's own sigma through the estimator (:mod:`gateway.twin._estimate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from power_grid_model import (
    CalculationMethod,
    ComponentAttributeFilterOptions,
    ComponentType,
    DatasetType,
    MeasuredTerminalType,
    PowerGridModel,
    initialize_array,
)
from power_grid_model.errors import PowerGridError  # type: ignore[attr-defined]  # re-exported without __all__

from gateway.twin._errors import FeederError, FeederIssue, TwinError
from gateway.twin._estimate_model import SensorPlan, scale_powers
from gateway.twin._feeder import FLOAT, Feeder
from gateway.twin._pgm import SQRT3, pgm_layout, phase_share

FloatArray = NDArray[np.float64]

#: Sigma of the absent phases of a single-phase element's power sensor, as a fraction of its own sigma.
ZERO_PHASE = 0.01
#: The smallest and largest power sigma (W at scale) :func:`choose_scale` aims for: 1e-4 and 1e2 pu of PGM's 1 MVA.
SIGMA_FLOOR_W = 1e2
SIGMA_CEILING_W = 1e8
#: Batches with at least this much work (rows x buses x phases) run on every hardware thread.
PARALLEL_WORK = 2000


class EstimationError(TwinError, RuntimeError):
    """The state estimator failed as a whole (not one scenario: those come back with ``converged`` False)."""


@dataclass(frozen=True, slots=True)
class Columns:
    """A row of readings: load P, load Q (``n_load`` each), DER P, Q, V (``n_der`` each), head P, Q, V (3 each).
    Units as :class:`~gateway.twin.Measurements` (W, var, pu); NaN = absent."""

    n_load: int
    n_der: int

    def _at(self, k: int) -> slice:
        starts = [0, self.n_load, 2 * self.n_load]
        starts += [starts[-1] + self.n_der, starts[-1] + 2 * self.n_der, starts[-1] + 3 * self.n_der]
        starts += [starts[-1] + 3, starts[-1] + 6, starts[-1] + 9]
        return slice(starts[k], starts[k + 1])

    @property
    def load_p(self) -> slice:
        return self._at(0)

    @property
    def load_q(self) -> slice:
        return self._at(1)

    @property
    def der_p(self) -> slice:
        return self._at(2)

    @property
    def der_q(self) -> slice:
        return self._at(3)

    @property
    def der_v(self) -> slice:
        return self._at(4)

    @property
    def head_p(self) -> slice:
        return self._at(5)

    @property
    def head_q(self) -> slice:
        return self._at(6)

    @property
    def head_v(self) -> slice:
        return self._at(7)

    @property
    def width(self) -> int:
        return 2 * self.n_load + 3 * self.n_der + 9

    @property
    def powers(self) -> NDArray[np.bool_]:
        """Which columns are powers (W or var)."""
        mask = np.zeros(self.width, dtype=bool)
        for s in (self.load_p, self.load_q, self.der_p, self.der_q, self.head_p, self.head_q):
            mask[s] = True
        return mask


def choose_scale(power_sigmas: FloatArray, symmetric: bool) -> float:
    """The power of ten that lifts the smallest of ``power_sigmas`` (W/var; in an asymmetric estimate times
    :data:`ZERO_PHASE`, the absent phases') to :data:`SIGMA_FLOOR_W`, unless that would put the largest above
    :data:`SIGMA_CEILING_W` (see the module docstring)."""
    if not power_sigmas.size:
        return 1.0
    smallest = float(power_sigmas.min()) * (1.0 if symmetric else ZERO_PHASE)
    lift = 10.0 ** math.ceil(math.log10(SIGMA_FLOOR_W / smallest))
    cap = 10.0 ** math.floor(math.log10(SIGMA_CEILING_W / float(power_sigmas.max())))
    return min(lift, cap)


def scales(alpha: float) -> tuple[float, ...]:
    """The scales a scenario is tried at, in order, starting from :func:`choose_scale`'s."""
    return alpha, alpha * 1e2, alpha * 1e-2, alpha * 1e4


@dataclass(frozen=True, slots=True)
class SeOutput:
    """The estimated state of ``R`` rows (unscaled). ``v`` ``(R, n_bus, phases)`` complex pu of the solved feeder's
    buses; ``load_p``/``load_q`` ``(R, n_load)`` (consumption), ``der_p``/``der_q`` ``(R, n_der)`` (export),
    ``head_p``/``head_q`` ``(R,)`` into the feeder, ``losses`` ``(R,)`` W; ``failed`` ``(R,)``. Failed rows are NaN."""

    failed: NDArray[np.bool_]
    v: NDArray[np.complex128]
    load_p: FloatArray
    load_q: FloatArray
    der_p: FloatArray
    der_q: FloatArray
    head_p: FloatArray
    head_q: FloatArray
    losses: FloatArray


class SeModel:
    """The PGM state-estimation model of ``solved`` (the estimator's network, unscaled) with the sensors of
    ``plan``, at power scale ``alpha``. Not thread-safe."""

    def __init__(self, solved: Feeder, plan: SensorPlan, *, symmetric: bool, alpha: float, method: str,
                 error_tolerance: float, max_iterations: int) -> None:
        self.solved, self.plan, self.symmetric, self.alpha = solved, plan, symmetric, alpha
        self.method = CalculationMethod[method]
        self.error_tolerance, self.max_iterations = error_tolerance, max_iterations
        n_load = len(solved.loads)
        self.columns = Columns(n_load, len(solved.ders))
        pieces = np.zeros((n_load, 3), dtype=bool)
        pieces[:, 0] = True  # one PGM load per feeder load: in an estimate a load is the power it draws
        layout = pgm_layout(scale_powers(solved, alpha), symmetric=symmetric, pieces=pieces)
        self.layout = layout
        self.load_share = phase_share(solved.loads.phase)
        self.der_share = phase_share(solved.ders.phase)
        data = dict(layout.input_data)
        next_id = int(max(int(np.max(v["id"])) for v in data.values())) + 1
        sym = symmetric
        p_type = ComponentType.sym_power_sensor if sym else ComponentType.asym_power_sensor
        v_type = ComponentType.sym_voltage_sensor if sym else ComponentType.asym_voltage_sensor
        self.p_type, self.v_type = p_type, v_type
        objects = [layout.load_id, layout.gen_id[plan.der_sensor]]
        terminals = [np.full(n_load, MeasuredTerminalType.load), np.full(len(plan.der_sensor),
                                                                             MeasuredTerminalType.generator)]
        if plan.source_sensor:
            objects.append(np.array([layout.source_id]))
            terminals.append(np.array([MeasuredTerminalType.source]))
        measured = np.concatenate(objects)
        power = initialize_array(DatasetType.input, p_type, measured.size)
        power["id"] = np.arange(next_id, next_id + measured.size)
        power["measured_object"] = measured
        power["measured_terminal_type"] = np.concatenate(terminals)
        power["p_measured"] = power["q_measured"] = 0.0
        power["p_sigma"] = power["q_sigma"] = 1.0
        next_id += measured.size
        self.n_power = int(measured.size)
        if measured.size:
            data[p_type] = power
        v_bus = ([solved.source.bus] if plan.head_sensor else []) + solved.ders.bus[plan.der_v_sensor].tolist()
        self.v_bus = np.array(v_bus, dtype=np.intp)
        voltage = initialize_array(DatasetType.input, v_type, len(v_bus))
        voltage["id"] = np.arange(next_id, next_id + len(v_bus))
        voltage["measured_object"] = layout.node_id[self.v_bus]
        voltage["u_measured"] = solved.buses.u_rated_v[self.v_bus][:, None] if not sym else solved.buses.u_rated_v[
            self.v_bus]
        voltage["u_sigma"] = 1.0
        if len(v_bus):
            data[v_type] = voltage
        try:
            self.model = PowerGridModel(data, system_frequency=solved.frequency_hz)
        except PowerGridError as exc:
            raise FeederError((FeederIssue("estimator", "", (), f"power-grid-model refused the model: {exc}"),)) \
                from exc
        outputs: dict[ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions | None] = {
            ComponentType.node: ["u_pu", "u_angle"], ComponentType.source: ["p", "q"]}
        for component in (layout.load_type, layout.gen_type):
            if component in data:
                outputs[ComponentType(component)] = ["p", "q"]
        for component in (ComponentType.line, ComponentType.transformer):
            if component in data:
                outputs[component] = ["p_from", "p_to"]
        self._outputs = outputs
        self._work = len(layout.node_id) * (1 if sym else 3)

    # -- sensors ---------------------------------------------------------------------------------------------
    def _powers(self, value: FloatArray, sigma: FloatArray) -> dict[str, FloatArray]:
        """Power-sensor updates from rows of readings (already scaled)."""
        c, plan, sym = self.columns, self.plan, self.symmetric
        ders = plan.der_sensor
        parts: dict[str, list[FloatArray]] = {"p_measured": [], "q_measured": [], "p_sigma": [], "q_sigma": []}
        every_load = np.arange(c.n_load, dtype=np.intp)
        elements = [(c.load_p, c.load_q, every_load, self.load_share), (c.der_p, c.der_q, ders, self.der_share)]
        for p_col, q_col, index, all_shares in elements:
            share = all_shares[index]
            for name, col in (("p", p_col), ("q", q_col)):
                v, s = value[:, col][:, index], sigma[:, col][:, index]
                if sym:
                    parts[f"{name}_measured"].append(v)
                    parts[f"{name}_sigma"].append(s)
                else:
                    parts[f"{name}_measured"].append(v[:, :, None] * share)
                    per_phase = np.where(share > 0, s[:, :, None] * np.sqrt(share), ZERO_PHASE * s[:, :, None])
                    parts[f"{name}_sigma"].append(per_phase)
        if plan.source_sensor:
            for name, col in (("p", c.head_p), ("q", c.head_q)):
                v, s = value[:, col], sigma[:, col]
                if sym:
                    parts[f"{name}_measured"].append(v.sum(axis=1, keepdims=True))
                    parts[f"{name}_sigma"].append(np.sqrt((s**2).sum(axis=1, keepdims=True)))
                else:
                    parts[f"{name}_measured"].append(v[:, None, :])
                    parts[f"{name}_sigma"].append(s[:, None, :])
        return {k: np.ascontiguousarray(np.concatenate(v, axis=1)) for k, v in parts.items()}

    def _voltages(self, value: FloatArray, sigma: FloatArray) -> dict[str, FloatArray]:
        """Voltage-sensor updates (V) from rows of readings (pu)."""
        c, sym, plan = self.columns, self.symmetric, self.plan
        rated = self.solved.buses.u_rated_v[self.v_bus]  # line-to-line
        u: list[FloatArray] = []
        s: list[FloatArray] = []
        if plan.head_sensor:
            hv, hs = value[:, c.head_v], sigma[:, c.head_v]
            if sym:
                u.append(hv.mean(axis=1, keepdims=True))
                s.append(np.sqrt((hs**2).sum(axis=1, keepdims=True)) / 3.0)
            else:
                u.append(hv[:, None, :])
                s.append(np.sqrt((hs**2).mean(axis=1, keepdims=True)))
        if plan.der_v_sensor.size:  # symmetric only (see SensorPlan)
            u.append(value[:, c.der_v][:, plan.der_v_sensor])
            s.append(sigma[:, c.der_v][:, plan.der_v_sensor])
        u_pu, s_pu = np.concatenate(u, axis=1), np.concatenate(s, axis=1)
        base = rated if sym else rated / SQRT3
        u_v = u_pu * base[None, :] if sym else u_pu * base[None, :, None]
        return {"u_measured": np.ascontiguousarray(u_v), "u_sigma": np.ascontiguousarray(s_pu * base[None, :])}

    # -- solving ---------------------------------------------------------------------------------------------
    def run(self, value: FloatArray, sigma: FloatArray) -> SeOutput:
        """Estimate the state of each row of readings ``(R, columns.width)`` (NaN = absent; unused columns are
        ignored)."""
        rows = value.shape[0]
        scale = np.where(self.columns.powers, self.alpha, 1.0)
        value, sigma = value * scale, sigma * scale
        update: dict[ComponentType, dict[str, Any]] = {}
        if self.n_power:
            update[ComponentType(self.p_type)] = self._powers(value, sigma)
        if self.v_bus.size:
            update[ComponentType(self.v_type)] = self._voltages(value, sigma)
        try:
            result: Any = self.model.calculate_state_estimation(
                symmetric=self.symmetric, error_tolerance=self.error_tolerance, max_iterations=self.max_iterations,
                calculation_method=self.method, update_data=update,
                threading=0 if rows * self._work >= PARALLEL_WORK else -1,
                output_component_types=self._outputs, continue_on_batch_error=True)
        except PowerGridError as exc:
            raise EstimationError(f"power-grid-model state estimation failed: {exc}") from exc
        failed = np.zeros(rows, dtype=bool)
        error = self.model.batch_error
        if error is not None:
            failed[np.asarray(error.failed_scenarios, dtype=np.intp)] = True
        return self._output(result, failed)

    def _output(self, result: Any, failed: NDArray[np.bool_]) -> SeOutput:
        # power-grid-model leaves a failed scenario's outputs unset (garbage): computed, then set to NaN below.
        with np.errstate(all="ignore"):
            return self._output_of(result, failed)

    def _output_of(self, result: Any, failed: NDArray[np.bool_]) -> SeOutput:
        sym, layout = self.symmetric, self.layout
        rows = failed.shape[0]

        def total(a: FloatArray) -> FloatArray:
            out: FloatArray = np.asarray(a if sym else a.sum(axis=-1), dtype=FLOAT)
            return out

        node = result[ComponentType.node]
        u = node["u_pu"] * np.exp(1j * node["u_angle"])
        v = u[:, :, None] if sym else u
        empty = np.zeros((rows, 0), dtype=FLOAT)
        loads = result.get(ComponentType(layout.load_type))
        gens = result.get(ComponentType(layout.gen_type))
        losses = np.zeros(rows, dtype=FLOAT)
        for component in (ComponentType.line, ComponentType.transformer):
            if component in result:
                losses += total(result[component]["p_from"] + result[component]["p_to"]).sum(axis=1)
        inverse = 1.0 / self.alpha
        out = SeOutput(
            failed=failed, v=np.asarray(v, dtype=np.complex128),
            load_p=total(loads["p"]) * inverse if loads is not None else empty,
            load_q=total(loads["q"]) * inverse if loads is not None else empty,
            der_p=total(gens["p"]) * inverse if gens is not None else empty,
            der_q=total(gens["q"]) * inverse if gens is not None else empty,
            head_p=total(result[ComponentType.source]["p"]).sum(axis=1) * inverse,
            head_q=total(result[ComponentType.source]["q"]).sum(axis=1) * inverse,
            losses=losses * inverse,
        )
        if failed.any():
            for array in (out.v, out.load_p, out.load_q, out.der_p, out.der_q, out.head_p, out.head_q, out.losses):
                array[failed] = np.nan
        return out

