"""``[uplink]`` in the config file: MQTT, OpenADR, signing and the allow-listed head-ends; mistakes name key and fix."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.dispatch import DispatchPolicy
from gateway.types import Authority
from tests._config_helpers import SRC, refused

BASE = """\
[site]
id = "depot-7"
gateway_id = "gw-1"

[[devices]]
id = "inv-1"
host = "127.0.0.1"
role = "inverter"
rated_w = 5000

[[devices]]
id = "bat-1"
host = "127.0.0.1"
unit = 2
role = "battery"
rated_w = 5000
"""
DISPATCH = """
[dispatch]
audit_log = "/var/lib/gridedge/audit.jsonl"

[dispatch.customer_limits]
inv-1 = { export_w = 5000, import_w = 0 }
bat-1 = { export_w = 3000, import_w = 3000 }

[dispatch.default_envelope]
export_w = 1500
import_w = 1500
"""
FP = "ab" * 32
UPLINK = """
[uplink]
state_dir = "/var/lib/gridedge"
telemetry_interval_s = 5

[uplink.signing]
cert = "/etc/gridedge/gateway.pem"
key = "/etc/gridedge/gateway.key"

[uplink.mqtt]
host = "broker.example"
ca = "/etc/gridedge/ca.pem"
cert = "/etc/gridedge/gateway.pem"
key = "/etc/gridedge/gateway.key"

[[uplink.headends]]
cert = "/etc/gridedge/dnsp.pem"
authority = "grid-operator"
issuer = "dnsp-headend"

[[uplink.headends]]
cert = "/etc/gridedge/agg.pem"
authority = "aggregator"
issuer = "agg-1"

