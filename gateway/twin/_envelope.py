"""Certified operating envelopes: per DER, the export and import limits (W) an AC power flow certifies.

Owns :func:`certify_envelope` and its value types (:class:`Policy`, :class:`EnvelopeRequest`,
:class:`EnvelopeResult`, :class:`Certificate`, :class:`DirectionCertificate`); a DER's limits are the shared
:class:`gateway.types.DerLimit`. The guarantee: with **every** DER at its limit at once and every load at the
worst end of its interval (export: minimum load; import: maximum load, :mod:`gateway.twin._criteria`), an AC
power flow keeps every phase voltage inside ``[vmin + margin, vmax - margin]`` and every rated line and
transformer below ``max_loading - margin``. The published limits are the AC-solved scenario that showed it,
never a linear estimate.

Method (ARCHITECTURE.md, "The certified envelope"), both directions in the same batches:

1. one batched AC solve of finite-difference scenarios at the operating point gives the first estimate
   (:mod:`gateway.twin._sensitivity`): for ``equal``/``proportional`` the base and two steps along the policy's
   direction (6 scenarios, :mod:`gateway.twin._along`), a quadratic estimate, typically within 0.05 % of the AC
   limit (the linear one, kept for diagnostics, is 3-18 % off); for ``max-total`` the base and one step per DER;
2. ``equal``/``proportional``: AC solves bracket the largest common level (W each, capped at each rating; or
   fraction of rating) until the bracket is within ``rtol`` (:mod:`gateway.twin._search`): usually one batch of
   a pair ``rtol`` apart around the estimate per direction, so a typical envelope is 2 batches, 10 scenarios.
   ``max-total``: a sequence of LPs (HiGHS) on sensitivities re-taken by AC at each iterate, then the same AC
   bracket along the last iterate (:mod:`gateway.twin._maxtotal`);
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
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.twin._along import along
from gateway.twin._criteria import DIRECTIONS, Criteria, resolved, search_cap_w
from gateway.twin._errors import TwinError
from gateway.twin._feeder import FLOAT
from gateway.twin._flow import PowerFlow
from gateway.twin._maxtotal import max_total
from gateway.twin._outcome import Outcome, Work
from gateway.types import DerLimit, Envelope, EnvelopeCertificate

FloatArray = NDArray[np.float64]


def jsonable(value: float) -> float | None:
    """A float for JSON: NaN (missing) and infinities become ``None``."""
    return float(value) if math.isfinite(value) else None


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

    def as_json(self) -> dict[str, Any]:
        return {"certified": self.certified, "reason": self.reason, "vmax_pu": jsonable(self.vmax_pu),
                "vmin_pu": jsonable(self.vmin_pu), "max_loading": jsonable(self.max_loading),
                "binding": self.binding, "load_scale": self.load_scale, "tolerance_met": self.tolerance_met}


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

    def summary(self) -> EnvelopeCertificate:
        """The certificate as published with an envelope (:class:`gateway.types.EnvelopeCertificate`)."""
        return EnvelopeCertificate(vmax_pu=self.vmax_pu, vmin_pu=self.vmin_pu, max_loading=self.max_loading,
                                   margin_pu=self.margin_v_pu, method=self.method, ac_solves=self.ac_solves)

    def as_json(self) -> dict[str, Any]:
        """The certificate of ``gridedge twin envelope --json`` (NaN: null)."""
        return {
            "certified": self.certified, "reason": self.reason, "vmax_pu": jsonable(self.vmax_pu),
            "vmin_pu": jsonable(self.vmin_pu), "max_loading": jsonable(self.max_loading),
            "margin_pu": self.margin_v_pu, "margin_loading": self.margin_loading, "method": self.method,
            "ac_solves": self.ac_solves, "batches": self.batches, "vmin_limit_pu": self.vmin_limit_pu,
            "vmax_limit_pu": self.vmax_limit_pu, "loading_limit": self.loading_limit,
            "load_bound": list(self.load_bound),
            "export": self.export.as_json(), "import": self.import_.as_json(),
        }


@dataclass(frozen=True, slots=True, eq=False)
class EnvelopeResult:
    """The envelope of every DER of the engine's feeder (``feeder.ders`` order), and its certificate.

    ``export_w``/``import_w`` ``(n_der,)``: the published limits (import as positive magnitudes).
    ``rating_w``: the DERs' ratings (NaN: unknown). ``export_linear_w``/``import_linear_w``: the linear first
    estimate, for diagnostics only (NaN when none).
    """

    der_id: NDArray[np.str_]
    export_w: FloatArray
    import_w: FloatArray
    rating_w: FloatArray
    export_linear_w: FloatArray
    import_linear_w: FloatArray
    policy: Policy
    certificate: Certificate

    @property
    def certified(self) -> bool:
        return self.certificate.certified

    def ders(self) -> tuple[DerLimit, ...]:
        """Each DER's published limits."""
        return tuple(DerLimit(str(i), float(e), float(m))
                     for i, e, m in zip(self.der_id, self.export_w, self.import_w, strict=True))

    def envelope(self, *, issuer: str, sequence: int, valid_from: float, valid_until: float) -> Envelope:
        """The envelope to publish (:class:`gateway.types.Envelope`): certified only when both directions are."""
        cert = self.certificate
        return Envelope(issuer=issuer, sequence=sequence, valid_from=valid_from, valid_until=valid_until,
                        limits=self.ders(), certified=cert.certified,
                        certificate=cert.summary() if cert.certified else None, reason=cert.reason)

    def as_json(self) -> dict[str, Any]:
        """The ``gridedge twin envelope --json`` document (a stable interface: keys are added, never renamed)."""
        ders = {
            str(i): {"export_kw": e / 1e3, "import_kw": m / 1e3, "rating_kw": jsonable(r / 1e3),
                     "export_linear_kw": jsonable(le / 1e3), "import_linear_kw": jsonable(lm / 1e3)}
            for i, e, m, r, le, lm in zip(self.der_id, self.export_w, self.import_w, self.rating_w,
                                          self.export_linear_w, self.import_linear_w, strict=True)
        }
        return {"policy": self.policy.value, "ders": ders, "certificate": self.certificate.as_json()}


