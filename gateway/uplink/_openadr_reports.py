"""What the OpenADR 2.0b VEN reports, per DER, and how each value is computed from the gateway's state.

Two reports, both named ``TELEMETRY_USAGE`` (openleadr's VTN registers only TELEMETRY_USAGE/TELEMETRY_STATUS and
skips every other report name, so the envelope report wears that name too) and told apart by their report
specifier and their measurement descriptions:

* ``gridedge-telemetry``: per DER, real power (``powerReal``/``RealPower``, W, export positive) and voltage
  (``voltage``/``Voltage``, V, mean line-to-neutral), stamped with the measurement time. A value the device did
  not measure is left out of the report, never sent as a number that means "missing".
* ``gridedge-envelope``: per DER, as ``customUnit`` items in W whose descriptions are the OpenADR 3 names (so a
  head-end maps them without a table): ``EXPORT_CAPACITY_LIMIT`` / ``IMPORT_CAPACITY_LIMIT`` (the envelope now in
  force, stamped with its ``validFrom``) and ``UP_REGULATION_AVAILABLE`` / ``DOWN_REGULATION_AVAILABLE`` (headroom
  from the present output to the tighter of the envelope and what the DER can do now: up = more export, down =
  less export or more import). On the resource ``envelope``: ``ENVELOPE_SEQUENCE``, ``ENVELOPE_VALID_UNTIL`` (UNIX
  s) and ``ENVELOPE_CERTIFIED`` (1 certified by the AC check, 0 the configured default).

openleadr's ``add_report`` raises AttributeError for a measurement given as a dict (``object.PowerAttributes``, a
typo for ``objects``), and mutates its shared ``enums.MEASUREMENTS`` objects; every item here is an
``objects.Measurement`` of our own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from openleadr import enums, objects

from gateway.types import DerLimit, Envelope, Measurement

TELEMETRY_SPECIFIER = "gridedge-telemetry"
ENVELOPE_SPECIFIER = "gridedge-envelope"
ENVELOPE_RESOURCE = "envelope"
ENVELOPE_LIMITS = ("EXPORT_CAPACITY_LIMIT", "IMPORT_CAPACITY_LIMIT")
FLEXIBILITY = ("UP_REGULATION_AVAILABLE", "DOWN_REGULATION_AVAILABLE")
ENVELOPE_META = (("ENVELOPE_SEQUENCE", "count"), ("ENVELOPE_VALID_UNTIL", "s"), ("ENVELOPE_CERTIFIED", "bool"))
#: OpenADR 2.0b has no report type for a limit; an ``x-`` extension token is what its schema allows.
ENVELOPE_REPORT_TYPE = "x-operatingEnvelope"

Values = list[tuple[dt.datetime, float]]


@dataclass(frozen=True, slots=True)
class ReportPoint:
    """One data point the VEN offers: which report, r_id, resource, what it measures, how to read it now."""

    report_specifier_id: str
    r_id: str
    resource_id: str
    measurement: Any  # openleadr.objects.Measurement
    report_type: str
    reading_type: str
    read: Callable[[], Values]


@dataclass(frozen=True, slots=True)
class ReportSources:
    """Where report values come from: latest measurements, the envelope in force, what each DER can do now."""

    measurements: Callable[[], Mapping[str, Measurement]]
    envelope: Callable[[], Envelope | None]
    capabilities: Callable[[], Mapping[str, DerLimit]]
    clock: Callable[[], float]


def flexibility(measurement: Measurement | None, capability: DerLimit | None, limit: DerLimit | None,
                ) -> tuple[float, float] | None:
    """``(up_w, down_w)`` a DER has from its present output, or None when its output is not measured.

    The bounds are the tighter of the envelope ``limit`` and what the DER can do now (``capability``); a DER the
    gateway does not control has none (0, 0)."""
    if measurement is None or measurement.w is None:
        return None
    if capability is None:
        return (0.0, 0.0)
    export_w = capability.export_w if limit is None else min(capability.export_w, limit.export_w)
    import_w = capability.import_w if limit is None else min(capability.import_w, limit.import_w)
    return (max(0.0, export_w - measurement.w), max(0.0, measurement.w + import_w))


def current_envelope(envelope: Envelope | None, now: float) -> Envelope | None:
    """The envelope if it is still in force at ``now`` (an expired one is not reported as current)."""
    return envelope if envelope is not None and now < envelope.valid_until else None


def report_points(der_ids: Sequence[str], sources: ReportSources, *, hertz: int, voltage: int) -> list[ReportPoint]:
    """Every point of both reports for ``der_ids``."""
    real_power = dataclasses.replace(enums.MEASUREMENTS.REAL_POWER, scale="none",
                                     power_attributes=objects.PowerAttributes(hertz=hertz, voltage=voltage, ac=True))
    volts = dataclasses.replace(enums.MEASUREMENTS.VOLTAGE, scale="none")
    points = []
    for der in der_ids:
        points += [_telemetry(der, "W", real_power, partial(_measured, sources, der, "w")),
                   _telemetry(der, "V", volts, partial(_measured, sources, der, "v"))]
    for der in der_ids:
        points += [_envelope(der, ENVELOPE_LIMITS[0], "W", ENVELOPE_REPORT_TYPE, partial(_limit, sources, der, 0)),
                   _envelope(der, ENVELOPE_LIMITS[1], "W", ENVELOPE_REPORT_TYPE, partial(_limit, sources, der, 1)),
                   _envelope(der, FLEXIBILITY[0], "W", enums.REPORT_TYPE.UP_REGULATION_CAPACITY_AVAILABLE,
                             partial(_flex, sources, der, 0)),
                   _envelope(der, FLEXIBILITY[1], "W", enums.REPORT_TYPE.DOWN_REGULATION_CAPACITY_AVAILABLE,
                             partial(_flex, sources, der, 1))]
    points += [_envelope(ENVELOPE_RESOURCE, name, unit, ENVELOPE_REPORT_TYPE, partial(_meta, sources, index))
               for index, (name, unit) in enumerate(ENVELOPE_META)]
    return points


def _telemetry(der: str, suffix: str, measurement: Any, read: Callable[[], Values]) -> ReportPoint:
    return ReportPoint(TELEMETRY_SPECIFIER, f"telemetry:{der}:{suffix}", der, measurement,
                       enums.REPORT_TYPE.READING, enums.READING_TYPE.DIRECT_READ, read)


def _envelope(resource: str, name: str, unit: str, report_type: str, read: Callable[[], Values]) -> ReportPoint:
    measurement = objects.Measurement(name="customUnit", description=name, unit=unit, scale="none")
    return ReportPoint(ENVELOPE_SPECIFIER, f"envelope:{resource}:{name}", resource, measurement, report_type,
                       enums.READING_TYPE.DERIVED, read)


def _at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _measured(sources: ReportSources, der: str, field: str) -> Values:
    measurement = sources.measurements().get(der)
    value = None if measurement is None else getattr(measurement, field)
    return [] if measurement is None or value is None else [(_at(measurement.at), float(value))]


def _limit(sources: ReportSources, der: str, index: int) -> Values:
    envelope = current_envelope(sources.envelope(), sources.clock())
    limit = None if envelope is None else envelope.limit(der)
    if envelope is None or limit is None:
        return []
    return [(_at(envelope.valid_from), limit.export_w if index == 0 else limit.import_w)]


def _flex(sources: ReportSources, der: str, index: int) -> Values:
    now = sources.clock()
    envelope = current_envelope(sources.envelope(), now)
    measurement = sources.measurements().get(der)
    headroom = flexibility(measurement, sources.capabilities().get(der),
                           None if envelope is None else envelope.limit(der))
    if headroom is None or measurement is None:
        return []
    return [(_at(measurement.at), headroom[index])]


def _meta(sources: ReportSources, index: int) -> Values:
    envelope = current_envelope(sources.envelope(), sources.clock())
    if envelope is None:
        return []
    value = (float(envelope.sequence), envelope.valid_until, 1.0 if envelope.certified else 0.0)[index]
    return [(_at(envelope.valid_from), value)]
