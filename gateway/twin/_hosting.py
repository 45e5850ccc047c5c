"""Hosting capacity per bus: the largest new DER each bus takes with today's envelope holders at their limits.

Owns :func:`hosting_capacity` and its value types (:class:`HostingRequest`, :class:`HostingResult`). For each
candidate bus and each direction, the largest output (export: generation; import: consumption) of one new DER
there such that an AC power flow, with every envelope holder (the feeder's own DERs) at its published limit in
the same direction and the loads at the worst end of their interval, keeps the same criteria as the envelope
(:mod:`gateway.twin._criteria`).

Method: the holders' envelope first (given, or :func:`gateway.twin.certify_envelope`); then ONE engine of the
feeder with a hosting DER at every candidate bus (each scenario sets only its own), one batched AC solve of
every bus at two steps gives each bus's quadratic estimate (:func:`gateway.twin._sensitivity.quadratic_estimate`,
as the envelope's), and :func:`gateway.twin._search.bracket` corrects them all in the same batches (one line per
bus and direction) until each is bracketed to ``rtol``. A bus's answer is the highest level an AC solve passed
there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.twin._criteria import (
    DIRECTIONS,
    SIGN,
    Criteria,
    bounds,
    describe,
    failure,
    fit_powers,
    judge,
    observables,
    passes,
    resolve,
    search_cap_w,
    solve_rows,
)
from gateway.twin._envelope import EnvelopeError, EnvelopeRequest, EnvelopeResult, Policy, certify_envelope
from gateway.twin._errors import FeederError, FeederIssue
from gateway.twin._feeder import FLOAT, Feeder, Phase
from gateway.twin._flow import FlowOptions, FlowResult, PowerFlow
from gateway.twin._outcome import Work
from gateway.twin._search import Bracket, bracket
from gateway.twin._sensitivity import linear_step, quadratic_estimate, with_ders

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class HostingRequest:
    """What to compute: the candidate buses (names; ``None``: every bus but the source's), the new DER's phase,
    the AC criteria, the policy of the holders' envelope when none is given, and the search's tolerance and
    batch budget."""

    buses: tuple[str, ...] | None = None
    phase: Phase = Phase.ABC
    criteria: Criteria = field(default_factory=Criteria)
    policy: Policy = Policy.EQUAL
    rtol: float = 0.002
    max_batches: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", Phase(self.phase))
        object.__setattr__(self, "policy", Policy(self.policy))
        if self.buses is not None:
            object.__setattr__(self, "buses", tuple(str(b) for b in self.buses))
        if not (0 < self.rtol < 0.5) or self.max_batches < 1:
            raise EnvelopeError(f"rtol must be in (0, 0.5) and max_batches >= 1, got {self.rtol}, {self.max_batches}")


@dataclass(frozen=True, slots=True, eq=False)
class HostingResult:
    """Per candidate bus (``bus`` names), the hosting capacity in W: ``export_w`` (a new generator) and
    ``import_w`` (a new consumer), what binds each (``export_binding``/``import_binding``) and whether its
    search closed to ``rtol`` (``tolerance_met`` ``(2, n_bus)``, export row first).

    ``certified``: per direction, whether the holders at their limits with no new DER pass the check at all
    (if not, every bus hosts 0 W in that direction and ``reason`` says why). ``holders``: the envelope the
    feeder's own DERs were held at (``None``: the feeder has none)."""

    bus: NDArray[np.str_]
    export_w: FloatArray
    import_w: FloatArray
    export_binding: tuple[str, ...]
    import_binding: tuple[str, ...]
    tolerance_met: NDArray[np.bool_]
    certified: tuple[bool, bool]
    reason: str | None
    holders: EnvelopeResult | None
    phase: Phase
    vmin_limit_pu: float
    vmax_limit_pu: float
    loading_limit: float
    margin_v_pu: float
    margin_loading: float
    load_bound: tuple[float, float]
    method: str
    ac_solves: int
    batches: int

    def as_json(self) -> dict[str, Any]:
        """The ``gridedge twin hosting --json`` document (a stable interface: keys are added, never renamed)."""
        buses = {
            str(b): {"hosting_kw": e / 1e3, "import_hosting_kw": m / 1e3, "binding": eb, "import_binding": mb}
            for b, e, m, eb, mb in zip(self.bus, self.export_w, self.import_w, self.export_binding,
                                       self.import_binding, strict=True)
        }
        return {
            "buses": buses, "phase": self.phase.name.lower(), "certified": all(self.certified),
            "reason": self.reason, "holders": None if self.holders is None else self.holders.as_json(),
            "vmin_limit_pu": self.vmin_limit_pu, "vmax_limit_pu": self.vmax_limit_pu,
            "loading_limit": self.loading_limit, "margin_pu": self.margin_v_pu,
            "margin_loading": self.margin_loading, "load_bound": list(self.load_bound), "method": self.method,
            "ac_solves": self.ac_solves, "batches": self.batches,
            "tolerance_met": bool(self.tolerance_met.all()),
        }


def _candidates(feeder: Feeder, buses: tuple[str, ...] | None) -> NDArray[np.intp]:
    if buses is None:
        return np.array([b for b in range(len(feeder.buses)) if b != feeder.source.bus], dtype=np.intp)
    lookup = feeder.bus_lookup()
    unknown = [b for b in buses if b not in lookup]
    if unknown:
        raise FeederError([FeederIssue("bus", "name", tuple(unknown), "unknown bus (hosting candidate)")],
                          feeder.name)
    index = [lookup[b] for b in dict.fromkeys(buses)]
    return np.array(index, dtype=np.intp)


def _holders(feeder: Feeder, request: HostingRequest, holders: EnvelopeResult | None, options: FlowOptions | None,
             operating: dict[str, Any]) -> EnvelopeResult | None:
    if not len(feeder.ders):
        return None
    if holders is None:
        envelope = EnvelopeRequest(policy=request.policy, criteria=request.criteria, rtol=request.rtol,
                                   max_batches=request.max_batches)
        return certify_envelope(PowerFlow(feeder, options), envelope, **operating)
    if holders.der_id.tolist() != feeder.ders.name.tolist():
        raise EnvelopeError(f"the holders' envelope is for DERs {holders.der_id.tolist()}, the feeder has "
                            f"{feeder.ders.name.tolist()}")
    return holders


def hosting_capacity(feeder: Feeder, request: HostingRequest | None = None, *,
                     holders: EnvelopeResult | None = None, options: FlowOptions | None = None,
                     load_p_w: ArrayLike | None = None, load_q_var: ArrayLike | None = None,
                     source_v_pu: float | None = None) -> HostingResult:
    """Hosting capacity of ``request.buses`` of ``feeder`` (see the module docstring).

    ``holders``: the envelope of ``feeder.ders`` to hold them at (``None``: certified here with
    ``request.policy``). The operating point as :func:`gateway.twin.certify_envelope` takes it. Raises
    :class:`FeederError` for an unknown candidate bus; AC trouble never raises: a direction that fails even
    without a new DER hosts 0 W everywhere, with the reason."""
    request = request or HostingRequest()
    operating: dict[str, Any] = {"load_p_w": load_p_w, "load_q_var": load_q_var, "source_v_pu": source_v_pu}
    candidates = _candidates(feeder, request.buses)
    held = _holders(feeder, request, holders, options, operating)
    n_held, m = len(feeder.ders), candidates.size
    fed = with_ders(feeder, [f"~hosting-{k}" for k in range(m)], candidates,
                    phase=np.full(m, request.phase), keep=True)
    engine = PowerFlow(fed, options)
    check = resolve(request.criteria, fed, **operating)
    held_w = np.zeros((2, n_held)) if held is None else np.stack([held.export_w, held.import_w])
    work = Work()
    line_dir = np.repeat(np.arange(2, dtype=np.intp), m)  # line = direction * m + candidate
    line_col = n_held + np.tile(np.arange(m), 2)

    def outputs(line: NDArray[np.intp], level: FloatArray) -> FloatArray:
        der = np.zeros((line.size, n_held + m))
        der[:, :n_held] = held_w[line_dir[line]]
        der[np.arange(line.size), line_col[line]] = level
        result: FloatArray = SIGN[line_dir[line], None] * der
        return result

    cap = search_cap_w(check)
    step = min(max(0.02 * float(np.abs(check.load_p_w).sum(axis=1).max()), 1e3), 0.25 * cap)
    lines = np.arange(2 * m, dtype=np.intp)
    base = np.zeros((2, n_held + m))
    base[:, :n_held] = SIGN[:, None] * held_w
    # Rows: each direction without a new DER, then every line at s, then every line at 2 s.
    first = solve_rows(engine, check, np.concatenate([np.arange(2, dtype=np.intp), line_dir, line_dir]),
                       np.concatenate([base, outputs(lines, np.full(2 * m, step)),
                                       outputs(lines, np.full(2 * m, 2 * step))]))
    work.add(first.scenarios)
    x = observables(engine, first)
    lower, upper = bounds(engine, check)
    t_lin, _ = linear_step(x[line_dir], x[2 : 2 + 2 * m], np.full(2 * m, step), lower, upper)
    nodes = np.stack([line_dir, 2 + lines, 2 + 2 * m + lines], axis=1)
    # Where the check itself fails (no numeric guard: within a few W of the limit it would move the estimate).
    fitted, spread = quadratic_estimate(np.tile([0.0, step, 2 * step], (2 * m, 1)), x[nodes],
                                        *bounds(engine, check, 0.0), fit_powers(engine))
    estimate = np.where(np.isfinite(fitted), fitted, t_lin)  # none: the linear one (spread NaN: tried as such)
    margins_all = judge(check, first)
    guess = np.clip(np.where(np.isfinite(estimate), estimate, cap), 1e-9 * cap, cap)
    seed_rows = nodes[:, 1:]
    seed = (np.tile([step, 2 * step], (2 * m, 1)), margins_all[seed_rows], seed_rows)

    def evaluate(line: NDArray[np.intp], level: FloatArray) -> tuple[FlowResult, FloatArray]:
        res = solve_rows(engine, check, line_dir[line], outputs(line, level))
        return res, judge(check, res)

    found = bracket(evaluate, guess, np.full(2 * m, cap), margins_all[line_dir], line_dir.copy(), [first],
                    rtol=request.rtol, atol=np.full(2 * m, 1e-9 * cap), max_batches=request.max_batches, seed=seed,
                    spread=spread)
    work.add(found.solves, len(found.results) - 1)
    ok0 = passes(margins_all[:2])
    reasons = [None if ok0[d] else f"{DIRECTIONS[d]}: fails with the holders at their limits and no new DER: "
               + failure(engine, check, first, d, margins_all[d]) for d in (0, 1)]
    hosting = np.where(ok0[line_dir], np.maximum(found.lo, 0.0), 0.0).astype(FLOAT)
    binding = [_binding(engine, found, k, cap, ok0[line_dir[k]]) for k in range(2 * m)]
    return HostingResult(
        bus=fed.buses.name[candidates], export_w=hosting[:m], import_w=hosting[m:],
        export_binding=tuple(binding[:m]), import_binding=tuple(binding[m:]),
        tolerance_met=(found.done & ok0[line_dir]).reshape(2, m), certified=(bool(ok0[0]), bool(ok0[1])),
        reason="; ".join(r for r in reasons if r) or None, holders=held, phase=request.phase,
        vmin_limit_pu=check.vmin_pu, vmax_limit_pu=check.vmax_pu, loading_limit=check.max_loading,
        margin_v_pu=request.criteria.margin_v_pu, margin_loading=request.criteria.margin_loading,
        load_bound=request.criteria.load_bound,
        method=(f"quadratic estimate from 1 batch of finite-difference AC solves (two per bus and direction), AC "
                f"bracketing to rtol {request.rtol:g} in {work.batches - 1} more; {work.solves} AC scenarios "
                f"in all"),
        ac_solves=work.solves, batches=work.batches,
    )


def _binding(engine: PowerFlow, found: Bracket, k: int, cap: float, ok0: bool) -> str:
    if not ok0:
        return "fails without a new DER"
    if found.lo[k] >= cap:
        return "search bound"
    hb, hr = found.hi_ref[k]
    if hb < 0:
        return "search not closed (no failing level found)"
    if not np.isfinite(found.margins_hi[k]).all():
        return "non-convergence"
    return describe(engine, found.results[hb], int(hr), int(np.argmax(found.margins_hi[k])))
