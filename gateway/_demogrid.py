"""The demo's grid: the simulated devices put on the demo's feeder, coupled through the twin's power flow.

Owns :class:`DemoGrid` (a small co-simulation), :class:`Placement`, :class:`LoadProfile` and :class:`Flow`. Every
second :meth:`DemoGrid.run` reads what each placed device's plant delivered (W, var; :attr:`gateway.sim.Plant.output`),
solves the feeder in a worker thread (the Modbus servers share the event loop and must not stall) and imposes on
the plants what the grid has there (:meth:`gateway.sim.SimulatedDevice.impose_grid`): each DER its bus's voltage
(on its phase; the mean of the three for a three-phase one), the head meter the flow into the LV side at the feeder
head and the head bus's voltage, per phase (a three-phase meter; any other its totals and the mean). What the
gateway reads is then one physical state, and its state estimate has a truth to find.

The truth of a step: the feeder's nominal loads times :class:`LoadProfile` (a slowly varying factor around 0.5,
each load with a little noise of its own), the source at ``source_v_pu``, every placed DER at its bus and phase.
The head is where the state estimator puts it (its ``cut``: the LV busbar at the transformer's secondary, see
:class:`gateway.twin.StateEstimator`): the whole feeder, solved from the source, gives the head bus's voltage; the
feeder downstream of the head, solved from that voltage, gives the flow through the meter (so it leaves out the
transformer, as the estimator's head does) and the voltages the DERs see. Two :class:`gateway.twin.PowerFlow`
solves, ~0.5 ms each on the IEEE European LV feeder. A device without a placement keeps its own models.

Per phase at the head: each phase's voltage is the whole feeder's at the head bus; each phase's flow is the
downstream solve's source output on that phase (``FlowResult.source_p_ph_w``), exact like the totals.

Blocking parts (:meth:`DemoGrid.solve`, :meth:`DemoGrid.flow`) are serialised by a lock: the engines are not
thread-safe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray

from gateway.errors import ConfigError
from gateway.segment import PHASES
from gateway.sim import SimulatedDevice
from gateway.twin import (
    EstimateOptions,
    Feeder,
    PowerFlow,
    StateEstimator,
    TwinError,
    phase_share,
    with_ders,
)

log = structlog.get_logger("gateway.demo.grid")

FloatArray = NDArray[np.float64]
_SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a simulated device sits on the feeder: its device id, bus name and phase (``"a"``, ``"b"``, ``"c"``
    or ``"abc"``), as ``[[twin.ders]]`` says it."""

    device: str
    bus: str
    phase: str = "abc"


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Each load's multiple of its nominal power at time ``t`` (s): ``mean * (1 + swing * sin(2 pi t / period_s))``
    for all, times ``1 + e`` for each load, ``e`` its own noise (a first-order autoregressive process: 1-sigma
    ``noise``, correlation time ``tau_s``; drawn from ``seed``)."""

    mean: float = 0.5
    swing: float = 0.1
    period_s: float = 240.0
    noise: float = 0.03
    tau_s: float = 20.0
    seed: int = 0

    def common(self, t: float) -> float:
        """The factor every load shares at ``t``."""
        return self.mean * (1.0 + self.swing * math.sin(2.0 * math.pi * t / self.period_s))


@dataclass(frozen=True, slots=True, eq=False)
class Flow:
    """One solved state of the feeder: its inputs (feeder order, nominal powers) and what the devices see.

    ``head_p_w``/``head_q_var``: the flow into the LV side at the head meter (+ into the feeder);
    ``head_v_pu``: the head bus's mean phase voltage; ``der_v_pu`` ``(n_placed,)``: each placement's voltage, pu of
    its bus's nominal phase voltage; ``head_p_ph_w``/``head_q_ph_var``/``head_v_ph_pu`` ``(3,)``: the same at the
    head per phase a, b, c (module docstring). ``converged`` False: the values are NaN.
    """

    load_p_w: FloatArray
    load_q_var: FloatArray
    der_p_w: FloatArray
    der_q_var: FloatArray
    source_v_pu: float
    head_p_w: float
    head_q_var: float
    head_v_pu: float
    der_v_pu: FloatArray
    converged: bool
    head_p_ph_w: FloatArray = dataclasses.field(default_factory=lambda: np.full(3, math.nan))
    head_q_ph_var: FloatArray = dataclasses.field(default_factory=lambda: np.full(3, math.nan))
    head_v_ph_pu: FloatArray = dataclasses.field(default_factory=lambda: np.full(3, math.nan))


class DemoGrid:
    """The demo's co-simulation (see the module docstring). Builds the power-flow engines; no I/O, no loops.

    ``devices``: every simulated device by id; ``placements``: the DERs on the feeder; ``meter``: the id of the
    head meter (None: none); ``clock``: the time the load profile runs on. Raises :class:`ConfigError` naming a
    placement or meter the feeder or the devices do not have.
    """

    def __init__(self, feeder: Feeder, devices: Mapping[str, SimulatedDevice], placements: Sequence[Placement], *,
                 meter: str | None, source_v_pu: float, profile: LoadProfile | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        issues = [f"placement {p.device!r}: no such simulated device" for p in placements if p.device not in devices]
        issues += [f"placement {p.device!r}: phase {p.phase!r} is not one of {', '.join(PHASES)}"
                   for p in placements if p.phase not in PHASES]
        issues += [f"placement {p.device!r}: the device is not animated (no plant to drive)"
                   for p in placements if p.device in devices and devices[p.device].plant is None]
        if meter is not None:
            plant = devices[meter].plant if meter in devices else None
            if plant is None or plant.meter_model is None:
                issues.append(f"meter {meter!r}: not an animated simulated meter (models 201-204)")
        if not (math.isfinite(source_v_pu) and source_v_pu > 0):
            issues.append(f"source_v_pu: expected a voltage > 0 pu, got {source_v_pu!r}")
        if issues:
            raise ConfigError("demo grid: " + "; ".join(issues))
        self.placements = tuple(placements)
        self.devices = {p.device: devices[p.device] for p in placements}
        self.meter = devices[meter] if meter is not None else None
        self.source_v_pu = float(source_v_pu)
        self.profile = profile or LoadProfile()
        self.clock = clock
        try:
            fed = with_ders(feeder, [p.device for p in placements], [p.bus for p in placements],
                            phase=[PHASES[p.phase] for p in placements])
            # the estimator's own cut: the head exactly where the gateway's state estimate puts its meter
            cut = StateEstimator(fed, EstimateOptions(uncertainty=False)).cut
        except TwinError as exc:
            raise ConfigError(f"demo grid: the devices cannot be placed on {feeder.name or 'the feeder'}: "
                              f"{exc}") from exc
        self.feeder = fed
        self._full = PowerFlow(fed)
        self._down = PowerFlow(cut.feeder)
        self.head_bus = int(cut.bus_from[cut.feeder.source.bus])
        self._head_down = int(cut.feeder.source.bus)
        self._der_bus = np.asarray(cut.feeder.ders.bus, dtype=np.intp)
        phase_v = fed.buses.u_rated_v / _SQRT3  # nominal phase-to-neutral voltage per bus (V)
        self._der_phase_v = np.asarray(phase_v[fed.ders.bus], dtype=float)
        self._head_phase_v = float(phase_v[self.head_bus])
        self._der_share = phase_share(fed.ders.phase)  # (n_der, 3): a single-phase DER reads its phase
        self._nominal_p = np.asarray(fed.loads.p_w, dtype=float)
        self._nominal_q = np.asarray(fed.loads.q_var, dtype=float)
        self._rng = np.random.default_rng(self.profile.seed)
        self._noise = self._rng.normal(0.0, self.profile.noise, len(fed.loads))
        self._t_noise: float | None = None
        self._t0 = clock()
        self._lock = threading.Lock()
        #: The last step's truth (None before the first that converged).
        self.last: Flow | None = None
        self._failing = False

    # -- the blocking part (a worker thread) ------------------------------------------------------------------------
    def loads(self, t: float) -> tuple[FloatArray, FloatArray]:
        """The loads' nominal P and Q (W, var; feeder order) at ``t`` seconds into the run; advances their noise."""
        prof = self.profile
        with self._lock:
            if self._t_noise is not None and t > self._t_noise:
                a = math.exp(-(t - self._t_noise) / prof.tau_s)
                self._noise = a * self._noise + math.sqrt(1.0 - a * a) * self._rng.normal(0.0, prof.noise,
                                                                                           self._noise.shape)
            self._t_noise = t if self._t_noise is None else max(t, self._t_noise)
            factor = prof.common(t) * (1.0 + self._noise)
        return self._nominal_p * factor, self._nominal_q * factor

    def flow(self, der_p_w: FloatArray, der_q_var: FloatArray, load_p_w: FloatArray, load_q_var: FloatArray,
             source_v_pu: float) -> Flow:
        """The feeder solved at these inputs (placements' order; feeder order for the loads), as the devices see it
        (see the module docstring). Blocking (two power flows)."""
        dp, dq = np.asarray(der_p_w, dtype=float)[None], np.asarray(der_q_var, dtype=float)[None]
        lp, lq = np.asarray(load_p_w, dtype=float)[None], np.asarray(load_q_var, dtype=float)[None]
        nan = math.nan
        with self._lock:
            full = self._full.solve_batch(dp, der_q_var=dq, load_p_w=lp, load_q_var=lq,
                                          source_v_pu=np.array([source_v_pu]))
            head_v = float(full.v_pu[0, self.head_bus].mean()) if full.converged[0] else nan
            down = self._down.solve_batch(dp, der_q_var=dq, load_p_w=lp, load_q_var=lq,
                                          source_v_pu=np.array([head_v])) if math.isfinite(head_v) else None
        if down is None or not down.converged[0]:
            return Flow(lp[0], lq[0], dp[0], dq[0], source_v_pu, nan, nan, head_v, np.full(len(self.placements), nan),
                        converged=False)
        der_v = (down.v_pu[0, self._der_bus] * self._der_share).sum(axis=1)
        head_p, head_q = float(down.source_p_w[0]), float(down.source_q_var[0])
        return Flow(lp[0], lq[0], dp[0], dq[0], source_v_pu, head_p, head_q,
                    float(down.v_pu[0, self._head_down].mean()), der_v, converged=True,
                    head_p_ph_w=np.asarray(down.source_p_ph_w[0], dtype=float),
                    head_q_ph_var=np.asarray(down.source_q_ph_var[0], dtype=float),
                    head_v_ph_pu=np.asarray(full.v_pu[0, self.head_bus], dtype=float))

    def solve(self, der_p_w: FloatArray, der_q_var: FloatArray, t: float) -> Flow:
        """The truth at ``t`` seconds into the run with the DERs at these outputs. Blocking."""
        load_p, load_q = self.loads(t)
        return self.flow(der_p_w, der_q_var, load_p, load_q, self.source_v_pu)

    # -- the event loop's part --------------------------------------------------------------------------------------
    def outputs(self) -> tuple[FloatArray, FloatArray]:
        """What each placed device's plant delivered at its last step (W, var; + export), placements' order."""
        out = np.array([d.plant.output if d.plant is not None else (0.0, 0.0) for d in self.devices.values()],
                       dtype=float).reshape(-1, 2)
        return out[:, 0].copy(), out[:, 1].copy()

    def impose(self, flow: Flow) -> None:
        """Put ``flow`` on the plants: each placed DER its voltage, the head meter its flow and voltage."""
        if not flow.converged:
            return
        for k, device in enumerate(self.devices.values()):
            device.impose_grid(_plant_pu(device, float(flow.der_v_pu[k]), float(self._der_phase_v[k])))
        meter = self.meter
        if meter is None:
            return
        v_pu = _plant_pu(meter, flow.head_v_pu, self._head_phase_v)
        assert meter.plant is not None  # checked when the grid was built
        if meter.plant.meter_model in (203, 204):  # three-phase: each phase its own
            p, q = flow.head_p_ph_w, flow.head_q_ph_var
            v = [_plant_pu(meter, float(x), self._head_phase_v) for x in flow.head_v_ph_pu]
            meter.impose_grid(v_pu, flow_ph=((float(p[0]), float(p[1]), float(p[2])),
                                             (float(q[0]), float(q[1]), float(q[2]))), v_ph_pu=(v[0], v[1], v[2]))
        else:
            meter.impose_grid(v_pu, (flow.head_p_w, flow.head_q_var))

    async def step(self) -> Flow:
        """One co-simulation step: read the plants, solve (worker thread), impose; returns the truth."""
        p, q = self.outputs()
        flow = await asyncio.to_thread(self.solve, p, q, self.clock() - self._t0)
        self.impose(flow)
        if flow.converged:
            self.last = flow
        if flow.converged == self._failing:  # a failure logged once, and the recovery once
            self._failing = not flow.converged
            if self._failing:
                log.warning("demo_grid_failing", reason="the power flow did not converge: the plants keep the "
                                                        "grid of the last step that did")
            else:
                log.info("demo_grid_restored")
        if flow.converged:
            log.debug("demo_grid", head_p_w=round(flow.head_p_w), head_q_var=round(flow.head_q_var),
                      head_v_pu=round(flow.head_v_pu, 5), load_p_w=round(float(flow.load_p_w.sum())),
                      der_p_w=[round(x) for x in flow.der_p_w],
                      der_v_pu=[round(float(v), 5) for v in flow.der_v_pu])
        return flow

    async def run(self, interval_s: float = 1.0) -> None:
        """:meth:`step` every ``interval_s`` seconds until cancelled."""
        while True:
            started = time.monotonic()
            await self.step()
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def _plant_pu(device: SimulatedDevice, v_bus_pu: float, bus_phase_v: float) -> float:
    """A bus voltage (pu of the bus's nominal phase voltage) in pu of the plant's own nominal: the same volts."""
    assert device.plant is not None  # checked when the grid was built
    return v_bus_pu * bus_phase_v / device.plant.v_nom()
