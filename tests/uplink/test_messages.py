"""Wire schemas: shared types -> signed message -> verify -> shared types is lossless; the wire names are the
CSIP-AUS/OpenADR 3 ones; parsing is strict and names the field; sequence numbers never go back, even across
restarts."""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError, MessageError
from gateway.pki import Identity, init_dev_pki
from gateway.types import (
    Authority,
    Command,
    DerLimit,
    DeviceState,
    Envelope,
    EnvelopeCertificate,
    Measurement,
)
from gateway.uplink import (
    CommandMessage,
    EnvelopeMessage,
    EventMessage,
    Sequencer,
    Signer,
    StatusMessage,
    TelemetryMessage,
    Verifier,
    parse_message,
    sign_message,
)
from tests.uplink._signing import T0

CERTIFIED = Envelope(
    issuer="gw-1", sequence=42, valid_from=T0, valid_until=T0 + 300.5,
    limits=(DerLimit("inv-1", 4875.25, 0.0), DerLimit("bat-1", 3000.0, 2512.125)),
    certified=True,
    certificate=EnvelopeCertificate(vmax_pu=1.0449, vmin_pu=0.9531, max_loading=0.8125, margin_pu=0.005,
                                    method="equal: linear + 3 AC batches", ac_solves=23),
    connection_points=(DerLimit("nmi-4407", 7875.25, 2512.125),),
)
DEFAULT = Envelope(issuer="gw-1", sequence=43, valid_from=T0, valid_until=T0 + 60,
                   limits=(DerLimit("inv-1", 1500.0, 0.0),), certified=False,
                   reason="export: the AC power flow did not converge")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    return init_dev_pki(tmp_path_factory.mktemp("pki"), ("gateway",))


def through_the_wire(signer: Signer, verifier: Verifier, message: Any) -> Any:
    return parse_message(verifier.verify(sign_message(signer, message)))


@pytest.mark.parametrize("envelope", [CERTIFIED, DEFAULT], ids=["certified", "default"])
def test_envelope_round_trip(signer: Signer, verifier: Verifier, envelope: Envelope) -> None:
    message = EnvelopeMessage.from_envelope(envelope, issued_at=T0 + 1)
    back = through_the_wire(signer, verifier, message)
    assert isinstance(back, EnvelopeMessage)
    assert back == message
    assert back.to_envelope() == envelope


def test_envelope_wire_names(signer: Signer, verifier: Verifier) -> None:
    payload = verifier.verify(sign_message(signer, EnvelopeMessage.from_envelope(CERTIFIED, issued_at=T0)))
    assert {k: payload[k] for k in ("type", "issuer", "seq", "validFrom", "validUntil")} == {
        "type": "envelope", "issuer": "gw-1", "seq": 42, "validFrom": T0, "validUntil": T0 + 300.5}
    assert payload["ders"][1] == {"derId": "bat-1", "opModExpLimW": 3000.0, "opModGenLimW": 3000.0,
                                  "EXPORT_CAPACITY_LIMIT": 3000.0, "opModImpLimW": 2512.125,
                                  "opModLoadLimW": 2512.125, "IMPORT_CAPACITY_LIMIT": 2512.125}
    assert payload["connectionPoints"] == [{"id": "nmi-4407", "opModExpLimW": 7875.25, "opModImpLimW": 2512.125,
                                            "EXPORT_CAPACITY_LIMIT": 7875.25, "IMPORT_CAPACITY_LIMIT": 2512.125}]
    assert payload["certificate"] == {"certified": True, "reason": None, "vmaxPu": 1.0449, "vminPu": 0.9531,
                                      "maxLoading": 0.8125, "marginPu": 0.005,
                                      "method": "equal: linear + 3 AC batches", "acSolves": 23}
    default = EnvelopeMessage.from_envelope(DEFAULT, issued_at=T0).payload()["certificate"]
    assert default["certified"] is False
    assert default["reason"].startswith("export:")
    assert default["vmaxPu"] is None


def test_nothing_rated_travels_as_null(signer: Signer, verifier: Verifier) -> None:
    cert = EnvelopeCertificate(1.04, 0.96, math.nan, 0.005, "proportional", 9)
    envelope = Envelope("gw-1", 1, T0, T0 + 60, (DerLimit("inv-1", 100.0, 0.0),), True, cert)
    message = EnvelopeMessage.from_envelope(envelope, issued_at=T0)
    assert message.payload()["certificate"]["maxLoading"] is None
    back = through_the_wire(signer, verifier, message).to_envelope()
    assert math.isnan(back.certificate.max_loading)
    assert back.certificate.vmax_pu == 1.04
    assert back.limits == envelope.limits


