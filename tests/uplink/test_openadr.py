"""The OpenADR 2.0b VEN against a real openleadr VTN in-process (mTLS on 127.0.0.1, certificates from
``init_dev_pki``): registration, reports, events to Commands, opt answers, pinning, key refusal, the 5 s signature
window; and canaries for the openleadr 0.5.36 defects the adapter works around (each fails when openleadr changes,
so the workaround can be revisited)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from lxml import etree
from openleadr import OpenADRClient, enums, objects, utils
from openleadr.messaging import create_message, parse_message
from signxml.verifier import XMLVerifier

from gateway.errors import ConfigError, UplinkRefused
from gateway.pki import DEFAULT_NAMES, Identity, init_dev_pki
from gateway.types import Authority, Command, DerLimit, Envelope, EnvelopeCertificate, Measurement
from gateway.uplink._openadr import OpenAdrConfig, OpenAdrVen, VenHooks
from gateway.uplink._openadr_client import SIGNATURE_WINDOW_S
from tests.uplink._openadr_fixtures import VTN_ID, InProcessVtn, openadr_fp, real_power_kw, sha256_fp, until

NOW = time.time()
PV = DerLimit("pv1", export_w=5000.0, import_w=0.0)
BATTERY = DerLimit("bat1", export_w=3000.0, import_w=3000.0)


@dataclass
class Gateway:
    """The gateway side of the hooks: state the VEN reads, and what it handed over."""

    measurements: dict[str, Measurement]
    envelope: Envelope | None
    capabilities: dict[str, DerLimit]
    commands: list[Command] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def hooks(self) -> VenHooks:
        return VenHooks(measurements=lambda: self.measurements, envelope=lambda: self.envelope,
                        capabilities=lambda: self.capabilities, on_commands=self._commands,
                        on_cancel=self.cancelled.extend)

    async def _commands(self, commands: Any) -> None:
        self.commands.extend(commands)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Identity]:
    return init_dev_pki(tmp_path / "pki", names=(*DEFAULT_NAMES, "ven"))


@pytest.fixture
async def vtn(pki: dict[str, Identity]) -> AsyncIterator[InProcessVtn]:
    server = InProcessVtn(pki["vtn"], allowed={openadr_fp(pki["ven"])})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def gateway() -> Gateway:
    now = time.time()
    envelope = Envelope(issuer="twin", sequence=7, valid_from=now - 10, valid_until=now + 300,
                        limits=(DerLimit("pv1", 4000.0, 0.0), DerLimit("bat1", 2500.0, 2000.0)), certified=True,
                        certificate=EnvelopeCertificate(1.049, 0.951, 0.8, 0.01, "pgm-batch", 12))
    return Gateway(
        measurements={"pv1": Measurement("pv1", now - 1.0, "der", w=2500.0, v=231.5),
                      "bat1": Measurement("bat1", now - 1.5, "der", w=-1200.0, v=229.8)},
        envelope=envelope, capabilities={"pv1": PV, "bat1": BATTERY})


def config(pki: dict[str, Identity], vtn: InProcessVtn, **overrides: Any) -> OpenAdrConfig:
    base: dict[str, Any] = {
        "vtn_url": vtn.url, "ven_name": "gridedge-test", "cert": pki["ven"].cert, "key": pki["ven"].key,
        "ca": pki["ven"].ca, "vtn_fingerprint": sha256_fp(pki["vtn"]), "der_ids": ("pv1", "bat1"),
        "report_min_period_s": 1, "report_max_period_s": 60}
    return OpenAdrConfig(**{**base, **overrides})


@pytest.fixture
async def ven(pki: dict[str, Identity], vtn: InProcessVtn, gateway: Gateway) -> AsyncIterator[OpenAdrVen]:
    async with OpenAdrVen(config(pki, vtn), gateway.hooks()) as running:
        yield running


def latest(vtn: InProcessVtn, resource: str, measurement: str) -> float | None:
    found = [v.value for v in vtn.values if v.resource_id == resource and v.measurement == measurement]
    return found[-1] if found else None


# -- registration -------------------------------------------------------------------------------------------------
async def test_registers_over_mtls_with_a_signed_registration_bound_to_its_certificate(
        pki: dict[str, Identity], vtn: InProcessVtn, ven: OpenAdrVen) -> None:
    assert ven.registered
    assert (ven.ven_id, ven.vtn_id) == ("ven-1", VTN_ID)
    [registration] = vtn.registrations
    assert registration["ven_name"] == "gridedge-test"
    assert registration["fingerprint"] == openadr_fp(pki["ven"])  # the TLS client certificate the VTN saw
    # openleadr's VTN never checks a registration's signature; ours is signed all the same, by the VEN's key.
    bodies = [body for path, body in vtn.requests if path.endswith("/EiRegisterParty")]
    [signed] = [body for body in bodies if parse_message(body)[0] == "oadrCreatePartyRegistration"]
    tree = etree.fromstring(signed)
    assert utils.certificate_fingerprint(utils.extract_pem_cert(tree)) == openadr_fp(pki["ven"])
    XMLVerifier().verify(tree, x509_cert=pki["ven"].cert.read_text(), expect_references=2)
    assert ven.clock_offset_s is not None
    assert abs(ven.clock_offset_s) < 1.5


async def test_pinning_by_openadr_short_fingerprint_also_registers(
        pki: dict[str, Identity], vtn: InProcessVtn, gateway: Gateway) -> None:
    async with OpenAdrVen(config(pki, vtn, vtn_fingerprint=openadr_fp(pki["vtn"])), gateway.hooks()) as running:
        assert running.registered


async def test_a_vtn_other_than_the_pinned_one_gets_nothing(
        pki: dict[str, Identity], vtn: InProcessVtn, gateway: Gateway) -> None:
    # The VTN's certificate is valid for the CA and the host name: only the pin can tell it is not the one.
    wrong = sha256_fp(pki["broker"])
    ven = OpenAdrVen(config(pki, vtn, vtn_fingerprint=wrong), gateway.hooks())
    with pytest.raises(UplinkRefused) as refused:
        await ven.start()
    assert refused.value.reason == "pin-mismatch"
    assert sha256_fp(pki["vtn"]) in str(refused.value)
    assert wrong in str(refused.value)
    assert vtn.requests == []
    assert vtn.registrations == []
    assert not ven.registered


async def test_answers_not_signed_by_the_pinned_certificate_are_refused(
        pki: dict[str, Identity], gateway: Gateway) -> None:
    # TLS is the pinned VTN's, but its XML is signed with another certificate of the same CA.
    impostor = InProcessVtn(pki["vtn"], allowed={openadr_fp(pki["ven"])}, signer=pki["headend"])
    await impostor.start()
    try:
        ven = OpenAdrVen(config(pki, impostor), gateway.hooks())
        with pytest.raises(UplinkRefused) as refused:
            await ven.start()
    finally:
        await impostor.stop()
    assert refused.value.reason == "bad-signature"
    assert not ven.registered


@pytest.mark.parametrize("kind", ["rsa-2048", "ed25519"])
def test_keys_other_than_ec_p256_are_refused_at_construction(tmp_path: Path, pki: dict[str, Identity],
                                                             gateway: Gateway, kind: str) -> None:
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa-2048" else ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / f"{kind}.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    settings = OpenAdrConfig(vtn_url="https://127.0.0.1:9/OpenADR2/Simple/2.0b", ven_name="v", cert=pki["ven"].cert,
                             key=path, ca=pki["ven"].ca, vtn_fingerprint=sha256_fp(pki["vtn"]), der_ids=("pv1",))
    with pytest.raises(ConfigError, match="EC P-256") as refused:
        OpenAdrVen(settings, gateway.hooks())
    assert "uplink.openadr.key" in str(refused.value)
    assert str(path) in str(refused.value)


def test_a_key_that_is_not_the_certificates_is_refused(pki: dict[str, Identity], gateway: Gateway) -> None:
    settings = OpenAdrConfig(vtn_url="https://127.0.0.1:9/x", ven_name="v", cert=pki["ven"].cert,
                             key=pki["gateway"].key, ca=pki["ven"].ca, vtn_fingerprint=sha256_fp(pki["vtn"]),
                             der_ids=("pv1",))
    with pytest.raises(ConfigError, match="not the private key of the certificate"):
        OpenAdrVen(settings, gateway.hooks())


@pytest.mark.parametrize(("overrides", "names"), [
    ({"vtn_url": "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"}, "uplink.openadr.vtn_url"),
    ({"vtn_fingerprint": "12:34"}, "uplink.openadr.vtn_fingerprint"),
    ({"simple_levels": {2: 1.5}}, "uplink.openadr.simple_levels"),
    ({"simple_levels": {0: 0.5}}, "uplink.openadr.simple_levels"),
    ({"der_ids": ("pv1", "pv1")}, "uplink.openadr.der_ids"),
    ({"report_min_period_s": 0}, "uplink.openadr.report_min_period_s"),
])
def test_bad_settings_name_the_key_and_the_fix(pki: dict[str, Identity], overrides: dict[str, Any],
                                               names: str) -> None:
    base: dict[str, Any] = {"vtn_url": "https://127.0.0.1:9/x", "ven_name": "v", "cert": pki["ven"].cert,
                            "key": pki["ven"].key, "ca": pki["ven"].ca, "vtn_fingerprint": sha256_fp(pki["vtn"]),
                            "der_ids": ("pv1",)}
    with pytest.raises(ConfigError, match="fix") as refused:
        OpenAdrConfig(**{**base, **overrides})
    assert names in str(refused.value)


# -- reports ------------------------------------------------------------------------------------------------------
async def test_telemetry_reaches_the_vtn_per_der_in_w_and_v(vtn: InProcessVtn, ven: OpenAdrVen, gateway: Gateway,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    offered = {(resource, measurement, unit) for _, resource, measurement, unit in vtn.offered}
    assert {("pv1", "RealPower", "W"), ("pv1", "Voltage", "V"), ("bat1", "RealPower", "W"),
            ("bat1", "Voltage", "V")} <= offered
    # On the VTN's schedule (it asked for 1 s) ...
    await until(lambda: all(latest(vtn, der, m) is not None for der in ("pv1", "bat1")
                            for m in ("RealPower", "Voltage")), what="scheduled telemetry")
    assert latest(vtn, "pv1", "RealPower") == 2500.0
    assert latest(vtn, "bat1", "Voltage") == 229.8
    # ... and at once, with what the gateway measures now, stamped with the measurement time.
    caplog.set_level(logging.ERROR, logger="openleadr")
    at = time.time()
    gateway.measurements["bat1"] = Measurement("bat1", at, "der", w=-800.0, v=230.4)
    answers = await ven.report_now(envelope=False)
    assert answers
    assert all(answer.accepted for answer in answers)
    assert latest(vtn, "bat1", "RealPower") == -800.0
    assert latest(vtn, "bat1", "Voltage") == 230.4
    [stamp] = {v.at for v in vtn.values if v.value == -800.0}
    assert stamp.timestamp() == pytest.approx(at, abs=1e-3)
    # openleadr's create_report would have each request list every r_id, logging an error per foreign one.
    assert not [r for r in caplog.records if "No callback found" in r.getMessage()]


async def test_a_value_the_device_did_not_measure_is_left_out(vtn: InProcessVtn, ven: OpenAdrVen,
                                                              gateway: Gateway) -> None:
    gateway.measurements["pv1"] = Measurement("pv1", time.time(), "der", w=1800.0, v=None)
    vtn.values.clear()
    await ven.report_now(envelope=False)
    sent = {(v.resource_id, v.measurement) for v in vtn.values}
    assert ("pv1", "RealPower") in sent
    assert ("pv1", "Voltage") not in sent


async def test_envelope_and_flexibility_report_arrives_as_telemetry_usage(
        vtn: InProcessVtn, ven: OpenAdrVen, gateway: Gateway) -> None:
    vtn.values.clear()
    answers = await ven.report_now(telemetry=False)
    assert answers
    assert all(answer.accepted for answer in answers)
    # Worked by hand: pv1 makes 2500 W under an envelope of 4000 W export (rating 5000), import 0;
    # bat1 charges 1200 W (-1200) under 2500 W export / 2000 W import (rating 3000 / 3000).
    expected = {
        ("pv1", "EXPORT_CAPACITY_LIMIT"): 4000.0, ("pv1", "IMPORT_CAPACITY_LIMIT"): 0.0,
        ("pv1", "UP_REGULATION_AVAILABLE"): 1500.0, ("pv1", "DOWN_REGULATION_AVAILABLE"): 2500.0,
        ("bat1", "EXPORT_CAPACITY_LIMIT"): 2500.0, ("bat1", "IMPORT_CAPACITY_LIMIT"): 2000.0,
        ("bat1", "UP_REGULATION_AVAILABLE"): 3700.0, ("bat1", "DOWN_REGULATION_AVAILABLE"): 800.0,
        ("envelope", "ENVELOPE_SEQUENCE"): 7.0, ("envelope", "ENVELOPE_CERTIFIED"): 1.0,
    }
    assert {key: latest(vtn, *key) for key in expected} == expected
    assert gateway.envelope is not None
    assert latest(vtn, "envelope", "ENVELOPE_VALID_UNTIL") == pytest.approx(gateway.envelope.valid_until)
    limits = [v for v in vtn.values if v.measurement == "EXPORT_CAPACITY_LIMIT"]
    assert all(v.at.timestamp() == pytest.approx(gateway.envelope.valid_from, abs=1e-3) for v in limits)
    # The workaround: the VTN took it because it is a TELEMETRY_USAGE report (its own specifier, custom items).
    ven_id = ven.ven_id
    registered = {r["report_specifier_id"]: r["report_name"] for r in vtn.server.registered_reports[ven_id]}
    assert registered == {"gridedge-telemetry": "TELEMETRY_USAGE", "gridedge-envelope": "TELEMETRY_USAGE"}


async def test_an_expired_envelope_is_not_reported_as_current(vtn: InProcessVtn, ven: OpenAdrVen,
                                                              gateway: Gateway) -> None:
    assert gateway.envelope is not None
    gateway.envelope = dataclasses.replace(gateway.envelope, valid_until=time.time() - 1)
    vtn.values.clear()
    await ven.report_now(telemetry=False)
    measured = {v.measurement for v in vtn.values}
    assert "EXPORT_CAPACITY_LIMIT" not in measured
    assert "ENVELOPE_SEQUENCE" not in measured
    assert latest(vtn, "pv1", "UP_REGULATION_AVAILABLE") == 2500.0  # rating bounds only: 5000 - 2500


async def test_a_report_signed_longer_ago_than_the_window_is_refused_by_the_vtn(
        pki: dict[str, Identity], vtn: InProcessVtn, gateway: Gateway) -> None:
    """openleadr's ReplayProtect window is a fixed 5 s: a VEN whose report reaches the VTN later than that after
    signing (slow link, or a VEN clock that far behind) is refused, and report_now says so."""
    assert SIGNATURE_WINDOW_S == 5.0
    # Hourly reports: nothing scheduled gets queued behind the held one during the test.
    async with OpenAdrVen(config(pki, vtn, report_min_period_s=3600, report_max_period_s=3600),
                          gateway.hooks()) as ven:
        assert (await ven.report_now(envelope=False))[0].accepted

        async def hold(xml: str) -> None:
            if "oadrUpdateReport" in xml:
                await asyncio.sleep(SIGNATURE_WINDOW_S + 1.0)

        assert ven._client is not None
        ven._client.add_hook("before_send_xml", hold)  # fault injection: the signed message is held in transit
        vtn.values.clear()
        with pytest.raises(UplinkRefused, match=r"signed more than 5 s ago") as refused:
            await ven.report_now(envelope=False)
        assert refused.value.reason == "report-refused"
        assert vtn.values == []  # the VTN's handler got nothing from it


# -- events -------------------------------------------------------------------------------------------------------
def _soon(seconds: float = 60.0) -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=seconds)


async def test_load_dispatch_setpoint_becomes_a_command_and_the_vtn_gets_opt_in(
        vtn: InProcessVtn, ven: OpenAdrVen, gateway: Gateway) -> None:
    start = _soon()
    assert ven.ven_id is not None
    event_id = vtn.add_event(ven.ven_id, signal_name="LOAD_DISPATCH", signal_type="setpoint",
                             intervals=[(start, dt.timedelta(minutes=5), 2.0)], resource_ids=["bat1"],
                             measurement=real_power_kw())
    await until(lambda: vtn.opt_for(event_id) is not None, what="the opt answer at the VTN")
    assert vtn.opt_for(event_id) == "optIn"
    [command] = gateway.commands
    assert command.der_id == "bat1"
    assert command.target_w == -2000.0  # 2 kW of load = the battery charges (export positive)
    assert command.authority is Authority.AGGREGATOR
    assert command.issuer == VTN_ID
    assert command.source == "openadr"
    assert command.command_id.startswith(f"{event_id}:")
    assert command.extra["signal_name"] == "LOAD_DISPATCH"
    assert (command.valid_from, command.valid_until) == (start.timestamp(), start.timestamp() + 300)


async def test_simple_level_becomes_the_configured_fraction_of_each_der(
        pki: dict[str, Identity], vtn: InProcessVtn, gateway: Gateway) -> None:
    settings = config(pki, vtn, simple_levels={1: 0.6, 2: 0.25, 3: 0.0}, authority=Authority.GRID_OPERATOR)
    async with OpenAdrVen(settings, gateway.hooks()) as ven:
        assert ven.ven_id is not None
        start = _soon(30)
        event_id = vtn.add_event(ven.ven_id, signal_name="SIMPLE", signal_type="level",
                                 intervals=[(start, dt.timedelta(minutes=10), 2)])
        await until(lambda: vtn.opt_for(event_id) is not None, what="the opt answer at the VTN")
    assert vtn.opt_for(event_id) == "optIn"
    targets = {c.der_id: c.target_w for c in gateway.commands}
    assert targets == {"pv1": 0.25 * 5000.0, "bat1": 0.25 * 3000.0}
    assert {c.authority for c in gateway.commands} == {Authority.GRID_OPERATOR}
    assert {c.valid_until - c.valid_from for c in gateway.commands} == {600.0}


@pytest.mark.parametrize(("resource", "kilowatts", "why"), [
    ("heatpump9", 1.0, "not one this gateway controls"),
    ("bat1", 4.0, "beyond what it can do now"),  # 4 kW of charging; the battery takes 3 kW at most
])
async def test_the_vtn_gets_opt_out_when_the_gateway_cannot_do_it(
        vtn: InProcessVtn, ven: OpenAdrVen, gateway: Gateway, caplog: pytest.LogCaptureFixture, resource: str,
        kilowatts: float, why: str) -> None:
    assert ven.ven_id is not None
    event_id = vtn.add_event(ven.ven_id, signal_name="LOAD_DISPATCH", signal_type="setpoint",
                             intervals=[(_soon(), dt.timedelta(minutes=5), kilowatts)], resource_ids=[resource],
                             measurement=real_power_kw())
    await until(lambda: vtn.opt_for(event_id) is not None, what="the opt answer at the VTN")
    assert vtn.opt_for(event_id) == "optOut"
    assert gateway.commands == []


async def test_a_cancelled_event_withdraws_its_commands(vtn: InProcessVtn, ven: OpenAdrVen,
                                                        gateway: Gateway) -> None:
    assert ven.ven_id is not None
    event_id = vtn.add_event(ven.ven_id, signal_name="SIMPLE", signal_type="level",
                             intervals=[(_soon(), dt.timedelta(minutes=5), 1)], resource_ids=["pv1"])
    await until(lambda: bool(gateway.commands), what="the command")
    [command] = gateway.commands
    vtn.cancel_event(ven.ven_id, event_id)
    await until(lambda: bool(gateway.cancelled), what="the withdrawal")
    assert gateway.cancelled == [command.command_id]


# -- canaries: the openleadr 0.5.36 defects the adapter works around ----------------------------------------------
def test_canary_add_report_with_a_measurement_dict_raises_attribute_error() -> None:
    client = OpenADRClient(ven_name="canary", vtn_url="https://127.0.0.1:9/OpenADR2/Simple/2.0b")
    measurement = {"name": "powerReal", "description": "RealPower", "unit": "W",
                   "power_attributes": {"hertz": 50, "voltage": 230, "ac": True}}
    with pytest.raises(AttributeError, match="PowerAttributes"):
        client.add_report(callback=lambda: 1.0, resource_id="pv1", measurement=measurement,
                          report_duration=dt.timedelta(seconds=60))


def test_canary_openleadr_cannot_sign_with_ed25519(pki: dict[str, Identity]) -> None:
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(TypeError):
        create_message("oadrPoll", cert=pki["ven"].cert.read_bytes(), key=key, ven_id="x")


async def test_canary_the_vtn_registers_unsigned_registrations_and_ignores_other_report_names(
        pki: dict[str, Identity], vtn: InProcessVtn) -> None:
    context = ssl.create_default_context(cafile=str(pki["ven"].ca))
    context.load_cert_chain(str(pki["ven"].cert), str(pki["ven"].key))
    unsigned = create_message("oadrCreatePartyRegistration", request_id="r1", ven_name="unsigned",
                              http_pull_model=True, xml_signature=False, report_only=False, profile_name="2.0b",
                              transport_name="simpleHttp", transport_address=None)
    assert "X509Certificate" not in unsigned
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session, session.post(
            f"{vtn.url}/EiRegisterParty", data=unsigned, headers={"content-type": "application/xml"}) as reply:
        message_type, payload = parse_message(await reply.read())
    assert (message_type, payload["registration_id"]) == ("oadrCreatedPartyRegistration", "reg-ven-1")

    # A plain openleadr VEN offering a report under another name: the VTN never asks its handler about it.
    client = OpenADRClient(ven_name="plain", vtn_url=vtn.url, cert=str(pki["ven"].cert), key=str(pki["ven"].key),
                           ca_file=str(pki["ven"].ca), vtn_fingerprint=openadr_fp(pki["vtn"]),
                           show_fingerprint=False)
    item = objects.Measurement(name="customUnit", description="EXPORT_CAPACITY_LIMIT", unit="W", scale="none")
    for name in (enums.REPORT_NAME.TELEMETRY_USAGE, "x-gridedge-envelope"):
        client.add_report(callback=lambda: 1.0, resource_id=f"pv1-{name}", measurement=item, report_name=name,
                          report_specifier_id=name, sampling_rate=dt.timedelta(seconds=60),
                          report_duration=dt.timedelta(seconds=60))
    try:
        await client.run()
        assert client.registration_id
    finally:
        await client.stop()
    offered = {resource for _, resource, _, _ in vtn.offered}
    assert "pv1-TELEMETRY_USAGE" in offered
    assert "pv1-x-gridedge-envelope" not in offered

