"""Feeder validation: every rule a feeder must keep before it is solved, checked once, at load.

Owns :func:`validate_feeder` (returns every issue, naming component, field and element names) and
:func:`assert_valid_feeder` (raises :class:`FeederError` with them). Rules are small, vectorised and NaN-aware,
as power-grid-model's ``validation/_rules.py``; solves never re-check.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.twin._errors import FeederError, FeederIssue
from gateway.twin._feeder import Feeder, LoadModel, Phase, Winding


class _Issues:
    def __init__(self) -> None:
        self.items: list[FeederIssue] = []

    def check(self, bad: NDArray[np.bool_], component: str, field: str, names: NDArray[Any], message: str) -> None:
        if bad.any():
            self.items.append(FeederIssue(component, field, tuple(str(n) for n in names[bad]), message))

    def flag(self, bad: bool, component: str, field: str, name: str, message: str) -> None:
        if bad:
            self.items.append(FeederIssue(component, field, (name,), message))


def _finite_ge0(a: NDArray[np.float64]) -> NDArray[np.bool_]:
    return np.isfinite(a) & (a >= 0)


def _nan_or(a: NDArray[np.float64], ok: NDArray[np.bool_]) -> NDArray[np.bool_]:
    return np.isnan(a) | ok


def _unique(issues: _Issues, component: str, names: NDArray[np.str_]) -> None:
    values, counts = np.unique(names, return_counts=True)
    if (counts > 1).any():
        issues.items.append(FeederIssue(component, "name", tuple(str(v) for v in values[counts > 1]),
                                        "names must be unique"))
    issues.check(np.char.str_len(names) == 0, component, "name", names, "empty name")


def _bus_refs(issues: _Issues, component: str, field: str, names: NDArray[np.str_],
              bus: NDArray[np.int32], n_bus: int) -> None:
    issues.check((bus < 0) | (bus >= n_bus), component, field, names, f"bus index outside 0..{n_bus - 1}")


def _buses_and_lines(f: Feeder, issues: _Issues) -> None:
    b, ln = f.buses, f.lines
    _unique(issues, "bus", b.name)
    issues.check(~(np.isfinite(b.u_rated_v) & (b.u_rated_v > 0)), "bus", "u_rated_v", b.name,
                 "nominal voltage must be a positive number (V, line-to-line)")
    _unique(issues, "line", ln.name)
    _bus_refs(issues, "line", "from_bus", ln.name, ln.from_bus, len(b))
    _bus_refs(issues, "line", "to_bus", ln.name, ln.to_bus, len(b))
    issues.check(ln.from_bus == ln.to_bus, "line", "to_bus", ln.name, "a line must join two different buses")
    ends_ok = (ln.from_bus >= 0) & (ln.from_bus < len(b)) & (ln.to_bus >= 0) & (ln.to_bus < len(b))
    u_from = b.u_rated_v[np.where(ends_ok, ln.from_bus, 0)] if len(b) else np.zeros(len(ln))
    u_to = b.u_rated_v[np.where(ends_ok, ln.to_bus, 0)] if len(b) else np.zeros(len(ln))
    issues.check(ends_ok & ~np.isclose(u_from, u_to, rtol=1e-6), "line", "to_bus", ln.name,
                 "joins buses of different nominal voltage (a transformer is needed)")
    for field in ("r1_ohm", "x1_ohm", "c1_f", "c0_f"):
        issues.check(~_finite_ge0(getattr(ln, field)), "line", field, ln.name, "must be a number >= 0")
    for field in ("r0_ohm", "x0_ohm"):
        value = getattr(ln, field)
        issues.check(~_nan_or(value, value >= 0), "line", field, ln.name, "must be >= 0 (or absent: unknown)")
    issues.check((ln.r1_ohm == 0) & (ln.x1_ohm == 0), "line", "x1_ohm", ln.name,
                 "zero positive-sequence impedance: give the line a small impedance")
    issues.check(~_nan_or(ln.i_rated_a, ln.i_rated_a > 0), "line", "i_rated_a", ln.name,
                 "rated current must be > 0 (or absent: unrated)")
    if not f.balanced:
        issues.check(np.isnan(ln.r0_ohm) | np.isnan(ln.x0_ohm), "line", "r0_ohm", ln.name,
                     "zero-sequence impedance is needed: the feeder has single-phase loads or DERs")


def _transformers(f: Feeder, issues: _Issues) -> None:
    t = f.transformers
    _unique(issues, "transformer", t.name)
    _bus_refs(issues, "transformer", "from_bus", t.name, t.from_bus, len(f.buses))
    _bus_refs(issues, "transformer", "to_bus", t.name, t.to_bus, len(f.buses))
    issues.check(t.from_bus == t.to_bus, "transformer", "to_bus", t.name, "must join two different buses")
    for field in ("sn_va", "u1_v", "u2_v"):
        value = getattr(t, field)
        issues.check(~(np.isfinite(value) & (value > 0)), "transformer", field, t.name, "must be > 0")
    issues.check(~(np.isfinite(t.uk) & (t.uk > 0) & (t.uk < 1)), "transformer", "uk", t.name,
                 "short-circuit voltage must be in (0, 1) pu")
    issues.check(~(_finite_ge0(t.pk_w) & (t.pk_w < t.uk * t.sn_va)), "transformer", "pk_w", t.name,
                 "load loss must be >= 0 and below uk * sn_va")
    issues.check(~(_finite_ge0(t.i0) & (t.i0 < 1)), "transformer", "i0", t.name, "must be in [0, 1) pu")
    issues.check(~(_finite_ge0(t.p0_w) & (t.p0_w < t.sn_va)), "transformer", "p0_w", t.name,
                 "no-load loss must be >= 0 and below sn_va")
    known = np.array([w.value for w in Winding])
    for field in ("winding_from", "winding_to"):
        issues.check(~np.isin(getattr(t, field), known), "transformer", field, t.name,
                     "winding must be wye, wye_n or delta")
    mixed = (t.winding_from == Winding.DELTA) != (t.winding_to == Winding.DELTA)
    issues.check((t.clock < 0) | (t.clock > 12) | ((t.clock % 2 == 1) != mixed), "transformer", "clock", t.name,
                 "clock must be 0..12, odd for wye-delta and delta-wye, even otherwise")
    issues.check(~np.isin(t.tap_side, (0, 1)), "transformer", "tap_side", t.name, "must be from or to")
    low, high = np.minimum(t.tap_min, t.tap_max), np.maximum(t.tap_min, t.tap_max)
    issues.check((t.tap_pos < low) | (t.tap_pos > high), "transformer", "tap_pos", t.name,
                 "tap position outside [tap_min, tap_max]")
    issues.check((t.tap_nom < low) | (t.tap_nom > high), "transformer", "tap_nom", t.name,
                 "nominal tap outside [tap_min, tap_max]")
    issues.check(~_finite_ge0(t.tap_size_v), "transformer", "tap_size_v", t.name, "must be a number >= 0")


def _loads_and_ders(f: Feeder, issues: _Issues) -> None:
    ld, d = f.loads, f.ders
    _unique(issues, "load", ld.name)
    _bus_refs(issues, "load", "bus", ld.name, ld.bus, len(f.buses))
    phases = np.array([p.value for p in Phase])
    issues.check(~np.isin(ld.phase, phases), "load", "phase", ld.name, "phase must be abc, a, b or c")
    issues.check(~np.isfinite(ld.p_w), "load", "p_w", ld.name, "must be a number")
    issues.check(~np.isfinite(ld.q_var), "load", "q_var", ld.name, "must be a number")
    issues.check(~np.isin(ld.model, [m.value for m in LoadModel]), "load", "model", ld.name,
                 "model must be pq (1), z (2) or i (5)")
    issues.check(~_nan_or(ld.u_rated_v, ld.u_rated_v > 0), "load", "u_rated_v", ld.name, "must be > 0 (or absent)")
    for field in ("vmin_pu", "vmax_pu", "vlow_pu"):
        value = getattr(ld, field)
        issues.check(~_nan_or(value, value >= 0), "load", field, ld.name, "must be >= 0 (or absent: no band)")
    issues.check(ld.vmin_pu >= ld.vmax_pu, "load", "vmax_pu", ld.name, "vmax_pu must be above vmin_pu")
    one_given = np.isnan(ld.p_min_w) != np.isnan(ld.p_max_w)
    issues.check(one_given, "load", "p_max_w", ld.name, "give both ends of the interval, or neither")
    issues.check(ld.p_min_w > ld.p_max_w, "load", "p_min_w", ld.name, "interval is empty (p_min_w > p_max_w)")
    _unique(issues, "der", d.name)
    _bus_refs(issues, "der", "bus", d.name, d.bus, len(f.buses))
    issues.check(~np.isin(d.phase, phases), "der", "phase", d.name, "phase must be abc, a, b or c")
    issues.check(~_nan_or(d.rating_w, d.rating_w >= 0), "der", "rating_w", d.name, "must be >= 0 (or absent)")


def _source_limits(f: Feeder, issues: _Issues) -> None:
    s, lim = f.source, f.limits
    issues.flag(not 0 <= s.bus < len(f.buses), "source", "bus", "source", "bus index out of range")
    issues.flag(not (np.isfinite(s.v_pu) and s.v_pu > 0), "source", "v_pu", "source", "must be > 0")
    issues.flag(not (np.isfinite(s.sk_va) and s.sk_va > 0), "source", "sk_va", "source", "must be > 0")
    issues.flag(not (np.isfinite(s.rx_ratio) and s.rx_ratio >= 0), "source", "rx_ratio", "source", "must be >= 0")
    issues.flag(not (np.isfinite(s.z01_ratio) and s.z01_ratio > 0), "source", "z01_ratio", "source", "must be > 0")
    issues.flag(not 0 < lim.vmin_pu < lim.vmax_pu, "limits", "vmin_pu", "limits", "need 0 < vmin_pu < vmax_pu")
    issues.flag(not lim.max_loading > 0, "limits", "max_loading", "limits", "must be > 0")
    issues.flag(not (np.isfinite(f.frequency_hz) and f.frequency_hz > 0), "feeder", "frequency_hz", f.name,
                "must be > 0")


def _connectivity(f: Feeder, issues: _Issues) -> None:
    n = len(f.buses)
    if not 0 <= f.source.bus < n:
        return
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in zip(np.concatenate([f.lines.from_bus, f.transformers.from_bus]).tolist(),
                    np.concatenate([f.lines.to_bus, f.transformers.to_bus]).tolist(), strict=True):
        if 0 <= a < n and 0 <= b < n:
            neighbours[a].append(b)
            neighbours[b].append(a)
    seen = np.zeros(n, dtype=bool)
    seen[f.source.bus] = True
    queue = deque([f.source.bus])
    while queue:
        for nxt in neighbours[queue.popleft()]:
            if not seen[nxt]:
                seen[nxt] = True
                queue.append(nxt)
    issues.check(~seen, "bus", "", f.buses.name, "not connected to the source (dangling bus)")


def validate_feeder(feeder: Feeder) -> tuple[FeederIssue, ...]:
    """Every issue with ``feeder``; empty when it can be solved."""
    issues = _Issues()
    _buses_and_lines(feeder, issues)
    _transformers(feeder, issues)
    _loads_and_ders(feeder, issues)
    _source_limits(feeder, issues)
    _connectivity(feeder, issues)
    return tuple(issues.items)


def assert_valid_feeder(feeder: Feeder, source: str | None = None) -> None:
    """Raise :class:`FeederError` listing every issue, if there is any."""
    issues = validate_feeder(feeder)
    if issues:
        raise FeederError(issues, source or feeder.name)


def with_validation(parse_issues: list[FeederIssue], feeder: Feeder) -> list[FeederIssue]:
    """``parse_issues`` plus the validation issues of ``feeder`` (built with placeholders where parsing failed),
    leaving out what a parse issue already says of the same element (a placeholder's echo)."""
    said = {(i.component, name) for i in parse_issues for name in i.ids}
    out = list(parse_issues)
    for issue in validate_feeder(feeder):
        ids = tuple(name for name in issue.ids if (issue.component, name) not in said)
        if ids or not issue.ids:
            out.append(FeederIssue(issue.component, issue.field, ids, issue.message))
    return out
