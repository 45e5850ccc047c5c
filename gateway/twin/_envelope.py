"""Certified operating envelopes: per DER, the export and import limits (W) an AC power flow certifies.

Owns :func:`certify_envelope` and its value types (:class:`EnvelopeRequest`, :class:`EnvelopeResult`,
:class:`Certificate`, :class:`DirectionCertificate`, :class:`DerEnvelope`). The guarantee: with **every** DER
at its limit at once and every load at the worst end of its interval (export: minimum load; import: maximum
load, :mod:`gateway.twin._criteria`), an AC power flow keeps every phase voltage inside
``[vmin + margin, vmax - margin]`` and every rated line and transformer below ``max_loading - margin``. The
published limits are the AC-solved scenario that showed it, never a linear estimate.

Method (ARCHITECTURE.md, "The certified envelope"), both directions in the same batches:

1. one batched AC solve of finite-difference scenarios at the operating point: for ``equal``/``proportional``
   the base and one step along the policy's direction (4 scenarios); for ``max-total`` the base and one step
   per DER. They give the linear first estimate (:mod:`gateway.twin._sensitivity`);
2. ``equal``/``proportional``: a few batches of AC solves bracket the largest common level (W each, capped at
   each rating; or fraction of rating) around the linear estimate and refine it by secant on the binding margin
   until the bracket is within ``rtol`` (:mod:`gateway.twin._search`). ``max-total``: a sequence of LPs
   (HiGHS) on sensitivities re-taken by AC at each iterate, then an AC back-off (:mod:`gateway.twin._maxtotal`);
3. the certificate: the worst voltage and loading the AC solve saw at the published envelope, the limits,
   margins and load bound, what binds, and how many AC scenarios and batches it took.

When a direction cannot be certified (the check fails even with every DER at 0 W, a solve does not converge,
the engine fails) that direction publishes the request's **default envelope** with ``certified`` False and the
reason; the other direction keeps its own result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.twin._criteria import (
    CATEGORIES,
    DIRECTIONS,
    EXPORT,
    IMPORT,
    Check,
    Criteria,
    bounds,
    describe,
    judge,
    observables,
    passes,
    resolve,
    solve_rows,
)
from gateway.twin._errors import TwinError
from gateway.twin._feeder import FLOAT
from gateway.twin._flow import FlowResult, PowerFlow
from gateway.twin._search import bracket
from gateway.twin._sensitivity import linear_step

FloatArray = NDArray[np.float64]
SIGN = np.array([1.0, -1.0])  # export injects, import draws


class EnvelopeError(TwinError, ValueError):
    """An envelope request cannot be computed as asked (no DER, a policy needing ratings it lacks, ...)."""


class Policy(StrEnum):
    """How the feeder's room is shared between DERs."""

    EQUAL = "equal"  # the same W each, capped at each DER's rating
    PROPORTIONAL = "proportional"  # the same fraction of each DER's rating
    MAX_TOTAL = "max-total"  # the largest total (LP), AC-corrected


