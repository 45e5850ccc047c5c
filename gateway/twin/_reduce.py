"""Exact network reduction for solving: drop dead ends, merge chains of lines, and expand the answer back.

Owns :func:`reduce_feeder` and :class:`Reduction`. A feeder model lists many buses that carry no load and join
just two lines (cable joints, poles: 796 of the IEEE European LV feeder's 907 buses), and dead-end branches. With no
injection and no shunt capacitance along it, a chain of lines carries one current, so it solves exactly as one
line with the summed sequence impedances; a dead-end branch carries none. The engine solves the reduced feeder and
:meth:`Reduction.expand` recovers every original bus voltage: on a chain from ``a`` to ``b`` each sequence voltage
is the linear interpolation ``(1 - f) V_a + f V_b`` with ``f`` the impedance fraction from ``a`` (``f1`` for the
positive and negative sequence, ``f0`` for zero sequence); a dead-end bus has its attachment's voltage. Every
original line carries its chain's current (or none). Lines with shunt capacitance are never merged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.twin._feeder import FLOAT, INDEX, Buses, Feeder, Lines

_A = np.exp(2j * np.pi / 3)
#: Fortescue: phase (a, b, c) = FORTESCUE @ sequence (0, 1, 2).
FORTESCUE = np.array([[1, 1, 1], [1, _A**2, _A], [1, _A, _A**2]], dtype=np.complex128)
FORTESCUE_INV = np.linalg.inv(FORTESCUE)


@dataclass(frozen=True, slots=True)
class Reduction:
    """The reduced feeder and how to get back.

    ``kept`` ``(n_kept,)``: original index of each reduced bus. Per original bus: ``bus_a``/``bus_b`` (reduced
    indices of the chain ends; equal for kept and dead-end buses) and ``f1``/``f0`` (complex impedance
    fractions from ``a``). Per original line: ``line_chain``, the reduced line carrying its current (-1: none).
    """

    feeder: Feeder
    kept: NDArray[np.int32]
    bus_a: NDArray[np.intp]
    bus_b: NDArray[np.intp]
    f1: NDArray[np.complex128]
    f0: NDArray[np.complex128]
    line_chain: NDArray[np.intp]

    @property
    def trivial(self) -> bool:
        """True when no bus was eliminated (the reduced feeder would only reorder the lines)."""
        return len(self.kept) == len(self.bus_a)

    def expand(self, v: NDArray[np.complex128]) -> NDArray[np.complex128]:
        """Complex bus voltages ``(S, n_kept)`` (positive sequence) or ``(S, n_kept, 3)`` (phases a, b, c) of the
        reduced feeder -> the same for every original bus."""
        va = v[:, self.bus_a]
        d = v[:, self.bus_b] - va
        if v.ndim == 2:
            return va + self.f1 * d
        # Sequence interpolation in phase terms: FORTESCUE diag(f0, f1, f1) FORTESCUE^-1 = f1 I + (f0 - f1) J / 3,
        # J the all-ones matrix (the zero sequence is the phase mean).
        result: NDArray[np.complex128] = va + self.f1[:, None] * d + ((self.f0 - self.f1) / 3.0)[:, None] * d.sum(
            axis=2, keepdims=True)
        return result

    def expand_magnitude(self, v: NDArray[np.complex128], scratch: ExpandScratch) -> NDArray[np.float64]:
        """``abs(expand(v))`` for ``(S, n_kept, phases)`` voltages, computed in ``scratch`` (reused between calls:
        large temporaries cost page faults). The result is ``scratch.magnitude``: copy it to keep it."""
        va, d = scratch.va, scratch.d
        np.take(v, self.bus_a, axis=1, out=va)
        np.take(v, self.bus_b, axis=1, out=d)
        d -= va
        if v.shape[2] == 3:
            zero = scratch.zero
            np.add(d[:, :, 0], d[:, :, 1], out=zero)
            zero += d[:, :, 2]
            zero *= scratch.zero_step
        d *= scratch.f1
        d += va
        if v.shape[2] == 3:
            d += scratch.zero[:, :, None]
        return np.abs(d, out=scratch.magnitude)

    def scratch(self, size: int, phases: int) -> ExpandScratch:
        return ExpandScratch(size, len(self.bus_a), phases, self.f1, self.f0)


class ExpandScratch:
    """Buffers of :meth:`Reduction.expand_magnitude` for ``size`` scenarios."""

    def __init__(self, size: int, n_bus: int, phases: int, f1: NDArray[np.complex128],
                 f0: NDArray[np.complex128]) -> None:
        self.va = np.empty((size, n_bus, phases), dtype=np.complex128)
        self.d = np.empty_like(self.va)
        self.zero = np.empty((size, n_bus), dtype=np.complex128)
        self.magnitude = np.empty((size, n_bus, phases), dtype=np.float64)
        self.f1 = f1[:, None]
        self.zero_step = (f0 - f1) / 3.0


def _essential(feeder: Feeder) -> NDArray[np.bool_]:
    keep = np.zeros(len(feeder.buses), dtype=bool)
    keep[feeder.source.bus] = True
    for index in (feeder.loads.bus, feeder.ders.bus, feeder.transformers.from_bus, feeder.transformers.to_bus):
        keep[index] = True
    ln = feeder.lines
    charged = (ln.c1_f != 0) | (ln.c0_f != 0)
    keep[ln.from_bus[charged]] = True
    keep[ln.to_bus[charged]] = True
    return keep


def reduce_feeder(feeder: Feeder) -> Reduction:
    """The exact reduction of a validated ``feeder`` (see the module docstring)."""
    n, ln = len(feeder.buses), feeder.lines
    keep = _essential(feeder)
    incident: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for k, (a, b) in enumerate(zip(ln.from_bus.tolist(), ln.to_bus.tolist(), strict=True)):
        incident[a].append((k, b))
        incident[b].append((k, a))
    line_alive = np.ones(len(ln), dtype=bool)
    alive = np.ones(n, dtype=bool)
    degree = np.array([len(x) for x in incident])
    attach = np.arange(n)
    # 1. Prune dead ends: a non-essential bus with one live line carries no current.
    order: list[int] = []
    stack = [i for i in range(n) if not keep[i] and degree[i] <= 1]
    while stack:
        i = stack.pop()
        if not alive[i] or keep[i] or degree[i] > 1:
            continue
        alive[i] = False
        order.append(i)
        for k, other in incident[i]:
            if line_alive[k]:
                line_alive[k] = False
                attach[i] = other
                degree[other] -= 1
                if not keep[other] and degree[other] <= 1:
                    stack.append(other)
    # 2. Walk chains between non-intermediate buses.
    middle = alive & ~keep & (degree == 2)
    ends = np.flatnonzero(alive & ~middle)
    reduced_index = np.full(n, -1, dtype=np.intp)
    reduced_index[ends] = np.arange(len(ends))
    bus_a = reduced_index.copy()
    bus_b = reduced_index.copy()
    f1 = np.zeros(n, dtype=np.complex128)
    f0 = np.zeros(n, dtype=np.complex128)
    line_chain = np.full(len(ln), -1, dtype=np.intp)
    seen = ~line_alive
    z1 = ln.r1_ohm + 1j * ln.x1_ohm
    z0 = ln.r0_ohm + 1j * ln.x0_ohm
    merged: list[tuple[int, int, complex, complex, int]] = []  # from, to, z1, z0, first original line
    for start in ends.tolist():
        for k, other in incident[start]:
            if seen[k]:
                continue
            buses, chain_lines = [], [k]
            seen[k] = True
            cur, prev = other, k
            while middle[cur]:
                buses.append(cur)
                k2, nxt = next((kk, o) for kk, o in incident[cur] if line_alive[kk] and kk != prev)
                seen[k2] = True
                chain_lines.append(k2)
                cur, prev = nxt, k2
            cum1, cum0 = np.cumsum(z1[chain_lines]), np.cumsum(z0[chain_lines])
            if cur == start:  # a loop of non-essential buses back to where it began: no current
                for m in buses:
                    bus_a[m] = bus_b[m] = reduced_index[start]
                continue
            chain = len(merged)
            merged.append((int(reduced_index[start]), int(reduced_index[cur]), complex(cum1[-1]), complex(cum0[-1]),
                           chain_lines[0]))
            line_chain[chain_lines] = chain
            for j, m in enumerate(buses):
                bus_a[m], bus_b[m] = reduced_index[start], reduced_index[cur]
                f1[m] = cum1[j] / cum1[-1]
                f0[m] = cum0[j] / cum0[-1] if np.isfinite(cum0[-1]) and cum0[-1] != 0 else f1[m]
    # 3. Dead ends take their attachment's place, latest pruned first.
    for i in reversed(order):
        p = attach[i]
        bus_a[i], bus_b[i], f1[i], f0[i] = bus_a[p], bus_b[p], f1[p], f0[p]
    kept = ends.astype(INDEX)
    first = np.array([m[4] for m in merged], dtype=np.intp)
    lines = Lines(
        name=ln.name[first] if len(first) else np.array([], dtype=np.str_),
        from_bus=np.array([m[0] for m in merged], dtype=INDEX), to_bus=np.array([m[1] for m in merged], dtype=INDEX),
        r1_ohm=np.array([m[2].real for m in merged], dtype=FLOAT), x1_ohm=np.array([m[2].imag for m in merged]),
        c1_f=ln.c1_f[first], r0_ohm=np.array([m[3].real for m in merged], dtype=FLOAT),
        x0_ohm=np.array([m[3].imag for m in merged], dtype=FLOAT), c0_f=ln.c0_f[first],
        i_rated_a=np.full(len(merged), np.nan),
    )
    remap = reduced_index.astype(INDEX)
    reduced = dataclasses.replace(
        feeder,
        buses=Buses(feeder.buses.name[ends], feeder.buses.u_rated_v[ends]),
        source=dataclasses.replace(feeder.source, bus=int(remap[feeder.source.bus])),
        lines=lines,
        transformers=dataclasses.replace(feeder.transformers, from_bus=remap[feeder.transformers.from_bus],
                                         to_bus=remap[feeder.transformers.to_bus]),
        loads=dataclasses.replace(feeder.loads, bus=remap[feeder.loads.bus]),
        ders=dataclasses.replace(feeder.ders, bus=remap[feeder.ders.bus]),
    )
    return Reduction(reduced, kept, bus_a, bus_b, f1, f0, line_chain)