def certify_envelope(engine: PowerFlow, request: EnvelopeRequest | None = None, *,
                     load_p_w: ArrayLike | None = None, load_q_var: ArrayLike | None = None,
                     source_v_pu: float | None = None) -> EnvelopeResult:
    """The certified envelope of every DER of ``engine.feeder`` (see the module docstring).

    The operating point: loads ``(n_load,)`` (``None``: the feeder's nominal loads) and the source voltage
    (``None``: the feeder's). Raises :class:`EnvelopeError` for a request that cannot be computed (no DER;
    ``proportional`` without every rating) and :class:`~gateway.twin.ScenarioError` for criteria or operating
    point arrays that make no sense; AC trouble gives the default envelope, never an exception.
    """
    request = request or EnvelopeRequest()
    feeder = engine.feeder
    ders = feeder.ders
    if not len(ders):
        raise EnvelopeError(f"feeder {feeder.name}: no DER connection point to compute an envelope for")
    rated = ders.rating_w
    has_rating = np.isfinite(rated) & (rated > 0)
    if request.policy is Policy.PROPORTIONAL and not has_rating.all():
        missing = ", ".join(str(n) for n in ders.name[~has_rating])
        raise EnvelopeError(f"policy proportional needs every DER's rating (> 0); missing: {missing}")
    check = resolved(engine, request.criteria, load_p_w=load_p_w, load_q_var=load_q_var, source_v_pu=source_v_pu)
    rating = np.where(np.isfinite(rated), rated, search_cap_w(check)).astype(FLOAT)
    work = Work()
    try:
        if request.policy is Policy.MAX_TOTAL:
            export, import_ = max_total(engine, check, rating, rtol=request.rtol, max_batches=request.max_batches,
                                        work=work)
        else:
            export, import_ = along(engine, check, equal=request.policy is Policy.EQUAL, rating=rating,
                                    rated=np.isfinite(rated), rtol=request.rtol, max_batches=request.max_batches,
                                    work=work)
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
    return EnvelopeResult(ders.name, limits[0], limits[1], rated, export.linear_w, import_.linear_w,
                          request.policy, certificate)


def _method(request: EnvelopeRequest, work: Work) -> str:
    if request.policy is Policy.MAX_TOTAL:
        return (f"max-total: LP (HiGHS) on finite-difference AC sensitivities, re-linearised by AC at each "
                f"iterate, then AC bracketing along the last iterate to rtol {request.rtol:g}; {work.solves} AC "
                f"scenarios in {work.batches} batches")
    return (f"{request.policy.value}: quadratic estimate from 1 batch of finite-difference AC solves, AC "
            f"bracketing to rtol {request.rtol:g} in {work.batches - 1} more; {work.solves} AC scenarios in all")
