"""Test data for the state estimator: true states from AC power flow and noisy readings of them.

The truth is power-grid-model's Newton-Raphson power flow of the *whole* feeder (source, transformer, every bus,
no reduction), run here directly because the estimator needs what :class:`gateway.twin.FlowResult` does not carry:
the head meter's per-phase P and Q. The tests check this oracle against :class:`gateway.twin.PowerFlow`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from power_grid_model import CalculationMethod, ComponentType, PowerGridModel

from gateway.twin import Feeder, Measurements
from gateway.twin._pgm import pgm_layout


@dataclass(frozen=True)
class Truth:
    """``S`` true states: the inputs and what a perfect meter would read (per phase where asymmetric)."""

    load_p: np.ndarray  # (S, n_load) W drawn (constant-power loads: the power specified)
    load_q: np.ndarray
    der_p: np.ndarray  # (S, n_der) W exported
    der_q: np.ndarray
    v: np.ndarray  # (S, n_bus, 3) pu
    head_p: np.ndarray  # (S, 3) W into the feeder at the head meter
    head_q: np.ndarray
    losses: np.ndarray  # (S,) W downstream of the head meter
    source_v: np.ndarray  # (S,) pu


def head_bus(feeder: Feeder) -> tuple[int, int]:
    """(head bus, index of the head transformer or -1): a transformer's secondary when one touches the source."""
    t = feeder.transformers
    src = feeder.source.bus
    touching = np.flatnonzero((t.from_bus == src) | (t.to_bus == src))
    if len(touching) != 1:
        return src, -1
    k = int(touching[0])
    return int(t.to_bus[k] if t.from_bus[k] == src else t.from_bus[k]), k


def true_states(feeder: Feeder, load_p: np.ndarray, load_q: np.ndarray, der_p: np.ndarray, der_q: np.ndarray,
                source_v: np.ndarray) -> Truth:
    """Solve ``S`` scenarios of ``feeder`` (constant-power loads only) with power-grid-model."""
    assert (feeder.loads.model == 1).all(), "constant-power loads only"
    assert np.isnan(feeder.loads.vmin_pu).all(), "constant-power loads only (no voltage band)"
    sym = feeder.balanced
    layout = pgm_layout(feeder, symmetric=sym)
    model = PowerGridModel(layout.input_data, system_frequency=feeder.frequency_hz)
    size = load_p.shape[0]
    load_t, gen_t = layout.load_type, layout.gen_type

    def per_phase(x: np.ndarray, share: np.ndarray) -> np.ndarray:
        return x if sym else x[:, :, None] * share[None]

    update: dict[Any, Any] = {
        ComponentType(load_t): {"p_specified": per_phase(load_p, layout.load_share),
                                "q_specified": per_phase(load_q, layout.load_share)},
        ComponentType.source: {"u_ref": source_v[:, None]},
    }
    if len(feeder.ders):
        update[ComponentType(gen_t)] = {"p_specified": per_phase(der_p, layout.der_share),
                                        "q_specified": per_phase(der_q, layout.der_share)}
    out = model.calculate_power_flow(symmetric=sym, update_data=update, error_tolerance=1e-10, max_iterations=30,
                                     calculation_method=CalculationMethod.newton_raphson)
    u = out[ComponentType.node]["u_pu"]
    v = np.repeat(u[:, :, None], 3, axis=2) if sym else u
    head, k = head_bus(feeder)
    line = out.get(ComponentType.line)
    losses = np.zeros(size)
    if line is not None:
        lo = line["p_from"] + line["p_to"]
        losses += lo.sum(axis=1) if sym else lo.sum(axis=(1, 2))
    if k < 0:
        p, q = out[ComponentType.source]["p"][:, 0], out[ComponentType.source]["q"][:, 0]
    else:
        trafo = out[ComponentType.transformer]
        side = "to" if feeder.transformers.to_bus[k] == head else "from"
        p, q = -trafo[f"p_{side}"][:, k], -trafo[f"q_{side}"][:, k]
        others = np.arange(len(feeder.transformers)) != k
        lo = trafo["p_from"][:, others] + trafo["p_to"][:, others]
        losses += lo.sum(axis=1) if sym else lo.sum(axis=(1, 2))
    head_p = np.repeat(p[:, None] / 3, 3, axis=1) if sym else p
    head_q = np.repeat(q[:, None] / 3, 3, axis=1) if sym else q
    return Truth(load_p, load_q, der_p, der_q, v, head_p, head_q, losses, source_v)


