"""The MQTT v5 uplink against a real mosquitto: mTLS, ACL, retained status with will, reconnects, inbound bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from structlog.testing import capture_logs

from gateway.errors import CommandRejected, ConfigError, UplinkUnavailable
from gateway.pki import init_dev_pki
from gateway.types import Authority
from gateway.uplink import MAX_COMMAND_BYTES, CommandVerifier, trusted_signer
from gateway.uplink._mqtt import CONNECTION_LOST, MqttSettings, MqttUplink, _backoff
from tests.uplink._broker import Broker
from tests.uplink._headend import HeadEnd, tls_context
from tests.uplink._signed import envelope, signer_for, telemetry, verifier_for
from tests.uplink._signing import command_payload
from tests.uplink._waits import until
from tests.uplink.conftest import settings_for

REPO = Path(__file__).resolve().parents[2]


async def test_signed_messages_arrive_byte_identical_and_verify_at_the_headend(
        mosquitto: Broker, headend: Callable[..., HeadEnd]) -> None:
    he = headend()
    await he.wait_subscribed()
    signer = signer_for(mosquitto.pki["gateway"])
    sent = {"telemetry": telemetry(signer, "gw-1", 7), "envelope": envelope(signer, "gw-1", 8)}
    codes: list[int] = []
    async with MqttUplink(settings_for(mosquitto)) as uplink:
        await uplink.wait_connected(10)
        for suffix, payload in sent.items():
            uplink.publish(suffix, payload, on_ack=codes.append)
        await until(lambda: len(codes) == 2, "two PUBACKs")
    assert all(code < 0x80 for code in codes)
    for suffix, payload in sent.items():
        await he.wait_until(lambda s=suffix: bool(he.snapshot(f"{mosquitto.prefix}/{s}")), what=suffix)
        (got,) = he.snapshot(f"{mosquitto.prefix}/{suffix}")
        assert got.payload == payload
        assert not got.historical
        verified = verifier_for(mosquitto.pki["gateway"]).verify(got.payload)
        assert (verified["type"], verified["seq"]) == (suffix, 7 if suffix == "telemetry" else 8)


async def test_historical_is_a_user_property_and_leaves_the_payload_alone(
        mosquitto: Broker, headend: Callable[..., HeadEnd]) -> None:
    he = headend()
    await he.wait_subscribed()
    payload = telemetry(signer_for(mosquitto.pki["gateway"]), "gw-1", 1)
    async with MqttUplink(settings_for(mosquitto)) as uplink:
        await uplink.wait_connected(10)
        uplink.publish("telemetry", payload, on_ack=lambda _code: None, historical=True)
        await he.wait_until(lambda: bool(he.snapshot(f"{mosquitto.prefix}/telemetry")), what="the message")
    (got,) = he.snapshot(f"{mosquitto.prefix}/telemetry")
    assert got.user_properties == (("historical", "1"),)
    assert got.payload == payload


async def test_status_is_retained_online_and_the_will_says_offline_when_the_process_dies(
        mosquitto: Broker, headend: Callable[..., HeadEnd], tmp_path: Path) -> None:
    status = f"{mosquitto.prefix}/status"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.uplink._publisher", "--broker-dir", str(mosquitto.directory), "--port",
        str(mosquitto.port), "--outbox", str(tmp_path / "outbox.sqlite"), "--wait-connected", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"connected"  # printed on CONNACK
        # A head-end that subscribes later still learns the gateway is online: the birth is retained.
        late = headend(client_id="late-1")
        await late.wait_until(lambda: bool(late.snapshot(status)), what="the retained birth")
        assert [(m.payload, m.retain) for m in late.snapshot(status)] == [(b"online", True)]
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: an unclean end
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await late.wait_until(lambda: len(late.snapshot(status)) == 2, what="the will")
    assert late.snapshot(status)[-1].payload == b"offline"
    later = headend(client_id="late-2")
    await later.wait_until(lambda: bool(later.snapshot(status)), what="the retained will")
    assert [(m.payload, m.retain) for m in later.snapshot(status)] == [(b"offline", True)]


async def test_a_clean_stop_also_leaves_offline_retained(mosquitto: Broker, headend: Callable[..., HeadEnd]) -> None:
    status = f"{mosquitto.prefix}/status"
    uplink = MqttUplink(settings_for(mosquitto))
    await uplink.start()
    await uplink.wait_connected(10)
    await uplink.stop()
    he = headend()
    await he.wait_until(lambda: bool(he.snapshot(status)), what="the retained status")
    assert [(m.payload, m.retain) for m in he.snapshot(status)] == [(b"offline", True)]
    with pytest.raises(UplinkUnavailable):
        uplink.publish("telemetry", b"x", on_ack=lambda _code: None)


async def test_a_topic_outside_the_acl_prefix_is_refused_with_reason_0x87_logged_and_not_delivered(
        mosquitto: Broker, headend: Callable[..., HeadEnd]) -> None:
    """The gateway's certificate only allows gridedge/site-1/gw-1/...; configured for another site, every publish
    is refused by the broker, and the PUBACK says so (MQTT v5; v3.1.1 would hide it)."""
    he = headend()
    await he.wait_subscribed()
    codes: list[int] = []
    with capture_logs() as logs:
        async with MqttUplink(settings_for(mosquitto, site="other-site")) as wrong:
            await wrong.wait_connected(10)
            wrong.publish("telemetry", b"denied-1", on_ack=codes.append)
            wrong.publish("telemetry", b"denied-2", on_ack=codes.append)
            await until(lambda: len(codes) == 2, "two PUBACKs")
            refused = dict(wrong.stats.refused)
    assert codes == [0x87, 0x87]
    assert refused[0x87] >= 2  # the birth on .../status too
    refusals = [e for e in logs if e["event"] == "mqtt publish refused by the broker"]
    assert {e["topic"] for e in refusals} == {"gridedge/other-site/gw-1/telemetry", "gridedge/other-site/gw-1/status"}
    assert all(e["reason_code"] == "0x87" for e in refusals)
    assert len([e for e in refusals if e["topic"].endswith("/telemetry")]) == 1  # logged once, counted always
    # A permitted message published afterwards arrives; the refused ones never do.
    async with MqttUplink(settings_for(mosquitto)) as right:
        await right.wait_connected(10)
        right.publish("telemetry", b"allowed", on_ack=lambda _code: None)
        await he.wait_until(lambda: bool(he.snapshot(f"{mosquitto.prefix}/telemetry")), what="the permitted message")
    assert not [m for m in he.snapshot() if "other-site" in m.topic]


async def test_reconnects_after_a_broker_restart_and_says_online_again(
        mosquitto: Broker, headend: Callable[..., HeadEnd]) -> None:
    codes: list[int] = []
    changes: list[bool] = []
    async with MqttUplink(settings_for(mosquitto)) as uplink:
        uplink.add_listener(changes.append)
        await uplink.wait_connected(10)
        uplink.publish("telemetry", b"before", on_ack=codes.append)
        await until(lambda: codes == [0x10] or codes == [0], "the first PUBACK")
        mosquitto.restart()
        await until(lambda: uplink.generation == 2 and uplink.connected, "the reconnect", timeout_s=15)
        he = headend()
        await he.wait_subscribed()
        uplink.publish("telemetry", b"after", on_ack=codes.append)
        await he.wait_until(lambda: bool(he.snapshot(f"{mosquitto.prefix}/telemetry")), what="the message")
        assert he.snapshot(f"{mosquitto.prefix}/status")[0].payload == b"online"  # the new birth, retained
        assert uplink.stats.disconnects == 1
    assert changes == [True, False, True, False]
    assert [m.payload for m in he.snapshot(f"{mosquitto.prefix}/telemetry")] == [b"after"]


async def test_in_flight_publishes_are_reported_lost_when_the_connection_drops(mosquitto: Broker) -> None:
    codes: list[int] = []
    async with MqttUplink(settings_for(mosquitto, backoff_initial_s=5.0, backoff_max_s=5.0)) as uplink:
        await uplink.wait_connected(10)
        os.kill(mosquitto.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]  # frozen: no PUBACK comes
        try:
            for i in range(10):
                uplink.publish("telemetry", b"%d" % i, on_ack=codes.append)
            assert uplink.inflight == 10
        finally:
            os.kill(mosquitto.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        await until(lambda: len(codes) == 10, "every on_ack")
        assert codes == [CONNECTION_LOST] * 10
        assert not uplink.connected
        assert uplink.room() == 0
        with pytest.raises(UplinkUnavailable):
            uplink.publish("telemetry", b"x", on_ack=codes.append)


async def test_the_window_is_the_brokers_receive_maximum_when_it_is_smaller(tmp_path: Path) -> None:
    from tests.uplink._broker import find_mosquitto

    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    broker = Broker(binary, tmp_path / "b", max_inflight=20)  # mosquitto announces Receive Maximum 20
    broker.start()
    try:
        async with MqttUplink(settings_for(broker)) as uplink:
            await uplink.wait_connected(10)
            assert uplink.room() == 20
            uplink.publish("telemetry", b"x", on_ack=lambda _code: None)
            assert uplink.room() == 19
    finally:
        broker.stop()


async def test_a_client_certificate_from_another_ca_is_refused(mosquitto: Broker, tmp_path: Path,
                                                               headend: Callable[..., HeadEnd]) -> None:
    rogue = init_dev_pki(tmp_path / "rogue", ("gateway",))["gateway"]  # same name, different CA
    settings = settings_for(mosquitto, cert=rogue.cert, key=rogue.key)
    async with MqttUplink(settings) as uplink:
        await until(lambda: uplink.stats.connect_failures >= 2, "two refused attempts")
        assert not uplink.connected
        assert uplink.stats.connects == 0
        assert uplink.last_error  # the TLS alert (unknown CA) or the closed connection, depending on timing
    assert "certificate verify failed" in mosquitto.log()  # the broker says why
    he = headend()
    await he.wait_subscribed()
    await asyncio.sleep(0.2)
    assert not he.snapshot(f"{mosquitto.prefix}/status")  # it never got as far as a birth


def test_a_client_without_a_certificate_is_refused(mosquitto: Broker) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="anonymous", protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(tls_context(None, str(mosquitto.pki["gateway"].ca)))
    acks: list[object] = []
    client.on_connect = lambda *args: acks.append(args[3])
    try:
        client.connect(mosquitto.host, mosquitto.port)
    except (ssl.SSLError, OSError):
        pass  # refused during the handshake (TLS 1.2)
    else:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and client.loop(0.1) == 0:  # TLS 1.3: refused right after it
            pass
    finally:
        client.disconnect()
    assert acks == []  # no CONNACK, successful or not: the broker never spoke MQTT to it
    deadline = time.monotonic() + 5  # the broker writes its log in its own time (a loaded machine: later)
    while "peer did not return a certificate" not in mosquitto.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "peer did not return a certificate" in mosquitto.log()


async def test_a_key_readable_by_group_or_others_is_refused_before_connecting(mosquitto: Broker) -> None:
    key = mosquitto.pki["gateway"].key
    key.chmod(0o640)
    uplink = MqttUplink(settings_for(mosquitto))
    with pytest.raises(ConfigError, match=f"chmod 600 {key}"):
        await uplink.start()
    assert not uplink.connected
    assert "gridedge-site-1-gw-1" not in mosquitto.log()


async def test_commands_arrive_as_raw_bytes_and_bad_ones_break_nothing(
        mosquitto: Broker, headend: Callable[..., HeadEnd]) -> None:
    """The uplink hands ``cmd`` payloads over unchanged (here to the real CommandVerifier); garbage, oversized
    payloads and a handler that raises leave the connection up and later commands flowing."""
    headend_signer = signer_for(mosquitto.pki["headend"])
    verifier = CommandVerifier(dict([trusted_signer(mosquitto.pki["headend"].cert, Authority.GRID_OPERATOR,
                                                    "headend")]))
    raw: list[bytes] = []
    commands: list[str] = []
    rejected: list[str] = []

    def on_command(payload: bytes) -> None:
        raw.append(payload)
        if payload == b"boom":
            raise RuntimeError("a handler bug")
        try:
            commands.append(verifier.verify(payload, time.time()).der_id)
        except CommandRejected as exc:
            rejected.append(exc.reason)

    now = time.time()
    good = headend_signer.sign(command_payload(seq=1, now=now, derId="inv-7"))
    later = headend_signer.sign(command_payload(seq=2, now=now, derId="inv-8"))
    sent = [good, b"\xff\xfe not a token", b"boom", b"x" * (MAX_COMMAND_BYTES + 1), later]
    he = headend()
    async with MqttUplink(settings_for(mosquitto), on_command=on_command) as uplink:
        await uplink.wait_connected(10)
        await until(lambda: uplink.stats.connects == 1 and bool(he.subscriptions), "both subscribed")
        await asyncio.sleep(0.1)  # the SUBACK for .../cmd
        for payload in sent:
            he.publish(f"{mosquitto.prefix}/cmd", payload)
        await until(lambda: len(raw) == 4, "four commands")
        assert uplink.connected
        assert uplink.stats.commands_dropped == 1
    assert raw == [good, sent[1], b"boom", later]
    assert commands == ["inv-7", "inv-8"]
    assert rejected == ["malformed"]


@pytest.mark.parametrize(("field", "value"), [("site", "a/b"), ("site", ""), ("gateway_id", "gw+1"),
                                              ("gateway_id", "#"), ("port", 0), ("max_inflight", 0)])
def test_settings_that_cannot_work_name_the_key(tmp_path: Path, field: str, value: object) -> None:
    base = MqttSettings(host="127.0.0.1", port=8883, ca=tmp_path / "ca.pem", cert=tmp_path / "c.pem",
                        key=tmp_path / "c.key", site="s", gateway_id="g")
    with pytest.raises(ConfigError, match=f"mqtt.{field}"):
        dataclasses.replace(base, **{field: value})


async def test_only_the_up_topics_can_be_published(mosquitto: Broker) -> None:
    async with MqttUplink(settings_for(mosquitto)) as uplink:
        await uplink.wait_connected(10)
        with pytest.raises(ValueError, match="cmd"):
            uplink.publish("cmd", b"x", on_ack=lambda _code: None)


@pytest.mark.parametrize(("failures", "base_s"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (12, 8.0)])
def test_reconnect_delays_double_with_jitter_up_to_the_cap(tmp_path: Path, failures: int, base_s: float) -> None:
    settings = MqttSettings(host="127.0.0.1", port=8883, ca=tmp_path / "ca.pem", cert=tmp_path / "c.pem",
                            key=tmp_path / "c.key", site="s", gateway_id="g", backoff_initial_s=0.5,
                            backoff_max_s=8.0, jitter=0.2)
    delays = [_backoff(failures, settings, random.Random(seed)) for seed in range(200)]
    assert min(delays) >= base_s * 0.8 - 1e-9
    assert max(delays) <= min(8.0, base_s * 1.2) + 1e-9
    assert len(set(delays)) > 100  # spread: gateways restarted together do not reconnect in step