[uplink.openadr]
vtn_url = "https://vtn.example:8443/OpenADR2/Simple/2.0b"
ven_name = "depot-7"
cert = "/etc/gridedge/ven.pem"
key = "/etc/gridedge/ven.key"
ca = "/etc/gridedge/ca.pem"
vtn_fingerprint = "FP"
der_ids = ["inv-1"]
simple_levels = { "1" = 0.6, "2" = 0.3, "3" = 0.0 }
""".replace("FP", FP)


def test_a_full_uplink_section_loads() -> None:
    config = parse_config(BASE + DISPATCH + UPLINK, SRC)
    up = config.uplink
    assert up is not None
    assert up.mqtt is not None
    assert (up.mqtt.host, up.mqtt.port, up.mqtt.keepalive_s) == ("broker.example", 8883, 30)
    assert up.signing is not None
    assert up.signing.key == "/etc/gridedge/gateway.key"
    assert [(h.issuer, h.authority) for h in up.headends] == [("dnsp-headend", Authority.GRID_OPERATOR),
                                                               ("agg-1", Authority.AGGREGATOR)]
    assert up.openadr is not None
    assert up.openadr.simple_levels == {1: 0.6, 2: 0.3, 3: 0.0}
    assert up.openadr.der_ids == ("inv-1",)
    assert up.openadr.authority is Authority.AGGREGATOR
    assert up.telemetry_interval_s == 5


def test_a_config_without_uplink_still_loads() -> None:
    assert parse_config(BASE, SRC).uplink is None


def test_mqtt_alone_needs_no_dispatch_but_needs_signing() -> None:
    mqtt_only = '\n[uplink.mqtt]\nhost = "b"\nca = "ca.pem"\ncert = "g.pem"\nkey = "g.key"\n'
    assert refused(BASE + mqtt_only) == [
        "uplink.signing: everything the gateway publishes is signed — add [uplink.signing] with cert and key "
        "(or remove [uplink.mqtt])"]
    signed = BASE + '\n[uplink.signing]\ncert = "g.pem"\nkey = "g.key"\n' + mqtt_only
    assert parse_config(signed, SRC).uplink is not None


@pytest.mark.parametrize(("edit", "expected"), [
    (('host = "broker.example"', 'host = "broker.example"\nport = 1883'), None),  # a valid edit
    (('host = "broker.example"', 'host = "broker.example:8883"'),
     'uplink.mqtt.host: "broker.example:8883" includes a port — write host = "broker.example" and port = 8883'),
    (('vtn_url = "https://', 'vtn_url = "http://'),
     'uplink.openadr.vtn_url: "http://vtn.example:8443/OpenADR2/Simple/2.0b" is not https'),
    ((f'vtn_fingerprint = "{FP}"', 'vtn_fingerprint = "12:34"'),
     'uplink.openadr.vtn_fingerprint: "12:34" is not a certificate fingerprint'),
    (('"2" = 0.3', '"2" = 1.5'), "uplink.openadr.simple_levels: \"2\" = 1.5 — SIMPLE levels 1-3"),
    (('"1" = 0.6', '"0" = 0.6'), 'uplink.openadr.simple_levels: "0" = 0.6 — SIMPLE levels 1-3'),
    (('authority = "aggregator"', 'authority = "agregator"'),
     'uplink.headends[1].authority: "agregator" is not an authority — did you mean "aggregator"?'),
    (('issuer = "agg-1"', 'issuer = "dnsp-headend"'),
     'uplink.headends[1].authority: issuer "dnsp-headend" is already listed as grid-operator'),
    (('issuer = "agg-1"', 'issuer = "agg 1"'), 'uplink.headends[1].issuer: "agg 1" is not an issuer name'),
    (('der_ids = ["inv-1"]', 'der_ids = ["inv-2"]'),
     'uplink.openadr.der_ids[0]: "inv-2" has no customer limits in [dispatch] (did you mean "inv-1"?)'),
    (('key = "/etc/gridedge/gateway.key"\n\n[uplink.mqtt]', 'key = ""\n\n[uplink.mqtt]'),
     "uplink.signing.key: is empty — give the path of a PEM file"),
    (("telemetry_interval_s = 5", "telemetry_interval_s = 0"),
     "uplink.telemetry_interval_s: 0 is too small — use a value above 0"),
    (("telemetry_interval_s = 5", "telemetry_interval_s = 5\ncommand_clock_skew_s = 400"),
     "uplink.command_clock_skew_s: 400 s is not below command_replay_window_s (300 s)"),
    (("telemetry_interval_s = 5", "telemetry_interval_s = 5\nbroker = 1"), "uplink.broker: unknown key"),
    (("[dispatch]\n", "[dispatch]\ncap_deadband_pct = 25\n"),
     "dispatch.cap_deadband_pct: 25 is too large — use 20 or less"),
    (("[dispatch]\n", "[dispatch]\ncap_deadband_pct = nan\n"), "dispatch.cap_deadband_pct: nan is not a finite"),
])
def test_mistakes_name_the_key_and_the_fix(edit: tuple[str, str], expected: str | None) -> None:
    old, new = edit
    text = BASE + DISPATCH + UPLINK
    assert old in text
    text = text.replace(old, new, 1)
    if expected is None:
        parse_config(text, SRC)
        return
    problems = refused(text)
    assert any(p.startswith(expected) for p in problems), problems
    assert all("—" in p for p in problems), problems  # every problem says what to do about it


def test_commands_without_dispatch_are_refused() -> None:
    problems = refused(BASE + UPLINK)
    assert problems == ["uplink: [[uplink.headends]] sends commands, and only dispatch carries them out — add a "
                        "[dispatch] section (customer limits, default envelope, audit log)"]


def test_headends_need_mqtt() -> None:
    text = BASE + DISPATCH + '\n[uplink]\n[[uplink.headends]]\ncert = "h.pem"\nauthority = "local"\nissuer = "h"\n'
    assert refused(text) == ["uplink.headends: head-end commands arrive over MQTT (.../cmd) — add [uplink.mqtt] "
                             "(or remove [[uplink.headends]])"]


def test_openadr_report_periods_in_order() -> None:
    text = (BASE + DISPATCH + UPLINK).replace('simple_levels = {', 'report_min_period_s = 60\n'
                                              'report_max_period_s = 30\nsimple_levels = {')
    assert refused(text) == ["uplink.openadr.report_min_period_s: report_min_period_s (60) is above "
                             "report_max_period_s (30) — make min <= max"]


def test_the_cap_deadband_reaches_dispatch() -> None:
    config = parse_config(BASE + DISPATCH.replace("[dispatch]\n", "[dispatch]\ncap_deadband_pct = 0.5\n"), SRC)
    assert config.dispatch is not None
    assert DispatchPolicy.from_config(config.dispatch).cap_deadband_pct == 0.5
    default = parse_config(BASE + DISPATCH, SRC).dispatch
    assert default is not None
    assert DispatchPolicy.from_config(default).cap_deadband_pct == 2.0

