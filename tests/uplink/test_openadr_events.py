"""OpenADR event -> Command translation, table-tested on event dicts shaped as openleadr parses them, and fuzzed:
whatever comes off the wire opts out or becomes valid commands, never an exception."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.types import Authority, DerLimit
from gateway.uplink._openadr_events import EventPolicy, decide_event

START = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
NOW = START.timestamp() - 60
CAPS = {"pv1": DerLimit("pv1", 5000.0, 0.0), "bat1": DerLimit("bat1", 3000.0, 3000.0)}
POLICY = EventPolicy(issuer="VTN", authority=Authority.AGGREGATOR, simple_levels={1: 0.5, 2: 0.2, 3: 0.0})
KW = {"name": "powerReal", "description": "RealPower", "unit": "W", "scale": "k"}


def event(name: str = "LOAD_DISPATCH", signal_type: str = "setpoint", payloads: tuple[float, ...] = (2.0,),
          minutes: int = 5, targets: list[dict[str, Any]] | None = None, measurement: Any = KW,
          status: str = "far", **descriptor: Any) -> dict[str, Any]:
    intervals = [{"dtstart": START + dt.timedelta(minutes=minutes * i), "duration": dt.timedelta(minutes=minutes),
                  "uid": i, "signal_payload": p} for i, p in enumerate(payloads)]
    signal: dict[str, Any] = {"intervals": intervals, "signal_name": name, "signal_type": signal_type,
                              "signal_id": "s1"}
    if measurement is not None:
        signal["measurement"] = measurement
    return {"event_descriptor": {"event_id": "e1", "modification_number": 3, "event_status": status,
                                 "market_context": "oadr://x", **descriptor},
            "active_period": {"dtstart": START, "duration": dt.timedelta(minutes=minutes * len(payloads))},
            "event_signals": [signal], "targets": [{"resource_id": "bat1"}] if targets is None else targets,
            "response_required": "always"}


@pytest.mark.parametrize(("kwargs", "sign", "targets_w"), [
    ({}, "load", {"bat1": [-2000.0]}),
    ({}, "generation", {"bat1": [2000.0]}),
    ({"payloads": (1.5, -3.0)}, "load", {"bat1": [-1500.0, 3000.0]}),
    ({"measurement": {**KW, "scale": "none"}, "payloads": (250.0,)}, "load", {"bat1": [-250.0]}),
    ({"name": "SIMPLE", "signal_type": "level", "payloads": (2,), "targets": [{"ven_id": "v"}],
      "measurement": None}, "load", {"pv1": [1000.0], "bat1": [600.0]}),
    ({"name": "SIMPLE", "signal_type": "level", "payloads": (3, 0, 1), "targets": [{"resource_id": "pv1"}],
      "measurement": None}, "load", {"pv1": [0.0, 2500.0]}),
])
def test_opted_in_events_become_commands(kwargs: dict[str, Any], sign: str,
                                         targets_w: dict[str, list[float]]) -> None:
    policy = EventPolicy("VTN", Authority.AGGREGATOR, POLICY.simple_levels, sign)  # type: ignore[arg-type]
    decision = decide_event(event(**kwargs), policy=policy, capabilities=CAPS, now=NOW)
    assert decision.opt_in, decision.reason
    got: dict[str, list[float]] = {}
    for command in decision.commands:
        got.setdefault(command.der_id, []).append(command.target_w)
        assert command.issuer == "VTN"
        assert command.authority is Authority.AGGREGATOR
        assert command.received_at == NOW
        assert command.valid_until > command.valid_from
        assert command.command_id.startswith("e1:s1:")
        assert command.command_id.endswith(f":{command.der_id}")
    assert got == targets_w
    assert len({c.command_id for c in decision.commands}) == len(decision.commands)


def test_validity_is_each_intervals_own() -> None:
    decision = decide_event(event(payloads=(1.0, 2.0), minutes=10), policy=POLICY, capabilities=CAPS, now=NOW)
    spans = [(c.valid_from - START.timestamp(), c.valid_until - START.timestamp()) for c in decision.commands]
    assert spans == [(0.0, 600.0), (600.0, 1200.0)]


def test_intervals_already_over_are_dropped_and_an_event_wholly_over_opts_out() -> None:
    late = START.timestamp() + 7 * 60  # inside the second 5-minute interval
    decision = decide_event(event(payloads=(1.0, 2.0)), policy=POLICY, capabilities=CAPS, now=late)
    assert [c.target_w for c in decision.commands] == [-2000.0]
    over = decide_event(event(payloads=(1.0, 2.0)), policy=POLICY, capabilities=CAPS, now=late + 3600)
    assert not over.opt_in
    assert "expired" in over.reason
    assert over.commands == ()


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"targets": [{"resource_id": "heatpump9"}]}, "not one this gateway controls"),
    ({"payloads": (3.5,)}, "beyond what it can do now"),
    ({"payloads": (-3.5,)}, "beyond what it can do now"),
    ({"targets": [{"resource_id": "pv1"}], "payloads": (1.0,)}, "beyond what it can do now"),  # PV cannot import
    ({"targets": [{"resource_id": "pv1"}, {"resource_id": "bat1"}]}, "exactly one DER"),
    ({"targets": [{"ven_id": "v"}]}, "exactly one DER"),
    ({"signal_type": "delta"}, "only 'setpoint'"),
    ({"measurement": None}, "without an itemBase"),
    ({"measurement": {**KW, "unit": "Wh"}}, "only real power in W"),
    ({"measurement": {**KW, "scale": "bogus"}}, "unknown siScaleCode"),
    ({"minutes": 0}, "open-ended"),
    ({"name": "ELECTRICITY_PRICE", "signal_type": "price"}, "not supported"),
    ({"name": "SIMPLE", "signal_type": "level", "payloads": (4,), "measurement": None}, "not one of 0-3"),
    ({"name": "SIMPLE", "signal_type": "level", "payloads": (1.5,), "measurement": None}, "not one of 0-3"),
    ({"name": "SIMPLE", "signal_type": "level", "targets": [{"resource_id": "ev7"}], "payloads": (1,),
      "measurement": None}, "not one this gateway controls"),
    ({"payloads": (float("nan"),)}, "not a finite number"),
])
def test_what_the_gateway_cannot_do_opts_the_event_out(kwargs: dict[str, Any], why: str) -> None:
    decision = decide_event(event(**kwargs), policy=POLICY, capabilities=CAPS, now=NOW)
    assert not decision.opt_in
    assert decision.commands == ()
    assert why in decision.reason


def test_an_unconfigured_simple_level_opts_out() -> None:
    policy = EventPolicy("VTN", Authority.AGGREGATOR, {1: 0.5})
    decision = decide_event(event("SIMPLE", "level", (2,), measurement=None), policy=policy, capabilities=CAPS,
                            now=NOW)
    assert not decision.opt_in
    assert "no configured fraction" in decision.reason


def test_cancelled_and_test_events_actuate_nothing() -> None:
    cancelled = decide_event(event(status="cancelled"), policy=POLICY, capabilities=CAPS, now=NOW)
    assert cancelled.cancelled
    assert cancelled.opt_in
    assert cancelled.commands == ()
    test = decide_event(event(test_event=True), policy=POLICY, capabilities=CAPS, now=NOW)
    assert test.opt_in
    assert test.commands == ()
    assert "test event" in test.reason


_wire = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.datetimes(timezones=st.just(dt.UTC)) | st.timedeltas(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["event_descriptor", "event_id", "event_signals", "intervals", "signal_name",
                         "signal_type", "signal_payload", "dtstart", "duration", "targets", "resource_id",
                         "active_period", "measurement", "unit", "scale", "event_status", "uid"]),
        inner, max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(_wire)
def test_whatever_arrives_never_raises(raw: Any) -> None:
    decision = decide_event(raw if isinstance(raw, dict) else {"event_descriptor": raw}, policy=POLICY,
                            capabilities=CAPS, now=NOW)
    assert decision.opt_in or decision.commands == ()
    assert all(-3000.0 <= c.target_w <= 5000.0 for c in decision.commands)


@settings(max_examples=200, deadline=None)
@given(payload=st.floats(allow_nan=True, allow_infinity=True), scale=st.sampled_from(["none", "k", "M", "m"]),
       der=st.sampled_from(["pv1", "bat1", "ev7"]))
def test_a_command_is_always_within_what_the_der_can_do(payload: float, scale: str, der: str) -> None:
    decision = decide_event(event(payloads=(payload,), measurement={**KW, "scale": scale},
                                  targets=[{"resource_id": der}]), policy=POLICY, capabilities=CAPS, now=NOW)
    for command in decision.commands:
        limit = CAPS[command.der_id]
        assert -limit.import_w <= command.target_w <= limit.export_w