def test_partial_certificate_of_a_default_envelope(signer: Signer, verifier: Verifier) -> None:
    """An uncertified envelope may still carry what the AC check saw (NaN where it did not get that far)."""
    cert = EnvelopeCertificate(math.nan, math.nan, math.nan, 0.005, "equal", 4)
    envelope = Envelope("gw-1", 2, T0, T0 + 60, (DerLimit("inv-1", 0.0, 0.0),), False, cert, reason="no convergence")
    back = through_the_wire(signer, verifier, EnvelopeMessage.from_envelope(envelope, issued_at=T0)).to_envelope()
    assert back.certificate is not None
    assert back.certificate.margin_pu == 0.005
    assert back.certificate.ac_solves == 4
    assert math.isnan(back.certificate.vmax_pu)
    assert back.reason == "no convergence"
    assert not back.certified


@pytest.mark.parametrize(("envelope", "field"), [
    (Envelope("gw-1", 1, T0, T0 + 60, (DerLimit("inv-1", math.nan, 0.0),), False, reason="x"), "opModExpLimW"),
    (Envelope("gw-1", 1, T0, T0 + 60, (DerLimit("inv-1", 1.0, 0.0),), True,
              EnvelopeCertificate(math.nan, 0.95, 0.5, 0.005, "equal", 4)), "certificate"),
    (Envelope("gw-1", 1, T0, T0 + 60, (DerLimit("inv-1", 1.0, 0.0),), False), "reason"),
    (Envelope("gw-1", 1, T0 + 60, T0, (DerLimit("inv-1", 1.0, 0.0),), False, reason="x"), "validFrom"),
    (Envelope("gw 1", 1, T0, T0 + 60, (DerLimit("inv-1", 1.0, 0.0),), False, reason="x"), "issuer"),
])
def test_unpublishable_envelopes_are_message_errors(envelope: Envelope, field: str) -> None:
    with pytest.raises(MessageError, match=field):
        EnvelopeMessage.from_envelope(envelope, issued_at=T0)


def test_telemetry_round_trip(signer: Signer, verifier: Verifier) -> None:
    measurements = (
        Measurement("inv-1", T0 - 0.25, "der", w=4321.5, var=-120.0, v=231.4, hz=50.01, wh=1.25e7, w_max=5000.0,
                    state=4),
        Measurement("bat-1", T0 - 0.5, "der", w=-1800.0, soc_pct=62.5),
        Measurement("meter", T0, "meter", w=-2500.0, v=None),
    )
    message = TelemetryMessage.from_measurements(measurements, issuer="gw-1", seq=7, issued_at=T0)
    back = through_the_wire(signer, verifier, message)
    assert back.to_measurements() == measurements
    assert verifier.verify(sign_message(signer, message))["measurements"][1]["socPct"] == 62.5


def test_telemetry_nan_becomes_null() -> None:
    message = TelemetryMessage.from_measurements([Measurement("inv-1", T0, "der", w=math.nan, v=230.0)],
                                                 issuer="gw-1", seq=1, issued_at=T0)
    assert message.payload()["measurements"][0]["w"] is None


def test_status_and_event(signer: Signer, verifier: Verifier) -> None:
    devices = [DeviceState("inv-1", None, stale=True, reason="timeout", last_success=T0 - 30),
               DeviceState("bat-1", None, stale=False, reason=None, last_success=T0)]
    status = StatusMessage.from_states("online", devices, issuer="gw-1", seq=3, issued_at=T0, version="0.1.0")
    back = through_the_wire(signer, verifier, status)
    assert back == status
    assert back.devices[0].reason == "timeout"
    assert back.payload()["devices"][0]["lastSuccess"]
    event = EventMessage(id=status.id, issuer="gw-1", seq=4, issued_at=T0, kind="command-rejected",
                         severity="warning", message="replayed command", data={"reason": "replayed", "seq": 5})
    assert through_the_wire(signer, verifier, event) == event


def test_command_round_trip() -> None:
    command = Command(command_id="3f0c8a52-6a43-4d1e-9b5e-0c7f1f8e2a11", issuer="headend",
                      authority=Authority.GRID_OPERATOR, der_id="inv-1", target_w=-2500.0, valid_from=T0,
                      valid_until=T0 + 900, source="mqtt", received_at=T0 + 0.5, extra={"program": "dnsp-flex"})
    message = CommandMessage.from_command(command, seq=9, issued_at=T0, gateway="gw-1")
    parsed = parse_message(message.payload())
    assert parsed == message
    assert parsed.to_command(authority=Authority.GRID_OPERATOR, source="mqtt", received_at=T0 + 0.5) == command


