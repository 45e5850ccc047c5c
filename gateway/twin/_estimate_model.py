"""The state estimator's network: the feeder as seen from its head meter, and where each sensor sits.

Owns :func:`cut_at_head` and :class:`SensorPlan`. The estimator solves the (exactly reduced, see
:mod:`gateway.twin._reduce`) feeder downstream of the head meter, with the source moved to the head bus: nothing
upstream is measured, and power-grid-model 1.12's asymmetric estimation through a delta-wye transformer with an
unmeasured source behind it is singular or diverges (the source bus's zero-sequence voltage is unobservable). In
the estimate the source bus is power-grid-model's angle reference: in an asymmetric estimate its three phase
angles are held at 0, -120 and +120 degrees (the true head-bus phase angles differ by the transformer's
unbalanced voltage drop, a few hundredths of a degree at the IEEE European LV feeder's nominal load).

Power scale. :func:`scale_powers` applies an exact similarity (every power times ``alpha``, every impedance divided
by it, every shunt admittance times it): voltages are unchanged and powers scale by ``alpha``. power-grid-model
works in per unit of a fixed 1 MVA base, and its estimator solves some spreads of sigmas at one scale and not at
another (:mod:`gateway.twin._estimate_pgm`).

A :class:`SensorPlan` is built per measurement pattern (which DERs and head readings are present): the power
sensors (every load, every DER with P and Q, the source when the head meter has P and Q), the voltage sensors
(the head bus; in a symmetric estimate also every DER with a voltage reading) and the DER voltage readings an
asymmetric estimate applies afterwards (power-grid-model has no single-phase voltage sensor).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.twin._errors import FeederError, FeederIssue
from gateway.twin._feeder import FLOAT, INDEX, Buses, Feeder, Lines, Transformers

IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Cut:
    """``feeder`` downstream of the head meter (source at the head bus) and where its buses came from.

    ``bus_from`` ``(n_cut,)``: index of each cut bus in the feeder given to :func:`cut_at_head`.
    ``secondary``: the head meter sits at a transformer's secondary (else at the source bus).
    """

    feeder: Feeder
    bus_from: IntArray
    secondary: bool


def _head(feeder: Feeder, where: str) -> int:
    """Index of the transformer whose secondary holds the head meter, or -1 (the meter is at the source bus)."""
    t = feeder.transformers
    src = feeder.source.bus
    touching = np.flatnonzero((t.from_bus == src) | (t.to_bus == src))
    if where == "source":
        return -1
    if where == "secondary":
        if len(touching) != 1:
            raise FeederError((FeederIssue("estimator", "head", (), f"head='secondary' needs exactly one transformer "
                                                                    f"at the source bus, found {len(touching)}"),))
        return int(touching[0])
    if where != "auto":
        raise FeederError((FeederIssue("estimator", "head", (where,), "expected 'auto', 'source' or 'secondary'"),))
    return int(touching[0]) if len(touching) == 1 else -1


def cut_at_head(feeder: Feeder, where: str = "auto") -> Cut:
    """The feeder downstream of its head meter (see the module docstring); ``where``: ``"auto"`` (a transformer's
    secondary when exactly one transformer touches the source bus, else the source bus), ``"source"`` or
    ``"secondary"``. Raises :class:`FeederError` when loads or DERs sit upstream of the meter."""
    k = _head(feeder, where)
    if k < 0:
        return Cut(feeder, np.arange(len(feeder.buses), dtype=np.intp), secondary=False)
    t, ln = feeder.transformers, feeder.lines
    src = feeder.source.bus
    head = int(t.to_bus[k] if t.from_bus[k] == src else t.from_bus[k])
    n = len(feeder.buses)
    edges = [(int(a), int(b)) for a, b in zip(ln.from_bus, ln.to_bus, strict=True)]
    edges += [(int(a), int(b)) for j, (a, b) in enumerate(zip(t.from_bus, t.to_bus, strict=True)) if j != k]
    adjacent: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adjacent[a].append(b)
        adjacent[b].append(a)
    keep = np.zeros(n, dtype=bool)
    keep[head] = True
    queue = deque([head])
    while queue:
        for other in adjacent[queue.popleft()]:
            if not keep[other]:
                keep[other] = True
                queue.append(other)
    issues: list[FeederIssue] = []
    if keep[src]:
        issues.append(FeederIssue("transformer", "", (str(t.name[k]),), "the head meter's transformer is not the "
                                                                        "only path from the source"))
    for component, table in (("load", feeder.loads), ("der", feeder.ders)):
        upstream = ~keep[table.bus]
        if upstream.any():
            issues.append(FeederIssue(component, "bus", tuple(str(x) for x in table.name[upstream]),
                                      "upstream of the head meter: the estimator cannot see it"))
    if issues:
        raise FeederError(issues)
    remap = np.cumsum(keep, dtype=np.intp) - 1
    lines_in = keep[ln.from_bus] & keep[ln.to_bus]
    trafo_in = keep[t.from_bus] & keep[t.to_bus]
    trafo_in[k] = False
    lines = Lines(**{f.name: getattr(ln, f.name)[lines_in] for f in dataclasses.fields(Lines)})
    lines = dataclasses.replace(lines, from_bus=remap[lines.from_bus].astype(INDEX),
                                to_bus=remap[lines.to_bus].astype(INDEX))
    trafos = Transformers(**{f.name: getattr(t, f.name)[trafo_in] for f in dataclasses.fields(Transformers)})
    trafos = dataclasses.replace(trafos, from_bus=remap[trafos.from_bus].astype(INDEX),
                                 to_bus=remap[trafos.to_bus].astype(INDEX))
    cut = dataclasses.replace(
        feeder,
        buses=Buses(feeder.buses.name[keep], feeder.buses.u_rated_v[keep].astype(FLOAT)),
        source=dataclasses.replace(feeder.source, bus=int(remap[head])),
        lines=lines,
        transformers=trafos,
        loads=dataclasses.replace(feeder.loads, bus=remap[feeder.loads.bus].astype(INDEX)),
        ders=dataclasses.replace(feeder.ders, bus=remap[feeder.ders.bus].astype(INDEX)),
    )
    return Cut(cut, np.flatnonzero(keep), secondary=True)


def scale_powers(feeder: Feeder, alpha: float) -> Feeder:
    """``feeder`` with every power times ``alpha`` and every impedance divided by it (see the module docstring):
    the same voltages, powers times ``alpha``. Loads keep their model; DER connection points carry no power."""
    if alpha == 1.0:
        return feeder
    ln, t, ld, src = feeder.lines, feeder.transformers, feeder.loads, feeder.source
    return dataclasses.replace(
        feeder,
        lines=dataclasses.replace(ln, r1_ohm=ln.r1_ohm / alpha, x1_ohm=ln.x1_ohm / alpha, r0_ohm=ln.r0_ohm / alpha,
                                  x0_ohm=ln.x0_ohm / alpha, c1_f=ln.c1_f * alpha, c0_f=ln.c0_f * alpha,
                                  i_rated_a=ln.i_rated_a * alpha),
        transformers=dataclasses.replace(t, sn_va=t.sn_va * alpha, pk_w=t.pk_w * alpha, p0_w=t.p0_w * alpha),
        loads=dataclasses.replace(ld, p_w=ld.p_w * alpha, q_var=ld.q_var * alpha, p_min_w=ld.p_min_w * alpha,
                                  p_max_w=ld.p_max_w * alpha),
        ders=dataclasses.replace(feeder.ders, rating_w=feeder.ders.rating_w * alpha),
        source=dataclasses.replace(src, sk_va=src.sk_va * alpha),
    )


@dataclass(frozen=True, slots=True)
class Pattern:
    """Which readings a group of scenarios has: per DER P and Q, per DER voltage; head P and Q, head voltage."""

    der_pq: BoolArray
    der_v: BoolArray
    head_pq: bool
    head_v: bool

    @property
    def key(self) -> bytes:
        return np.concatenate([self.der_pq, self.der_v, [self.head_pq, self.head_v]]).tobytes()


@dataclass(frozen=True, slots=True)
class SensorPlan:
    """The sensors of one :class:`Pattern`, in power-grid-model order.

    Power sensors: every load, then ``der_sensor`` (DERs with P and Q), then the source when ``source_sensor``.
    Voltage sensors: the head bus when ``head_sensor``, then ``der_v_sensor`` (symmetric estimates only).
    ``der_v_update``: DERs whose voltage reading is applied after the solve (asymmetric estimates).
    """

    der_sensor: IntArray
    source_sensor: bool
    head_sensor: bool
    der_v_sensor: IntArray
    der_v_update: IntArray

    @classmethod
    def of(cls, pattern: Pattern, symmetric: bool) -> SensorPlan:
        der_v = np.flatnonzero(pattern.der_v)
        empty = np.zeros(0, dtype=np.intp)
        return cls(np.flatnonzero(pattern.der_pq), pattern.head_pq, pattern.head_v,
                   der_v if symmetric else empty, empty if symmetric else der_v)


def observability_issues(pattern: Pattern, symmetric: bool, der_names: NDArray[np.str_]) -> list[FeederIssue]:
    """Why a pattern's sensors cannot determine the state (empty: they can).

    The estimated network is a tree whose only branch-flow reading is none (the head meter measures the source's
    injection), so it is observable when it has a voltage reference and at most one injection is unmeasured (the
    others, loads by their pseudo-measurements included, fix it by difference). Two unmeasured injections could
    trade power freely.
    """
    issues: list[FeederIssue] = []
    if symmetric and not (pattern.head_v or pattern.der_v.any()):
        issues.append(FeederIssue("measurements", "voltage", (), "not observable: no voltage measurement; give the "
                                                                 "head meter's voltage or a DER's terminal voltage"))
    if not symmetric and not pattern.head_v:
        issues.append(FeederIssue("head", "head_v", (), "not observable: an unbalanced feeder's estimate needs the "
                                                       "head meter's three phase voltages (power-grid-model 1.12 "
                                                       "has no single-phase voltage sensor; DER voltages are "
                                                       "applied on top of that estimate)"))
    unknown = [f"der {n}" for n in der_names[~pattern.der_pq]]
    if not pattern.head_pq:
        unknown.append("head meter")
    if len(unknown) > 1:
        issues.append(FeederIssue("measurements", "power", tuple(unknown),
                                  f"not observable: {len(unknown)} injections have no P/Q reading and nothing "
                                  "separates them; at most one may be missing"))
    return issues
