"""The feeder segment the gateway sits on: its devices mapped onto the twin, and each cycle's certified envelope.

Owns :class:`Segment`: built once from ``[twin]`` (the feeder loaded, each envelope holder attached at its bus, the
power-flow engine and the state estimator built), then :meth:`Segment.envelope` turns the fleet's latest state
into a :class:`gateway.types.Envelope` — the operating point from what was measured, the twin's certified envelope,
its certificate — or the configured default envelope with the reason (an envelope holder is stale, the twin could
not certify, the twin failed). Blocking work (numpy, power-grid-model): the daemon calls it in a worker thread;
calls are serialised (the estimator and the engine are not thread-safe).

The operating point (``[twin] operating_point``), tried in this order until one can be made:

- ``"estimate"``: the twin's state estimate (:class:`gateway.twin.StateEstimator`) from each envelope holder's
  W, var and V and, with a fresh ``role = "meter"`` device, the head meter's W, var and V, every other load at its
  prior (:func:`gateway.twin.load_priors`); :func:`gateway.twin.operating_point` turns it into the loads and the
  source voltage the power flow takes.
- ``"head-meter"``: with a fresh head meter, every nominal load times one factor so that the load the meter implies
  (site import + DER export) is met (:meth:`Segment.load_scale`).
- ``"nominal"``: the feeder's nominal loads and ``source_v_pu``.

A configured ``"estimate"`` falls back to ``"head-meter"``, then ``"nominal"``; ``"head-meter"`` to ``"nominal"``.
Why is logged once per change (``operating_point_fallback``, and ``operating_point_restored`` when it comes back),
and :attr:`Segment.last_operating_point` says what the last envelope used. Either way the envelope holds for every
load inside ``load_bound`` times that operating point, so a point is refused rather than guessed:

- head-meter scaling needs a finite meter reading and every envelope holder's W (a missing one counted as 0 W
  would understate the load behind the meter), and a load >= 0 (net-generating loads are no multiple of the
  nominal ones);
- the nominal loads are refused when a fresh head meter (with every holder's W) implies a total load outside
  ``load_bound`` times theirs;
- when no point can be made the cycle publishes the configured default envelope with the reasons
  (``operating_point_unavailable``, logged once per change).

Readings as estimator input (:meth:`Segment.measurements`). Each quantity's sigma comes from the instrument's stated
accuracy (:class:`Accuracy`), read as a bound of three sigma, the usual convention in state estimation. A DER's
``Measurement.v`` (volts, line to neutral) is taken in pu of its bus's nominal phase voltage; a reading the device
did not give is not measured (a DER without W or var counts as unmeasured: the estimator needs both).

A meter that reports each phase's W, var and V (``Measurement.w_ph``/``var_ph``/``v_ph``: SunSpec 203/204,
213/214) is, on an unbalanced feeder, what the estimator's head sensors are: they take its readings as they are,
each phase at the meter's accuracy of that phase's reading (the floor a third of the meter's), and ONE estimate
is made. Measured (tests/test_segment.py, IEEE European LV, eight draws, the same readings with and without
their phases): the head flow per phase ~50 W off (summed over phases) where the split of the totals is ~6 kW off,
the DER-bus voltages ~0.003 pu where the split's are ~0.006 pu. The gain is the split's error: where the loads
are spread evenly (the demo) there is little to gain, and the phases' tighter sigmas hold readings polled at
different moments less loosely. A meter that reports three-phase totals and a mean phase voltage only:

- on a balanced feeder (symmetric estimate) the totals are exact as they are: a third per phase;
- on an unbalanced one, power-grid-model's asymmetric sensors are per phase and the meter does not say how the
  totals split. Two estimates: the first without the head meter's powers, its totals updating the load priors
  instead (a Gaussian update of the priors on their sum: the meter's import + the DERs' export - the losses
  downstream of the meter in a power flow at the head-meter point); the second with the totals split over the
  phases as the first estimate has them (each phase's loads - its DERs, the remainder, i.e. the losses, a third
  each), at the meter's accuracy. So the second holds the meter's totals and a split the DER voltages informed;
  the split is a pseudo-measurement, so its sigmas understate the estimate's uncertainty (the segment uses the
  estimate, not its sigmas). Each phase voltage is the meter's mean, its sigma widened by
  :attr:`Accuracy.phase_spread_pu`. Measured (tests/test_segment.py; IEEE European LV, loads at 0.3x/1.5x nominal): the
  head flow within ~70 W where head-meter scaling is ~1 kW off (it leaves out the losses), the voltages closer on
  average but not in every draw (the LV feeder's voltage drops are a few times the instruments' accuracy).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import structlog
from numpy.typing import NDArray

from gateway.config import Config, TwinConfig
from gateway.errors import GridedgeError
from gateway.twin import (
    Criteria,
    EnvelopeRequest,
    EnvelopeResult,
    Estimate,
    EstimateOptions,
    EstimationError,
    Feeder,
    FeederError,
    FeederIssue,
    LoadPriors,
    MeasurementError,
    Measurements,
    ObservabilityError,
    Phase,
    Policy,
    PowerFlow,
    Reading,
    StateEstimator,
    TwinError,
    certify_envelope,
    load_feeder,
    operating_point,
    phase_share,
    with_ders,
)
from gateway.types import DerLimit, DeviceState, Envelope, Measurement

log = structlog.get_logger("gateway.segment")

FloatArray = NDArray[np.float64]
Mode = Literal["estimate", "head-meter", "nominal"]

#: ``[[twin.ders]] phase`` (and the demo's placements) as the twin's :class:`~gateway.twin.Phase`.
PHASES = {"abc": Phase.ABC, "a": Phase.A, "b": Phase.B, "c": Phase.C}
_SQRT3 = math.sqrt(3.0)
#: What each configured operating point falls back to, in order.
_CHAIN: dict[str, tuple[Mode, ...]] = {"estimate": ("estimate", "head-meter", "nominal"),
                                       "head-meter": ("head-meter", "nominal"), "nominal": ("nominal",)}


def builtin_feeder(name: str) -> Feeder:
    """A feeder bundled through pandapower (``case33bw``: Baran-Wu 33-bus; ``ieee-european-lv``: on-peak case)."""
    import pandapower.networks as pn

    from gateway.twin import from_pandapower

    if name == "case33bw":
        return from_pandapower(pn.case33bw())
    if name == "ieee-european-lv":
        return from_pandapower(pn.ieee_european_lv_asymmetric("on_peak_566"))
    raise FeederError([FeederIssue("feeder", "", (), f"no bundled feeder {name!r}: use builtin:case33bw or "
                                               "builtin:ieee-european-lv")], f"builtin:{name}")


def open_feeder(spec: str) -> Feeder:
    """``builtin:NAME`` or a feeder file path (``.toml``/``.json``/``.dss``)."""
    if spec.startswith("builtin:"):
        return builtin_feeder(spec.removeprefix("builtin:"))
    return load_feeder(spec)


@dataclass(frozen=True, slots=True)
class Defaults:
    """The envelope published when the twin cannot certify, per DER (W magnitudes)."""

    limits: tuple[DerLimit, ...]


@dataclass(frozen=True, slots=True)
class Accuracy:
    """The stated accuracy of what the segment reads, as a fraction (the largest error; sigma is a third of it).

    Meter: IEC 62053-22 class 0.5 active power and IEC 62053-24 class 1 reactive power, of the reading; the class
    holds down to 5 % of the meter's range (``meter_floor``, taken as that share of the feeder's nominal apparent
    load: below it the error stays that of 5 %); voltage 0.5 %. Inverter (SunSpec readings): W and var 1 % of
    its rating, voltage 1 %. ``phase_spread_pu`` (1-sigma, pu): how far a phase voltage at the head may sit from
    the three-phase mean the meter reports (the IEEE European LV feeder's are within 0.001 pu at peak).
    """

    meter_p: float = 0.005
    meter_q: float = 0.01
    meter_v: float = 0.005
    meter_floor: float = 0.05
    der_pq: float = 0.01
    der_v: float = 0.01
    phase_spread_pu: float = 0.003


@dataclass(frozen=True, slots=True)
class PointUsed:
    """The operating point an envelope started from: ``mode``; ``seconds`` it took to make (the estimate and
    :func:`~gateway.twin.operating_point`, or the scaling); ``reason`` why it is not the configured one (None
    when it is)."""

    mode: Mode
    seconds: float
    reason: str | None

    def as_json(self) -> dict[str, object]:
        """For a log line: ``{"mode": .., "ms": .., "fallback": reason or None}``."""
        return {"mode": self.mode, "ms": round(self.seconds * 1e3, 1), "fallback": self.reason}


@dataclass(frozen=True, slots=True, eq=False)
class _Readings:
    """The estimator's input: the readings, the load priors (None: its own) and, for an unbalanced feeder's second
    estimate, the meter's totals and their sigmas (W, var, sigma W, sigma var; None: no second estimate)."""

    measurements: Measurements
    priors: LoadPriors | None
    totals: tuple[float, float, float, float] | None


@dataclass(frozen=True, slots=True, eq=False)
class StartingPoint:
    """Where a cycle's envelope starts: the loads (``(n_load,)`` nominal powers, feeder order; None: the feeder's
    nominal loads) and the source voltage (None: the feeder's), and how they were found (``used``)."""

    load_p_w: FloatArray | None
    load_q_var: FloatArray | None
    source_v_pu: float | None
    used: PointUsed


#: Loads (W, var; None: nominal) and source voltage (pu; None: the feeder's) of an operating point.
_Loads = tuple[FloatArray | None, FloatArray | None, float | None]


class _Unavailable(GridedgeError):
    """An operating point cannot be made this cycle; ``cause`` is a stable word for it (for logging once)."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause


class Segment:
    """The twin of this gateway's feeder segment, with its envelope holders attached (see the module docstring)."""

    def __init__(self, config: Config, feeder: Feeder | None = None, *, accuracy: Accuracy | None = None) -> None:
        if config.twin is None:
            raise ValueError("config has no [twin] section")
        self.twin: TwinConfig = config.twin
        self.issuer = config.site.gateway_id
        self.accuracy = accuracy or Accuracy()
        base = feeder if feeder is not None else open_feeder(self.twin.feeder)
        ratings = [der.rating_w or config.device(der.device).rated_w or math.nan for der in self.twin.ders]
        self.feeder = with_ders(base, [d.device for d in self.twin.ders], [d.bus for d in self.twin.ders],
                                phase=[PHASES[d.phase] for d in self.twin.ders], rating_w=ratings)
        self.engine = PowerFlow(self.feeder)
        self.meters = [d.id for d in config.devices if d.role == "meter"]
        default = config.dispatch.default_envelope if config.dispatch is not None else None
        limits = []
        for der in self.twin.ders:
            lim = default.limits_for(der.device) if default is not None else None
            limits.append(DerLimit(der.device, lim.export_w if lim else 0.0, lim.import_w if lim else 0.0))
        self.defaults = Defaults(tuple(limits))
        criteria = Criteria(vmin_pu=self.twin.vmin_pu, vmax_pu=self.twin.vmax_pu, margin_v_pu=self.twin.margin_v_pu,
                            load_bound=self.twin.load_bound)
        self.request = EnvelopeRequest(policy=Policy(self.twin.policy), criteria=criteria)
        self._nominal_p = np.asarray(self.feeder.loads.p_w, dtype=float)
        self._nominal_q = np.asarray(self.feeder.loads.q_var, dtype=float)
        #: The state estimator (built once; its power-grid-model models are kept between cycles), or None when the
        #: configured operating point is not "estimate" or the feeder cannot be estimated (``_no_estimator`` says why).
        self.estimator: StateEstimator | None = None
        self._downstream: PowerFlow | None = None
        self._head_bus: int | None = None  # the bus the head meter measures (the estimator's cut)
        self._no_estimator: str | None = None
        if self.twin.operating_point == "estimate":
            try:
                # the cycle uses the estimate, not its sigmas: skip the finite-difference covariance
                estimator = StateEstimator(self.feeder, EstimateOptions(uncertainty=False))
                if not self.feeder.balanced:  # the losses downstream of the head meter (_priors_given_total)
                    self._downstream = PowerFlow(estimator.cut.feeder)
            except TwinError as exc:
                self._no_estimator = f"the feeder cannot be estimated: {_one_line(exc)}"
            else:
                self.estimator = estimator
                self._head_bus = int(estimator.cut.bus_from[estimator.cut.feeder.source.bus])
        self._lock = threading.RLock()
        self._logged: tuple[Mode | None, str] | None = None
        #: What bound the last envelope (export, import), in words ("vmax at bus 886", "rating", ...); None
        #: when the last one was the default without an AC check.
        self.last_binding: tuple[str, str] | None = None
        #: The operating point the last envelope started from; None when it was the default without an AC check.
        self.last_operating_point: PointUsed | None = None

    # -- readings ---------------------------------------------------------------------------------------------------
    def head_meter(self, states: Mapping[str, DeviceState]) -> Measurement | None:
        """The first configured meter with a fresh reading of W, or None."""
        for meter in self.meters:
            state = states.get(meter)
            if state is not None and not state.stale and state.measurement is not None \
                    and state.measurement.w is not None:
                return state.measurement
        return None

    def load_scale(self, states: Mapping[str, DeviceState]) -> float | None:
        """The nominal-load multiplier the head meter implies, or None when it cannot be known (see
        :meth:`_implied_load`)."""
        try:
            return self._scale(self._implied_load(states))
        except _Unavailable:
            return None

    def _implied_load(self, states: Mapping[str, DeviceState]) -> float:
        """The feeder's load the head meter implies: its import plus every envelope holder's export (W). Raises
        :class:`_Unavailable` without a fresh, finite meter reading, or when an envelope holder's W is missing or
        not finite (counting it as 0 W would understate the load, and the envelope would be certified at loads that
        are not there)."""
        meter = self.head_meter(states)
        if meter is None or meter.w is None:
            raise _Unavailable("no head meter", "no fresh head meter reading")
        if not math.isfinite(meter.w):
            raise _Unavailable("head meter", f"the head meter reads {meter.w!r} W")
        export = 0.0
        for der in self.twin.ders:
            state = states.get(der.device)
            m = state.measurement if state is not None and not state.stale else None
            w = m.w if m is not None else None
            if w is None or not math.isfinite(w):
                raise _Unavailable("der reading", f"{der.device} gives no finite W: the load behind the meter is "
                                                  "not known")
            export += w
        return meter.w + export

    def _scale(self, load_w: float) -> float | None:
        """The nominal-load multiplier that makes the loads draw ``load_w`` in all; None when no multiplier does
        (the nominal loads sum to 0, or ``load_w`` is negative: the loads generate, which scaling cannot show)."""
        total = float(self._nominal_p.sum())
        if not (total > 0 and math.isfinite(load_w) and load_w >= 0):
            return None
        return load_w / total

    def measurements(self, states: Mapping[str, DeviceState]) -> tuple[Measurements, LoadPriors | None]:
        """This cycle's readings as the (first) estimate takes them, and the load priors to use (None: the
        estimator's own); see the module docstring. The head meter's voltage only with an estimator (it says
        which bus the meter measures). Raises :class:`~gateway.twin.MeasurementError` for readings the twin
        refuses."""
        with self._lock:
            readings = self._readings(states)
        return readings.measurements, readings.priors

    def _readings(self, states: Mapping[str, DeviceState]) -> _Readings:
        feeder, acc = self.feeder, self.accuracy
        n = len(feeder.ders)
        p, q, v = (np.full((1, n), np.nan) for _ in range(3))
        for k, der in enumerate(self.twin.ders):
            state = states.get(der.device)
            m = state.measurement if state is not None and not state.stale else None
            if m is not None:
                p[0, k], q[0, k], v[0, k] = _value(m.w), _value(m.var), _value(m.v)
        v /= self._phase_v(feeder.ders.bus)
        rating = feeder.ders.rating_w
        sigma_pq = acc.der_pq / 3 * np.where(np.isfinite(rating) & (rating > 0), rating,
                                             np.fmax(np.abs(np.nan_to_num(p)), 1.0))
        der_p, der_q, der_v = Reading(p, sigma_pq), Reading(q, sigma_pq), Reading(v, np.full_like(v, acc.der_v / 3))
        meter = self.head_meter(states)
        if meter is None:
            return _Readings(Measurements.create(feeder, der_p=der_p, der_q=der_q, der_v=der_v), None, None)
        w, var = _value(meter.w), _value(meter.var)
        floor = acc.meter_floor * float(np.hypot(self._nominal_p, self._nominal_q).sum())
        sp = acc.meter_p / 3 * max(abs(w), floor)
        sq = acc.meter_q / 3 * max(abs(var), floor)
        head = self._head_bus
        hv = math.nan if head is None else _value(meter.v) / float(self._phase_v(np.array([head]))[0])
        sv = acc.meter_v / 3
        head_p = head_q = priors = None
        totals = None
        phases = _phases(meter)
        if phases is not None and not feeder.balanced and head is not None:
            w_ph, var_ph, v_ph = phases
            floor_ph = floor / 3
            head_p = Reading(w_ph[None], (acc.meter_p / 3 * np.fmax(np.abs(w_ph), floor_ph))[None])
            head_q = Reading(var_ph[None], (acc.meter_q / 3 * np.fmax(np.abs(var_ph), floor_ph))[None])
            head_v = Reading((v_ph / float(self._phase_v(np.array([head]))[0]))[None], np.full((1, 3), sv))
            measured = Measurements.create(feeder, der_p=der_p, der_q=der_q, der_v=der_v, head_p=head_p,
                                           head_q=head_q, head_v=head_v)
            return _Readings(measured, None, None)
        if feeder.balanced:
            head_p = Reading(np.full((1, 3), w / 3), np.full((1, 3), sp / _SQRT3))
            head_q = Reading(np.full((1, 3), var / 3), np.full((1, 3), sq / _SQRT3))
        else:
            priors = self._priors_given_total(meter, hv, p[0], q[0], sigma_pq, sp, sq)
            sv = math.hypot(sv, acc.phase_spread_pu)
            if priors is not None and math.isfinite(w) and math.isfinite(var):
                totals = (w, var, sp, sq)
        head_v = Reading(np.full((1, 3), hv), np.full((1, 3), sv))
        measured = Measurements.create(feeder, der_p=der_p, der_q=der_q, der_v=der_v, head_p=head_p, head_q=head_q,
                                       head_v=head_v)
        return _Readings(measured, priors, totals)

    def _split(self, readings: _Readings, first: Estimate) -> Measurements:
        """``readings`` with the meter's totals split over the phases as the ``first`` estimate has them (module
        docstring)."""
        assert readings.totals is not None
        w, var, sp, sq = readings.totals
        loads, ders = phase_share(self.feeder.loads.phase), phase_share(self.feeder.ders.phase)
        heads = []
        for total, sigma, load, der in ((w, sp, first.load_p_w[0], first.der_p_w[0]),
                                        (var, sq, first.load_q_var[0], first.der_q_var[0])):
            per_phase = load @ loads - der @ ders
            per_phase += (total - per_phase.sum()) / 3
            heads.append(Reading(per_phase[None], np.full((1, 3), sigma / _SQRT3)))
        return dataclasses.replace(readings.measurements, head_p=heads[0], head_q=heads[1])

    def _phase_v(self, bus: NDArray[np.integer]) -> FloatArray:
        """Nominal phase-to-neutral voltage (V) of buses."""
        result: FloatArray = self.feeder.buses.u_rated_v[bus] / _SQRT3
        return result

    def _priors_given_total(self, meter: Measurement, head_v_pu: float, der_p: FloatArray, der_q: FloatArray,
                            sigma_der: FloatArray, sp: float, sq: float) -> LoadPriors | None:
        """The estimator's load priors updated on their sum (the meter's import + the DERs' export - the losses
        downstream of the meter), for an unbalanced feeder (module docstring); None when the sum is not known (a
        DER's reading missing) or the power flow for the losses fails."""
        engine = self._downstream
        if self.estimator is None or engine is None or not (np.isfinite(der_p).all() and np.isfinite(der_q).all()):
            return None
        scale = self._scale(_value(meter.w) + float(der_p.sum()))
        if scale is None or not math.isfinite(scale):
            return None
        # the head-meter point, solved on the feeder downstream of the meter (source at the head bus): its losses
        # are those between the meter and the loads; the reactive ones assume constant-power loads
        flow = engine.solve_batch(der_p[None], der_q_var=der_q[None], load_p_w=(self._nominal_p * scale)[None],
                                  load_q_var=(self._nominal_q * scale)[None],
                                  source_v_pu=np.array([head_v_pu]) if math.isfinite(head_v_pu) else None)
        if not flow.converged[0]:
            return None
        loss_p = float(flow.losses_w[0])
        loss_q = float(flow.source_q_var[0] + der_q.sum() - self._nominal_q.sum() * scale)
        priors = self.estimator.priors
        parts = []
        for prior, total, sigma_total in ((priors.p, _value(meter.w) + der_p.sum() - loss_p,
                                           math.hypot(sp, float(np.linalg.norm(sigma_der)))),
                                          (priors.q, _value(meter.var) + der_q.sum() - loss_q,
                                           math.hypot(sq, float(np.linalg.norm(sigma_der))))):
            if not math.isfinite(total):
                parts.append(prior)
                continue
            mean, var = prior.value[0], prior.sigma[0] ** 2
            gain = var / (var.sum() + sigma_total**2)
            parts.append(Reading((mean + gain * (total - mean.sum()))[None], np.sqrt(var * (1.0 - gain))[None]))
        return LoadPriors(parts[0], parts[1])

    # -- the operating point ----------------------------------------------------------------------------------------
    def _estimated(self, states: Mapping[str, DeviceState]) -> _Loads:
        if self.estimator is None:
            raise _Unavailable("no estimator", self._no_estimator or "no estimator")
        try:
            readings = self._readings(states)
            est = self.estimator.estimate(readings.measurements, priors=readings.priors)
            if readings.totals is not None and est.converged[0]:
                est = self.estimator.estimate(self._split(readings, est), priors=readings.priors)
            if not est.converged[0]:
                raise EstimationError("the estimator did not solve this cycle's readings")
            op = operating_point(self.engine, est)
        except ObservabilityError as exc:
            raise _Unavailable("unobservable", _one_line(exc)) from exc
        except MeasurementError as exc:
            raise _Unavailable("measurements", _one_line(exc)) from exc
        except EstimationError as exc:
            raise _Unavailable("not estimated", _one_line(exc)) from exc
        except (TwinError, ValueError, ArithmeticError) as exc:
            raise _Unavailable("twin error", f"{type(exc).__name__}: {_one_line(exc)}") from exc
        return op.load_p_w, op.load_q_var, op.source_v_pu

    def _scaled(self, states: Mapping[str, DeviceState]) -> _Loads:
        load_w = self._implied_load(states)
        scale = self._scale(load_w)
        if scale is None:
            raise _Unavailable("head meter", f"the head meter implies a load of {load_w:.0f} W, which no multiple "
                                             "of the nominal loads draws")
        return self._nominal_p * scale, self._nominal_q * scale, self.twin.source_v_pu

    def _nominal(self, states: Mapping[str, DeviceState]) -> _Loads:
        """The nominal loads, unless a fresh head meter says the load lies outside ``load_bound`` times them (then
        the envelope's interval would not hold what is there)."""
        try:
            load_w = self._implied_load(states)
        except _Unavailable:
            return None, None, self.twin.source_v_pu
        lo, hi = self.twin.load_bound
        total = float(self._nominal_p.sum())
        if not lo * total <= load_w <= hi * total:
            raise _Unavailable("contradicted", f"the head meter implies a load of {load_w:.0f} W, outside "
                                               f"load_bound {lo:g}..{hi:g} x the nominal {total:.0f} W")
        return None, None, self.twin.source_v_pu

    def starting_point(self, states: Mapping[str, DeviceState]) -> StartingPoint | None:
        """The operating point an envelope would start from with these states: the first of the configured chain
        that can be made (module docstring), or None when none can. Records nothing (:meth:`envelope` does)."""
        with self._lock:
            return self._starting_point(states)[0]

    def _starting_point(self, states: Mapping[str, DeviceState]) -> tuple[StartingPoint | None, str, str]:
        """The point (or None), and why the modes before it could not be made: their causes (what the log keys
        on) and the reasons in words."""
        wanted = self.twin.operating_point
        reasons: list[str] = []
        causes: list[str] = []
        for mode in _CHAIN[wanted]:
            started = time.perf_counter()
            try:
                if mode == "estimate":
                    p, q, v = self._estimated(states)
                elif mode == "head-meter":
                    p, q, v = self._scaled(states)
                else:
                    p, q, v = self._nominal(states)
            except _Unavailable as exc:
                reasons.append(f"{mode}: {exc}")
                causes.append(exc.cause)
                continue
            used = PointUsed(mode, time.perf_counter() - started, "; ".join(reasons) or None)
            return StartingPoint(p, q, v, used), "; ".join(causes), used.reason or ""
        return None, "; ".join(causes), "; ".join(reasons)

    def _note(self, mode: Mode | None, wanted: str, cause: str, reason: str | None) -> None:
        key = (mode, cause)
        if key == self._logged:
            return
        if mode is None:
            log.warning("operating_point_unavailable", configured=wanted, reason=reason,
                        envelope="the configured default")
        elif mode != wanted:
            log.warning("operating_point_fallback", operating_point=mode, configured=wanted, reason=reason)
        elif self._logged is not None:
            log.info("operating_point_restored", operating_point=mode)
        self._logged = key

    # -- the envelope -----------------------------------------------------------------------------------------------
    def envelope(self, states: Mapping[str, DeviceState], *, now: float, sequence: int) -> Envelope:
        """This cycle's envelope (certified, or the default with the reason). Never raises for twin trouble."""
        with self._lock:
            return self._envelope(states, now=now, sequence=sequence)

    def _envelope(self, states: Mapping[str, DeviceState], *, now: float, sequence: int) -> Envelope:
        valid_until = now + self.twin.validity_s
        self.last_binding = None
        self.last_operating_point = None
        stale = [d.device for d in self.twin.ders if (s := states.get(d.device)) is None or s.stale]
        if stale:
            return self._default(now, valid_until, sequence, f"stale envelope holder(s): {', '.join(stale)}")
        point, causes, reason = self._starting_point(states)
        if point is None:
            self._note(None, self.twin.operating_point, causes, reason)
            return self._default(now, valid_until, sequence, f"no operating point: {reason}")
        self.last_operating_point = point.used
        self._note(point.used.mode, self.twin.operating_point, causes, point.used.reason)
        try:
            result = certify_envelope(self.engine, self.request, load_p_w=point.load_p_w,
                                      load_q_var=point.load_q_var, source_v_pu=point.source_v_pu)
        except (TwinError, ValueError) as exc:
            log.warning("twin_failed", error=str(exc))
            return self._default(now, valid_until, sequence, f"twin error: {exc}")
        self.last_binding = (result.certificate.export.binding, result.certificate.import_.binding)
        return self._from_result(result, now, valid_until, sequence)

    def _from_result(self, result: EnvelopeResult, now: float, valid_until: float, sequence: int) -> Envelope:
        cert = result.certificate
        if not result.certified:
            # A direction that could not certify takes each DER's configured default (the twin's request knows
            # one number for all); the other direction keeps its certified limits. Published as not certified.
            limits = tuple(
                DerLimit(got.der_id, got.export_w if cert.export.certified else default.export_w,
                         got.import_w if cert.import_.certified else default.import_w)
                for got, default in zip(result.ders(), self.defaults.limits, strict=True))
            return Envelope(self.issuer, sequence, now, valid_until, limits, False, None,
                            cert.reason or "not certified")
        return result.envelope(issuer=self.issuer, sequence=sequence, valid_from=now, valid_until=valid_until)

    def _default(self, now: float, valid_until: float, sequence: int, reason: str) -> Envelope:
        return Envelope(self.issuer, sequence, now, valid_until, self.defaults.limits, False, None, reason)


def _phases(m: Measurement) -> tuple[FloatArray, FloatArray, FloatArray] | None:
    """A meter's per-phase W, var and V (phases a, b, c) when it gave all three quantities, finite; else None."""
    if m.w_ph is None or m.var_ph is None or m.v_ph is None:
        return None
    out = tuple(np.asarray(x, dtype=float) for x in (m.w_ph, m.var_ph, m.v_ph))
    if not all(a.shape == (3,) and np.isfinite(a).all() for a in out):
        return None
    return out[0], out[1], out[2]


def _value(x: float | None) -> float:
    """A reading as a float, NaN when the device did not give it."""
    return math.nan if x is None else float(x)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (twin errors list their issues on several)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