@dataclass(frozen=True, slots=True)
class EnvelopeRequest:
    """What to compute: policy, AC criteria, the default envelope (W per DER, capped at its rating) published
    when a direction cannot be certified, and the search's relative tolerance and batch budget."""

    policy: Policy = Policy.EQUAL
    criteria: Criteria = field(default_factory=Criteria)
    default_export_w: float = 0.0
    default_import_w: float = 0.0
    rtol: float = 0.002
    max_batches: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy(self.policy))
        if not (0 < self.rtol < 0.5) or self.max_batches < 1:
            raise EnvelopeError(f"rtol must be in (0, 0.5) and max_batches >= 1, got {self.rtol}, {self.max_batches}")
        for name in ("default_export_w", "default_import_w"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise EnvelopeError(f"{name}: must be a number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class DirectionCertificate:
    """The AC check of one direction at the published envelope.

    ``vmax_pu``/``vmin_pu``/``max_loading``: the worst values the AC solve saw there (NaN when not certified;
    ``max_loading`` NaN when nothing is rated). ``binding``: what stops the envelope going higher ("vmax at bus
    b17", "loading of line l3", "rating", "search bound", ...). ``load_scale``: the multiplier applied to loads
    without an interval (the bound's low end for export, high end for import). ``tolerance_met``: the search
    closed to ``rtol`` (if not, the published level still passed AC, it may just be further below the truth).
    """

    direction: str
    certified: bool
    reason: str | None
    vmax_pu: float
    vmin_pu: float
    max_loading: float
    binding: str
    load_scale: float
    tolerance_met: bool


@dataclass(frozen=True, slots=True)
class Certificate:
    """How the envelope was certified: per direction, the limits, margins, method and AC work."""

    export: DirectionCertificate
    import_: DirectionCertificate
    vmin_limit_pu: float
    vmax_limit_pu: float
    loading_limit: float
    margin_v_pu: float
    margin_loading: float
    load_bound: tuple[float, float]
    method: str
    ac_solves: int
    batches: int

    @property
    def certified(self) -> bool:
        return self.export.certified and self.import_.certified

    @property
    def reason(self) -> str | None:
        reasons = [f"{d.direction}: {d.reason}" for d in (self.export, self.import_) if d.reason]
        return "; ".join(reasons) or None

    @property
    def vmax_pu(self) -> float:
        """The highest voltage seen at either direction's published envelope."""
        return float(np.fmax(self.export.vmax_pu, self.import_.vmax_pu))

    @property
    def vmin_pu(self) -> float:
        return float(np.fmin(self.export.vmin_pu, self.import_.vmin_pu))

    @property
    def max_loading(self) -> float:
        return float(np.fmax(self.export.max_loading, self.import_.max_loading))


@dataclass(frozen=True, slots=True)
class DerEnvelope:
    """One DER's limits, W (import as a positive magnitude)."""

    der_id: str
    export_w: float
    import_w: float


@dataclass(frozen=True, slots=True, eq=False)
class EnvelopeResult:
    """The envelope of every DER of the engine's feeder (``feeder.ders`` order), and its certificate.

    ``export_w``/``import_w`` ``(n_der,)``: the published limits (import as positive magnitudes).
    ``export_linear_w``/``import_linear_w``: the linear first estimate, for diagnostics only (NaN when none).
    """

    der_id: NDArray[np.str_]
    export_w: FloatArray
    import_w: FloatArray
    export_linear_w: FloatArray
    import_linear_w: FloatArray
    policy: Policy
    certificate: Certificate

    @property
    def certified(self) -> bool:
        return self.certificate.certified

    def ders(self) -> tuple[DerEnvelope, ...]:
        return tuple(DerEnvelope(str(i), float(e), float(m))
                     for i, e, m in zip(self.der_id, self.export_w, self.import_w, strict=True))


@dataclass(slots=True)
class Outcome:
    """One direction's answer, as the policies hand it back (internal)."""

    limit_w: FloatArray
    linear_w: FloatArray
    certified: bool
    reason: str | None
    values: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    binding: str = ""
    tolerance_met: bool = False


@dataclass(slots=True)
class Work:
    """AC solves and batches spent (internal)."""

    solves: int = 0
    batches: int = 0


def search_cap_w(engine: PowerFlow, check: Check) -> float:
    """The level searched up to where nothing else bounds it: ten times the larger total load, at least 1 MW."""
    return float(max(10.0 * np.abs(check.load_p_w).sum(axis=1).max(), 1e6))


def worst_values(res: FlowResult, row: int) -> tuple[float, float, float]:
    return float(res.vmax_pu[row]), float(res.vmin_pu[row]), float(res.max_loading[row])


def failure(engine: PowerFlow, check: Check, res: FlowResult, row: int, margins: FloatArray) -> str:
    """Why the scenario ``row`` fails, in words."""
    if not res.converged[row]:
        return "the AC power flow did not converge"
    k = int(np.argmax(margins))
    value = worst_values(res, row)[k]
    limit = (check.v_high, check.v_low, check.loading_high)[k]
    side = ("above", "below", "above")[k]
    return f"{describe(engine, res, row, k)} is {value:.4f}, {side} {limit:.4f} ({CATEGORIES[k]} limit with margin)"


def _profile(policy: Policy, rating: FloatArray, level: FloatArray) -> FloatArray:
    """DER outputs ``(R, n)`` (magnitudes) at ``level`` ``(R,)`` along the policy's direction."""
    if policy is Policy.EQUAL:
        return np.minimum(level[:, None], rating[None, :])
    return level[:, None] * rating[None, :]


def _mean_capped(rating: FloatArray, level: FloatArray) -> FloatArray:
    """``equal``: the mean DER output at ``level`` (``(R,)``), each capped at its rating."""
    result: FloatArray = np.minimum(level[:, None], rating[None, :]).mean(axis=1)
    return result


def _uncap(rating: FloatArray, mean: float) -> float:
    """``equal``: the level whose mean capped output is ``mean`` (inverse of :func:`_mean_capped`)."""
    r = np.sort(rating)
    n = r.size
    # Between r[k-1] and r[k], mean(t) = (sum(r[:k]) + (n - k) t) / n.
    below = np.concatenate([[0.0], np.cumsum(r)[:-1]])
    level = (n * mean - below) / (n - np.arange(n))
    lower = np.concatenate([[0.0], r[:-1]])
    inside = (level >= lower) & (level <= r)
    return float(level[inside][0]) if inside.any() else float(r[-1])


def _along(engine: PowerFlow, check: Check, request: EnvelopeRequest, rating: FloatArray,
           work: Work) -> tuple[Outcome, Outcome]:
    """``equal`` and ``proportional``: the largest common level, both directions in the same batches."""
    policy = request.policy
    equal = policy is Policy.EQUAL
    t_max = float(rating.max()) if equal else 1.0
    total_load = float(np.abs(check.load_p_w).sum(axis=1).max())
    step_w = max(0.02 * total_load, 1e3)  # the finite-difference step, all DERs together
    step = step_w / rating.size if equal else step_w / float(rating.sum())
    step = min(step, 0.5 * t_max)
    direction = np.array([EXPORT, EXPORT, IMPORT, IMPORT], dtype=np.intp)
    level = np.array([0.0, step, 0.0, step])
    sens = solve_rows(engine, check, direction, SIGN[direction, None] * _profile(policy, rating, level))
    work.solves, work.batches = work.solves + 4, work.batches + 1
    x = observables(engine, sens)
    lower, upper = bounds(engine, check)
    # Linear in the mean output (equal: DERs stop at their rating, so the level is the mean's inverse).
    unit = float(_mean_capped(rating, np.array([step]))[0]) if equal else step
    u_lin, _ = linear_step(x[[0, 2]], x[[1, 3]], np.array([unit, unit]), lower, upper)
    t_lin = np.array([_uncap(rating, u) if equal and np.isfinite(u) else u for u in u_lin])
    margins0 = judge(check, sens)[[0, 2]]
    t_cap = np.full(2, t_max)
    guess = np.clip(np.where(np.isfinite(t_lin), t_lin, t_max), 1e-3 * t_max, t_max)

    def evaluate(line: NDArray[np.intp], lv: FloatArray) -> tuple[FlowResult, FloatArray]:
        res = solve_rows(engine, check, line, SIGN[line, None] * _profile(policy, rating, lv))
        return res, judge(check, res)

    ref0 = np.array([0, 2], dtype=np.intp)
    found = bracket(evaluate, guess, t_cap, margins0, ref0, [sens], rtol=request.rtol,
                    atol=np.full(2, 1e-9 * t_max), max_batches=request.max_batches)
    work.solves += found.solves
    work.batches += len(found.results) - 1
    outcomes = []
    for d in (EXPORT, IMPORT):
        linear = _profile(policy, rating, np.array([min(t_lin[d], t_max)]))[0]
        if not passes(margins0[d : d + 1])[0]:
            reason = "fails with every DER at 0 W: " + failure(engine, check, sens, 2 * d, margins0[d])
            outcomes.append(Outcome(np.zeros_like(rating), linear, False, reason))
            continue
        lo = found.lo[d]
        batch, row = found.lo_ref[d]
        res = found.results[batch]
        if lo >= t_max:
            binding = "rating" if policy is Policy.PROPORTIONAL or request_rated(rating, t_max) else "search bound"
        else:
            hb, hr = found.hi_ref[d]
            binding = describe(engine, found.results[hb], hr, int(np.argmax(found.margins_hi[d]))) \
                if hb >= 0 and np.isfinite(found.margins_hi[d]).all() else "non-convergence"
        outcomes.append(Outcome(_profile(policy, rating, np.array([lo]))[0], linear, True, None,
                                worst_values(res, row), binding, bool(found.done[d])))
    return outcomes[0], outcomes[1]


def request_rated(rating: FloatArray, t_max: float) -> bool:
    """Whether ``t_max`` came from a stated rating (not from the search cap)."""
    return bool(np.isfinite(rating).all())


def certify_envelope(engine: PowerFlow, request: EnvelopeRequest | None = None, *,
                     load_p_w: ArrayLike | None = None, load_q_var: ArrayLike | None = None,
                     source_v_pu: float | None = None) -> EnvelopeResult:
    """The certified envelope of every DER of ``engine.feeder`` (see the module docstring).

    The operating point: loads ``(n_load,)`` (``None``: the feeder's nominal loads) and the source voltage
    (``None``: the feeder's). Raises :class:`EnvelopeError` for a request that cannot be computed (no DER;
    ``proportional`` without every rating); AC trouble gives the default envelope, never an exception.
    """
    from gateway.twin._maxtotal import max_total  # the LP policy, with scipy, only when asked for

    request = request or EnvelopeRequest()
    feeder = engine.feeder
    ders = feeder.ders
    if not len(ders):
        raise EnvelopeError(f"feeder {feeder.name}: no DER connection point to compute an envelope for")
    rated = ders.rating_w
    if request.policy is Policy.PROPORTIONAL and not (np.isfinite(rated).all() and (rated > 0).all()):
        missing = ", ".join(str(n) for n in ders.name[~(np.isfinite(rated) & (rated > 0))])
        raise EnvelopeError(f"policy proportional needs every DER's rating (> 0); missing: {missing}")
    check = resolve(request.criteria, feeder, load_p_w=load_p_w, load_q_var=load_q_var, source_v_pu=source_v_pu)
    cap = search_cap_w(engine, check)
    rating = np.where(np.isfinite(rated), rated, cap).astype(FLOAT)
    work = Work()
    try:
        if request.policy is Policy.MAX_TOTAL:
            export, import_ = max_total(engine, check, request, rating, work)
        else:
            export, import_ = _along(engine, check, request, rating, work)
        method = _method(request, work)
    except TwinError as exc:
        reason = f"twin error: {exc}"
        nan = np.full(len(ders), np.nan)
        export = Outcome(np.zeros(len(ders)), nan, False, reason)
        import_ = Outcome(np.zeros(len(ders)), nan, False, reason)
        method = f"{request.policy.value}: failed"
    defaults = (request.default_export_w, request.default_import_w)
    limits: list[FloatArray] = []
    certs: list[DirectionCertificate] = []
    scale = request.criteria.load_bound
    for d, out in enumerate((export, import_)):
        limit = out.limit_w if out.certified else np.fmin(np.full(len(ders), defaults[d]), rated)
        limits.append(limit)
        certs.append(DirectionCertificate(DIRECTIONS[d], out.certified, out.reason, *out.values,
                                          out.binding if out.certified else "default envelope", scale[d],
                                          out.tolerance_met))
    crit = request.criteria
    certificate = Certificate(certs[0], certs[1], check.vmin_pu, check.vmax_pu, check.max_loading,
                              crit.margin_v_pu, crit.margin_loading, crit.load_bound, method, work.solves,
                              work.batches)
    return EnvelopeResult(ders.name, limits[0], limits[1], export.linear_w, import_.linear_w, request.policy,
                          certificate)


def _method(request: EnvelopeRequest, work: Work) -> str:
    if request.policy is Policy.MAX_TOTAL:
        return (f"max-total: LP (HiGHS) on finite-difference AC sensitivities, re-linearised by AC at each "
                f"iterate, then AC back-off; {work.solves} AC scenarios in {work.batches} batches")
    return (f"{request.policy.value}: linear estimate from 1 batch of finite-difference AC solves, AC bracketing "
            f"to rtol {request.rtol:g} in {work.batches - 1} more; {work.solves} AC scenarios in all")
