"""OpenADR 2.0b events (as openleadr parses them) to gateway ``Command`` objects, and the opt-in/opt-out answer.

Pure: no I/O, no clock of its own, never raises on what came off the wire. One event gives one decision: opt in
with the commands it asks for, or opt out with the reason and no command at all (OpenADR opts per event, so a
signal the gateway cannot honour opts the whole event out).

What is understood:

* ``LOAD_DISPATCH`` / ``setpoint`` with an itemBase in W (any SI scale: ``k`` means kW) targeting exactly one DER by
  ``resourceID``. OpenADR defines the payload as *load*, positive = consumption, so by default ``target_w`` (export
  positive, ``gateway.types``) is minus the payload; ``load_dispatch_sign="generation"`` takes it as export.
  Without an itemBase the unit is unknown (W or kW?) and the event is opted out rather than guessed.
* ``SIMPLE`` / ``level`` 0-3: level 0 is normal operation (no command); another level becomes, for every targeted
  DER (every DER the gateway controls when the event targets only the VEN), ``target_w = fraction x export rating``
  with the fraction from configuration. A level that is not configured opts out.

Every command must be one the gateway can carry out: the DER is one the capability callback lists, and the target
lies within ``[-import_w, export_w]`` of what it says the DER can do now; otherwise the event is opted out. Validity
is the interval's (``dtstart`` .. ``dtstart + duration``); an open-ended interval (duration 0) is opted out, intervals
already over are dropped. ``command_id`` is ``<eventID>:<signalID>:<interval uid>:<der>``, so the same event
modified later replaces its commands one for one. A cancelled event withdraws its commands; a test event actuates
nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.types import Authority, Command, DerLimit

#: OpenADR SI scale codes (``siScaleCode``) to multipliers.
SI_SCALE = {"p": 1e-12, "n": 1e-9, "micro": 1e-6, "m": 1e-3, "c": 1e-2, "d": 1e-1, "none": 1.0,
            "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
SIMPLE_LEVELS = (0, 1, 2, 3)


@dataclass(frozen=True, slots=True)
class EventPolicy:
    """How events become commands: who the issuer and authority are, SIMPLE level fractions, LOAD_DISPATCH sign."""

    issuer: str
    authority: Authority
    simple_levels: Mapping[int, float]
    load_dispatch_sign: Literal["load", "generation"] = "load"


@dataclass(frozen=True, slots=True)
class EventDecision:
    """The answer to one event: ``opt_in`` with ``commands`` (possibly none), or opted out with ``reason``."""

    event_id: str
    modification_number: int
    opt_in: bool
    commands: tuple[Command, ...]
    reason: str
    cancelled: bool = False


class _OptOut(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decide_event(event: Mapping[str, Any], *, policy: EventPolicy, capabilities: Mapping[str, DerLimit],
                 now: float) -> EventDecision:
    """Turn one openleadr event dict into a decision at UNIX time ``now``. Malformed input opts out, never raises."""
    event_id, modification = "?", -1
    try:
        descriptor = _mapping(event.get("event_descriptor"), "event_descriptor")
        event_id = _text(descriptor.get("event_id"), "event_id")
        modification = int(descriptor.get("modification_number", 0))
        if descriptor.get("event_status") == "cancelled":
            return EventDecision(event_id, modification, True, (), "cancelled", cancelled=True)
        if descriptor.get("test_event") is True:
            return EventDecision(event_id, modification, True, (), "test event: nothing actuated")
        commands = _commands(event, event_id, modification, descriptor, policy, capabilities, now)
    except _OptOut as out:
        return EventDecision(event_id, modification, False, (), out.reason)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        return EventDecision(event_id, modification, False, (), f"malformed event: {type(exc).__name__}: {exc}")
    reason = f"{len(commands)} command(s)" if commands else "nothing to do now"
    return EventDecision(event_id, modification, True, tuple(commands), reason)


def _commands(event: Mapping[str, Any], event_id: str, modification: int, descriptor: Mapping[str, Any],
              policy: EventPolicy, capabilities: Mapping[str, DerLimit], now: float) -> list[Command]:
    signals = event.get("event_signals")
    if isinstance(signals, Mapping):  # openleadr passes either the list or {'event_signals': [...]}
        signals = signals.get("event_signals")
    if not isinstance(signals, Sequence) or isinstance(signals, str) or not signals:
        raise _OptOut("malformed event: no event signals")
    event_targets = _resource_ids(event.get("targets"))
    active = _mapping(event.get("active_period"), "active_period")
    commands: list[Command] = []
    any_interval_left = False
    for signal in signals:
        signal = _mapping(signal, "event_signal")
        name = _text(signal.get("signal_name"), "signal_name")
        signal_type = _text(signal.get("signal_type"), "signal_type")
        signal_id = str(signal.get("signal_id") or name)
        targets = _resource_ids(signal.get("targets")) or event_targets
        for uid, start, end, payload in _intervals(signal, active):
            if end <= now:
                continue
            any_interval_left = True
            extra = {"event_id": event_id, "modification_number": str(modification), "signal_name": name,
                     "signal_type": signal_type, "payload": repr(payload),
                     "market_context": str(descriptor.get("market_context", ""))}
            for der_id, target_w, more in _targets(name, signal_type, signal, payload, targets, policy,
                                                   capabilities):
                _check_capability(der_id, target_w, capabilities, name)
                commands.append(Command(
                    command_id=f"{event_id}:{signal_id}:{uid}:{der_id}", issuer=policy.issuer,
                    authority=policy.authority, der_id=der_id, target_w=target_w, valid_from=start, valid_until=end,
                    source="openadr", received_at=now, extra={**extra, **more}))
    if not any_interval_left:
        raise _OptOut("expired: every interval of the event is already over")
    return commands


def _targets(name: str, signal_type: str, signal: Mapping[str, Any], payload: float, targets: list[str],
             policy: EventPolicy, capabilities: Mapping[str, DerLimit],
             ) -> list[tuple[str, float, dict[str, str]]]:
    """``(der_id, target_w, extra)`` for one interval of one signal."""
    if name == "LOAD_DISPATCH":
        if signal_type != "setpoint":
            raise _OptOut(f"LOAD_DISPATCH of type {signal_type!r} is not supported (only 'setpoint')")
        watts = payload * _watt_multiplier(signal.get("measurement"))
        if len(targets) != 1:
            raise _OptOut(f"LOAD_DISPATCH needs exactly one DER resourceID target, got {targets or 'none'}")
        target_w = -watts if policy.load_dispatch_sign == "load" else watts
        return [(targets[0], target_w + 0.0, {})]
    if name == "SIMPLE":
        if signal_type != "level":
            raise _OptOut(f"SIMPLE of type {signal_type!r} is not supported (only 'level')")
        if payload != int(payload) or int(payload) not in SIMPLE_LEVELS:
            raise _OptOut(f"SIMPLE level {payload!r} is not one of 0-3")
        level = int(payload)
        if level == 0:
            return []
        if level not in policy.simple_levels:
            raise _OptOut(f"SIMPLE level {level} has no configured fraction")
        fraction = policy.simple_levels[level]
        more = {"level": str(level), "fraction": repr(fraction)}
        out = []
        for der in targets or sorted(capabilities):
            if der not in capabilities:
                raise _OptOut(f"SIMPLE: DER {der!r} is not one this gateway controls")
            out.append((der, fraction * capabilities[der].export_w, more))
        return out
    raise _OptOut(f"signal {name!r} is not supported (LOAD_DISPATCH setpoint and SIMPLE level are)")


def _check_capability(der_id: str, target_w: float, capabilities: Mapping[str, DerLimit], signal: str) -> None:
    capability = capabilities.get(der_id)
    if capability is None:
        raise _OptOut(f"{signal}: DER {der_id!r} is not one this gateway controls")
    if not -capability.import_w <= target_w <= capability.export_w:
        raise _OptOut(f"{signal}: {target_w:.0f} W for DER {der_id!r} is beyond what it can do now "
                      f"(import {capability.import_w:.0f} W .. export {capability.export_w:.0f} W)")


def _watt_multiplier(measurement: object) -> float:
    if not isinstance(measurement, Mapping):
        raise _OptOut("LOAD_DISPATCH without an itemBase: the unit (W or kW) is unknown")
    unit = measurement.get("unit")
    if unit != "W":
        raise _OptOut(f"LOAD_DISPATCH in {unit!r}: only real power in W (any SI scale) is understood")
    scale = measurement.get("scale") or "none"
    if scale not in SI_SCALE:
        raise _OptOut(f"LOAD_DISPATCH with unknown siScaleCode {scale!r}")
    return SI_SCALE[scale]


def _intervals(signal: Mapping[str, Any], active: Mapping[str, Any]) -> list[tuple[str, float, float, float]]:
    """``(uid, valid_from, valid_until, payload)`` per interval, UNIX seconds; a start missing from an interval
    follows the previous interval (the first starts with the active period)."""
    raw = signal.get("intervals")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise _OptOut("malformed event: a signal without intervals")
    cursor = _timestamp(active.get("dtstart"), "active_period.dtstart")
    out = []
    for index, interval in enumerate(raw):
        interval = _mapping(interval, "interval")
        start = _timestamp(interval["dtstart"], "dtstart") if interval.get("dtstart") is not None else cursor
        duration = interval.get("duration")
        if not isinstance(duration, dt.timedelta):
            raise _OptOut("malformed event: an interval without a duration")
        if duration.total_seconds() <= 0:
            raise _OptOut("open-ended interval (duration 0): a command needs a finite validity")
        payload = interval.get("signal_payload")
        if isinstance(payload, bool) or not isinstance(payload, int | float) or not math.isfinite(payload):
            raise _OptOut(f"malformed event: signal payload {payload!r} is not a finite number")
        cursor = start + duration.total_seconds()
        out.append((str(interval.get("uid", index)), start, cursor, float(payload)))
    return out


def _resource_ids(targets: object) -> list[str]:
    if not isinstance(targets, Sequence) or isinstance(targets, str):
        return []
    return [str(target["resource_id"]) for target in targets
            if isinstance(target, Mapping) and target.get("resource_id") is not None]


def _timestamp(value: object, name: str) -> float:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise _OptOut(f"malformed event: {name} is not a timezone-aware date-time")
    return value.timestamp()


def _mapping(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _OptOut(f"malformed event: {name} missing")
    return value


def _text(value: object, name: str) -> str:
    if value is None or isinstance(value, Mapping | list) or str(value) == "":
        raise _OptOut(f"malformed event: {name} missing")
    return str(value)