@dataclass(frozen=True)
class Sigmas:
    """Meter accuracy (1-sigma): DER P/Q as a fraction of rating plus a floor, voltages pu, head P/Q fraction."""

    der_pq: float = 0.01
    der_v: float = 0.003
    head_pq: float = 0.005
    head_v: float = 0.002
    ami: float = 0.02


def readings(feeder: Feeder, truth: Truth, rng: np.random.Generator, sig: Sigmas = Sigmas(), *,
             ami: np.ndarray | None = None, der_v: bool = True) -> Measurements:
    """Noisy readings of ``truth``: every DER (P, Q, V), the head meter (P, Q, V per phase), AMI on the loads
    ``ami`` (indices). Each reading is the truth plus Gaussian noise with the sigma it is given with."""
    size = truth.load_p.shape[0]
    ders = feeder.ders
    rating = np.where(np.isfinite(ders.rating_w), ders.rating_w, 1e4)
    sp = np.broadcast_to(sig.der_pq * rating + 1.0, (size, len(ders)))
    der_bus_v = np.stack([truth.v[:, b, :][:, np.asarray(_phases(ph))].mean(axis=1)
                          for b, ph in zip(ders.bus, ders.phase, strict=True)], axis=1) if len(ders) else \
        np.zeros((size, 0))
    hp = sig.head_pq * np.abs(truth.head_p).mean() + 1.0
    hq = sig.head_pq * np.abs(truth.head_q).mean() + 1.0
    head, _ = head_bus(feeder)

    def noisy(x: np.ndarray, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        s = np.broadcast_to(s, x.shape)
        return x + rng.normal(size=x.shape) * s, s

    kwargs: dict[str, Any] = {
        "der_p": noisy(truth.der_p, sp), "der_q": noisy(truth.der_q, sp),
        "head_p": noisy(truth.head_p, hp), "head_q": noisy(truth.head_q, hq),
        "head_v": noisy(truth.v[:, head, :], sig.head_v),
    }
    if der_v and len(ders):
        kwargs["der_v"] = noisy(der_bus_v, sig.der_v)
    if ami is not None and len(ami):
        sa_p = sig.ami * np.abs(truth.load_p[:, ami]) + 1.0
        sa_q = sig.ami * np.abs(truth.load_q[:, ami]) + 1.0
        kwargs["load_ids"] = feeder.loads.name[ami]
        kwargs["load_p"] = noisy(truth.load_p[:, ami], sa_p)
        kwargs["load_q"] = noisy(truth.load_q[:, ami], sa_q)
    return Measurements.create(feeder, **kwargs)


def _phases(phase: int) -> list[int]:
    return [0, 1, 2] if phase == 0 else [phase - 1]


def to_pandapower(net: Any, feeder: Feeder, m: Measurements, load_p: Any, load_q: Any, row: int = 0) -> None:
    """Put scenario ``row`` of ``m`` (and the loads' pseudo-measurements ``load_p``/``load_q``, :class:`Reading`
    of shape (1, n_load)) into ``net`` as pandapower measurements, as the estimator weighs them (balanced feeder
    with its head meter at the source bus): one P and one Q per bus (the injections of its loads and DERs summed,
    variances summed), the head meter's P/Q at the source bus and its mean voltage there."""
    import pandapower as pp

    n = len(feeder.buses)
    inj = {"p": np.zeros(n), "q": np.zeros(n)}
    var = {"p": np.zeros(n), "q": np.zeros(n)}
    for kind, prior, der in (("p", load_p, m.der_p), ("q", load_q, m.der_q)):
        np.add.at(inj[kind], feeder.loads.bus, -prior.value[0])
        np.add.at(var[kind], feeder.loads.bus, prior.sigma[0] ** 2)
        measured = ~np.isnan(der.value[row])
        np.add.at(inj[kind], feeder.ders.bus[measured], der.value[row][measured])
        np.add.at(var[kind], feeder.ders.bus[measured], der.sigma[row][measured] ** 2)
        head = m.head_p if kind == "p" else m.head_q
        src = feeder.source.bus
        inj[kind][src] = head.value[row].sum()
        var[kind][src] = (head.sigma[row] ** 2).sum()
    for kind in ("p", "q"):  # pandapower's bus measurements count consumption positive, in MW / Mvar
        for b in range(n):
            pp.create_measurement(net, kind, "bus", -inj[kind][b] / 1e6, math.sqrt(var[kind][b]) / 1e6, element=b)
    v = m.head_v
    pp.create_measurement(net, "v", "bus", float(v.value[row].mean()), math.sqrt((v.sigma[row] ** 2).sum()) / 3,
                          element=feeder.source.bus)
