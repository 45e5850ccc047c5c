"""The feeder segment the gateway sits on: its devices mapped onto the twin, and each cycle's certified envelope.

Owns :class:`Segment`: built once from ``[twin]`` (the feeder loaded, each envelope holder attached at its bus, the
power-flow engine built), then :meth:`Segment.envelope` turns the fleet's latest state into a
:class:`gateway.types.Envelope` — the operating point from what was measured, the twin's certified envelope, its
certificate — or the configured default envelope with the reason (an envelope holder is stale, the twin could not
certify, the twin failed). Blocking work (numpy, power-grid-model): the daemon calls it in a worker thread.

Operating point: with a fresh head meter, the feeder's nominal loads are scaled so that the load the meter implies
(site import + DER export) is met; otherwise the nominal loads. Either way the envelope holds for every load inside
``load_bound`` times that estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import structlog

from gateway.config import Config, TwinConfig
from gateway.twin import (
    Criteria,
    EnvelopeRequest,
    EnvelopeResult,
    Feeder,
    FeederError,
    FeederIssue,
    Policy,
    PowerFlow,
    TwinError,
    certify_envelope,
    load_feeder,
    with_ders,
)
from gateway.types import DerLimit, DeviceState, Envelope

log = structlog.get_logger("gateway.segment")

_PHASES = {"abc": 0, "a": 1, "b": 2, "c": 3}


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


class Segment:
    """The twin of this gateway's feeder segment, with its envelope holders attached (see the module docstring)."""

    def __init__(self, config: Config, feeder: Feeder | None = None) -> None:
        if config.twin is None:
            raise ValueError("config has no [twin] section")
        self.twin: TwinConfig = config.twin
        self.issuer = config.site.gateway_id
        base = feeder if feeder is not None else open_feeder(self.twin.feeder)
        ratings = [der.rating_w or config.device(der.device).rated_w or math.nan for der in self.twin.ders]
        self.feeder = with_ders(base, [d.device for d in self.twin.ders], [d.bus for d in self.twin.ders],
                                phase=[_PHASES[d.phase] for d in self.twin.ders], rating_w=ratings)
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
        #: What bound the last envelope (export, import), in words ("vmax at bus 886", "rating", ...); None
        #: when the last one was the default without an AC check.
        self.last_binding: tuple[str, str] | None = None

    def load_scale(self, states: Mapping[str, DeviceState]) -> float | None:
        """The nominal-load multiplier the head meter implies, or None without a fresh meter reading."""
        for meter in self.meters:
            state = states.get(meter)
            if state is None or state.stale or state.measurement is None or state.measurement.w is None:
                continue
            export = sum(s.measurement.w or 0.0 for d in self.twin.ders
                         if (s := states.get(d.device)) is not None and s.measurement is not None and not s.stale)
            total = float(self._nominal_p.sum())
            if total <= 0:
                return None
            return max(0.0, (state.measurement.w + export) / total)
        return None

    def envelope(self, states: Mapping[str, DeviceState], *, now: float, sequence: int) -> Envelope:
        """This cycle's envelope (certified, or the default with the reason). Never raises for twin trouble."""
        valid_until = now + self.twin.validity_s
        self.last_binding = None
        stale = [d.device for d in self.twin.ders if (s := states.get(d.device)) is None or s.stale]
        if stale:
            return self._default(now, valid_until, sequence, f"stale envelope holder(s): {', '.join(stale)}")
        scale = self.load_scale(states)
        try:
            result = certify_envelope(self.engine, self.request,
                                      load_p_w=None if scale is None else self._nominal_p * scale,
                                      load_q_var=None if scale is None else self._nominal_q * scale,
                                      source_v_pu=self.twin.source_v_pu)
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