def _envelope_payload(**over: Any) -> dict[str, Any]:
    payload = EnvelopeMessage.from_envelope(CERTIFIED, issued_at=T0).payload()
    payload.update(over)
    return payload


@pytest.mark.parametrize(("over", "field"), [
    ({"seq": "42"}, "seq"),
    ({"seq": -1}, "seq"),
    ({"seq": True}, "seq"),
    ({"validUntil": T0}, "validFrom"),
    ({"id": "3F0C8A52-6A43-4D1E-9B5E-0C7F1F8E2A11"}, "id"),
    ({"issuer": "gw 1"}, "issuer"),
    ({"extraField": 1}, "extraField"),
    ({"validFrom": float("inf")}, "validFrom"),
    ({"ders": [{"derId": "inv-1", "opModExpLimW": 1.0, "opModImpLimW": 0.0, "opModGenLimW": 2.0,
                "opModLoadLimW": 0.0, "EXPORT_CAPACITY_LIMIT": 1.0, "IMPORT_CAPACITY_LIMIT": 0.0}]}, "opModGenLimW"),
    ({"ders": [{"derId": "inv-1", "opModExpLimW": -1.0, "opModImpLimW": 0.0, "opModGenLimW": -1.0,
                "opModLoadLimW": 0.0, "EXPORT_CAPACITY_LIMIT": -1.0, "IMPORT_CAPACITY_LIMIT": 0.0}]}, "opModExpLimW"),
    ({"ders": "inv-1"}, "ders"),
    ({"type": "command"}, "command"),
    ({"type": "bogus"}, "type"),
    ({"certificate": {"certified": True, "reason": None, "vmaxPu": None, "vminPu": None, "maxLoading": None,
                      "marginPu": None, "method": None, "acSolves": None}}, "certificate"),
    ({"certificate": {"certified": False, "reason": None, "vmaxPu": None, "vminPu": None, "maxLoading": None,
                      "marginPu": None, "method": None, "acSolves": None}}, "reason"),
])
def test_strict_parsing_names_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(MessageError, match=field):
        parse_message(_envelope_payload(**over))


def test_snake_case_names_are_not_wire_names() -> None:
    payload = _envelope_payload()
    payload["valid_from"] = payload.pop("validFrom")
    with pytest.raises(MessageError, match="validFrom"):
        parse_message(payload)


def test_errors_do_not_echo_input() -> None:
    with pytest.raises(MessageError) as info:
        parse_message(_envelope_payload(issuer="x" * 300 + "SECRET"))
    assert "SECRET" not in str(info.value)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=20)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["type", "id", "issuer", "seq", "issuedAt", "validFrom", "validUntil", "ders",
                                        "measurements", "derId", "targetW", "certificate", "state", "x"]),
                       json_values | st.sampled_from(["envelope", "telemetry", "status", "event", "command"])))
def test_fuzz_parse_raises_only_message_error(payload: dict[str, Any]) -> None:
    with contextlib.suppress(MessageError):
        parse_message(payload)


# --- sequence numbers -----------------------------------------------------------------------------------------------


def test_sequencer_in_memory() -> None:
    seq = Sequencer(start=5)
    assert [seq.next() for _ in range(3)] == [5, 6, 7]


def test_sequencer_survives_restarts_and_crashes(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    first = Sequencer(path, block=10)
    handed = [first.next() for _ in range(25)]
    assert handed == list(range(25))
    assert int(path.read_text()) == 30  # the reservation is on disk before a number of its block is handed out
    del first  # a crash: nothing flushed at exit
    second = Sequencer(path, block=10)
    after = [second.next() for _ in range(3)]
    assert after[0] > handed[-1]
    assert after == sorted(set(after))
    assert Sequencer(path, start=1000).next() == 1000  # start is a floor
    assert (path.stat().st_mode & 0o077) == 0


def test_sequencer_is_thread_safe(tmp_path: Path) -> None:
    seq = Sequencer(tmp_path / "seq", block=7)
    got: list[int] = []

    def take() -> None:
        got.extend(seq.next() for _ in range(500))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(2000))


def test_sequencer_broken_file_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    path.write_text("forty-two\n")
    with pytest.raises(ConfigError, match="fix: write the last sequence number"):
        Sequencer(path).load()
