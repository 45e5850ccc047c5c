"""The whole data path through real peers: simulated SunSpec inverters (pymodbus servers), the bundled European LV
feeder (power-grid-model), a real mosquitto with mutual TLS and an ACL, a real openleadr VTN, and the daemon between
them — devices -> twin -> certified envelope -> dispatch -> devices, and signed messages up and down.

Checked from outside the daemon: what the head-end receives and verifies with the gateway's certificate, what the
inverters hold (read over a second Modbus connection), what the VTN was told, and the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.audit import verify_log
from gateway.config import Config, build_config
from gateway.daemon import Gateway, build, run
from gateway.devices import TcpEndpoint, UnitIO
from gateway.pki import Identity, fingerprint, init_dev_pki, load_certificate
from gateway.segment import builtin_feeder
from gateway.sim import SimulatedDevice, make_devices, serve_tcp
from gateway.sunspec import SunSpecReader, discover
from gateway.twin import PowerFlow, with_ders
from gateway.types import Authority, Command
from gateway.uplink import (
    CommandMessage,
    EnvelopeMessage,
    EventMessage,
    SignatureError,
    Signer,
    Verifier,
    new_id,
    parse_message,
    sign_message,
)
from tests.devices.conftest import free_port
from tests.uplink._broker import Broker
from tests.uplink._headend import HeadEnd
from tests.uplink._openadr_fixtures import InProcessVtn, openadr_fp, until
from tests.uplink.conftest import headend, mosquitto  # noqa: F401  (fixtures: a real broker and head-ends)

pytestmark = pytest.mark.slow

#: Far-end customers of the European LV feeder, phase b: export there is voltage-limited.
BUSES = {"inverter-1": "899", "inverter-2": "886", "inverter-3": "898"}
SOURCE_V_PU, LOAD_BOUND = 1.025, (0.3, 1.1)
DEFAULT_EXPORT_W = 1500.0
RATED_W = 5000.0
ISSUER = "dnsp"


@dataclass
class Rig:
    config: Config
    gw: Gateway
    broker: Broker
    headend: HeadEnd
    signer: Signer  # the head-end's command key
    verifier: Verifier  # the gateway's certificate, as the head-end trusts it
    vtn: InProcessVtn
    audit_path: Path
    ports: dict[str, int]
    servers: dict[str, contextlib.AsyncExitStack]

    @property
    def prefix(self) -> str:
        return self.broker.prefix

    def envelopes(self) -> list[EnvelopeMessage]:
        out = []
        for m in self.headend.snapshot(f"{self.prefix}/envelope"):
            message = parse_message(self.verifier.verify(m.payload))
            assert isinstance(message, EnvelopeMessage)
            out.append(message)
        return out

    def events(self) -> list[EventMessage]:
        out = []
        for m in self.headend.snapshot(f"{self.prefix}/events"):
            message = parse_message(self.verifier.verify(m.payload))
            assert isinstance(message, EventMessage)
            out.append(message)
        return out

    def audit(self, *names: str) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        lines = [json.loads(line) for line in self.audit_path.read_text().splitlines()]
        return [r for r in lines if not names or r["event"] in names]

    def command(self, der_id: str, target_w: float, *, seq: int) -> tuple[str, bytes]:
        now = time.time()
        command = Command(command_id=new_id(), issuer=ISSUER, authority=Authority.GRID_OPERATOR, der_id=der_id,
                          target_w=target_w, valid_from=now - 1, valid_until=now + 60, source="test")
        message = CommandMessage.from_command(command, seq=seq, issued_at=now, gateway=self.broker.gateway_id)
        return command.command_id, sign_message(self.signer, message)


async def points(port: int, model: int) -> dict[str, Any]:
    """A model's points read over a separate connection: what the inverter holds, not what the daemon thinks."""
    async with TcpEndpoint("127.0.0.1", port) as tcp:
        io = UnitIO(tcp, 1)
        (block,) = await SunSpecReader(io, await discover(io), {model}).read()
    return block.points


def _config(tmp: Path, broker: Broker, vtn: InProcessVtn, ven: Identity, vtn_id: Identity,
            ports: dict[str, int]) -> Config:
    gateway, headend_id = broker.pki["gateway"], broker.pki["headend"]
    return build_config({
        "site": {"id": broker.site, "gateway_id": broker.gateway_id},
        "devices": [{"id": d, "host": "127.0.0.1", "port": p, "role": "inverter", "rated_w": RATED_W,
                     "poll_interval_s": 0.5, "timeout_s": 0.5} for d, p in ports.items()],
        "dispatch": {"audit_log": str(tmp / "audit.jsonl"), "reversion_s": 60,
                     "customer_limits": {d: {"export_w": RATED_W, "import_w": 0.0} for d in ports},
                     "default_envelope": {"export_w": DEFAULT_EXPORT_W, "import_w": 0.0}},
        "twin": {"feeder": "builtin:ieee-european-lv", "interval_s": 1.0, "validity_s": 10.0, "policy": "equal",
                 "source_v_pu": SOURCE_V_PU, "load_bound": list(LOAD_BOUND),
                 "ders": [{"device": d, "bus": BUSES[d], "phase": "b"} for d in ports]},
        "uplink": {
            "state_dir": str(tmp / "state"), "telemetry_interval_s": 1.0,
            "signing": {"cert": str(gateway.cert), "key": str(gateway.key)},
            "mqtt": {"host": broker.host, "port": broker.port, "ca": str(gateway.ca), "cert": str(gateway.cert),
                     "key": str(gateway.key)},
            "headends": [{"cert": str(headend_id.cert), "authority": "grid-operator", "issuer": ISSUER}],
            "openadr": {"vtn_url": vtn.url, "ven_name": "gw-1", "cert": str(ven.cert), "key": str(ven.key),
                        "ca": str(ven.ca), "vtn_fingerprint": fingerprint(load_certificate(vtn_id.cert)),
                        "report_min_period_s": 1, "report_max_period_s": 60},
        },
    }, "e2e")


@contextlib.asynccontextmanager
async def _rig(tmp_path: Path, broker: Broker, make_headend: Callable[..., HeadEnd]) -> AsyncIterator[Rig]:
    sims: dict[str, SimulatedDevice] = {f"inverter-{i + 1}": d for i, (_, d) in
                                        enumerate(make_devices([f"inverter:{len(BUSES)}"]))}
    ports = {d: free_port() for d in sims}
    servers: dict[str, contextlib.AsyncExitStack] = {}
    for d, sim in sims.items():
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(serve_tcp([sim], port=ports[d]))
        servers[d] = stack
    oadr = init_dev_pki(tmp_path / "oadr", ("vtn", "ven"))
    vtn = InProcessVtn(oadr["vtn"], allowed={openadr_fp(oadr["ven"])})
    await vtn.start()
    config = _config(tmp_path, broker, vtn, oadr["ven"], oadr["vtn"], ports)
    gw = build(config)
    head = make_headend()
    await head.wait_subscribed()
    daemon = asyncio.create_task(run(config, gateway=gw))
    try:
        yield Rig(config, gw, broker, head, Signer.from_files(broker.pki["headend"].cert, broker.pki["headend"].key),
                  Verifier.from_certs([broker.pki["gateway"].cert]), vtn, tmp_path / "audit.jsonl", ports, servers)
    finally:
        daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon
        await vtn.stop()
        for stack in servers.values():
            await stack.aclose()


@pytest.fixture
async def rig(tmp_path: Path, mosquitto: Broker, headend: Callable[..., HeadEnd]) -> AsyncIterator[Rig]:  # noqa: F811
    async with _rig(tmp_path, mosquitto, headend) as made:
        yield made


def _certified(rig: Rig) -> list[EnvelopeMessage]:
    return [e for e in rig.envelopes() if e.certificate.certified]


async def _first_certified(rig: Rig) -> EnvelopeMessage:
    """The first certified envelope the head-end verified, once dispatch has it in force."""
    await until(lambda: _certified(rig), 30, "a certified envelope at the head-end")
    await until(lambda: [r for r in rig.audit("envelope") if not r["default"]], 10, "it in force")
    return _certified(rig)[0]


def _export(envelope: EnvelopeMessage, der_id: str) -> float:
    return next(d.op_mod_exp_lim_w for d in envelope.ders if d.der_id == der_id)


async def test_a_certified_envelope_is_published_signed_and_holds_under_ac(rig: Rig) -> None:
    envelope = await _first_certified(rig)
    limits = {d.der_id: d.op_mod_exp_lim_w for d in envelope.ders}
    assert set(limits) == set(BUSES)
    assert all(0 < w < RATED_W for w in limits.values())  # voltage-limited below the rating, not zero
    cert = envelope.certificate
    assert cert.vmax_pu is not None
    assert cert.vmax_pu <= 1.05 - 0.002 + 1e-9
    assert "vmax" not in (cert.reason or "")
    assert envelope.issuer == rig.broker.gateway_id

    # Independently of the envelope search: one AC solve with every DER at its published limit at the lowest load
    # the envelope promises to hold for stays inside vmax minus the margin.
    feeder = with_ders(builtin_feeder("ieee-european-lv"), list(BUSES), list(BUSES.values()),
                        phase=[2] * len(BUSES))
    flow = PowerFlow(feeder)
    low_p = np.asarray(feeder.loads.p_w)[None, :] * LOAD_BOUND[0]
    low_q = np.asarray(feeder.loads.q_var)[None, :] * LOAD_BOUND[0]
    result = flow.solve_batch(np.array([[limits[d] for d in BUSES]]), load_p_w=low_p, load_q_var=low_q,
                              source_v_pu=np.array([SOURCE_V_PU]))
    assert float(np.max(result.vmax_pu)) <= 1.05 - 0.002 + 1e-6

    # A head-end can tell an altered envelope from the gateway's.
    raw = rig.headend.snapshot(f"{rig.prefix}/envelope")[0].payload
    head, body, sig = raw.split(b".")
    with pytest.raises(SignatureError):
        rig.verifier.verify(head + b"." + body[:-1] + (b"A" if body[-1:] != b"A" else b"B") + b"." + sig)

    # The VTN got the same limits in the OpenADR envelope report.
    def reported() -> float | None:
        values = [v.value for v in rig.vtn.values if v.resource_id == "inverter-1"
                  and v.measurement == "EXPORT_CAPACITY_LIMIT"]
        return values[-1] if values else None

    await until(lambda: reported() is not None, 30, "the envelope report at the VTN")
    assert reported() == pytest.approx(limits["inverter-1"], abs=1.0)


async def test_a_signed_command_becomes_a_clamped_setpoint_on_the_inverter(rig: Rig) -> None:
    envelope = await _first_certified(rig)
    limit = _export(envelope, "inverter-1")
    cid, token = rig.command("inverter-1", RATED_W, seq=1)
    rig.headend.publish(f"{rig.prefix}/cmd", token)

    await until(lambda: [r for r in rig.audit("read-back") if r.get("command_id") == cid], 20, "the write")
    (decision,) = [r for r in rig.audit("decision") if r["command_id"] == cid]
    assert (decision["outcome"], decision["binding"]) == ("clamped", "envelope-export")
    assert decision["setpoint"]["requested_w"] == RATED_W
    assert decision["setpoint"]["w"] == pytest.approx(limit, abs=1.0)
    held = await points(rig.ports["inverter-1"], 123)
    assert held["WMaxLim_Ena"] == 1
    sf = 10.0 ** held["WMaxLimPct_SF"]
    assert limit / RATED_W * 100 - sf <= held["WMaxLimPct"] <= limit / RATED_W * 100 + 1e-9  # never above the clamp
    assert 0 < held["WMaxLimPct_RvrtTms"] <= 60  # and it reverts by itself if the gateway dies
    await until(lambda: any(e.kind == "command-decision" and e.data.get("commandId") == cid for e in rig.events()),
                10, "the signed decision event")
    (event,) = [e for e in rig.events() if e.data.get("commandId") == cid]
    assert (event.data["binding"], event.data["outcome"]) == ("envelope-export", "clamped")
    assert verify_log(rig.audit_path).ok


async def test_a_tampered_command_actuates_nothing_and_is_audited(rig: Rig) -> None:
    envelope = await _first_certified(rig)
    await until(lambda: [r for r in rig.audit("read-back") if r.get("der_id") == "inverter-2"
                         and r.get("action") == "cap" and r["export_w"] and r["export_w"] > DEFAULT_EXPORT_W],
                20, "inverter-2 capped at the certified envelope")
    before = await points(rig.ports["inverter-2"], 123)
    cid, token = rig.command("inverter-2", 0.0, seq=1)
    head, body, sig = token.split(b".")
    tampered = head + b"." + body[:-1] + (b"A" if body[-1:] != b"A" else b"B") + b"." + sig
    rig.headend.publish(f"{rig.prefix}/cmd", tampered)

    await until(lambda: rig.audit("command-rejected"), 20, "the rejection in the audit log")
    (rejected,) = rig.audit("command-rejected")
    assert (rejected["code"], rejected["source"]) == ("bad-signature", "mqtt")
    assert rejected["raw_bytes"] == len(tampered)
    assert not [r for r in rig.audit() if r.get("command_id") == cid]  # never received, decided or written
    after = await points(rig.ports["inverter-2"], 123)
    assert after["WMaxLimPct"] == before["WMaxLimPct"] == pytest.approx(
        _export(envelope, "inverter-2") / RATED_W * 100, abs=0.1)
    assert after["WMaxLimPct"] > 0
    await until(lambda: any(e.kind == "command-rejected" for e in rig.events()), 10, "the signed event")


async def test_a_stale_envelope_holder_puts_the_default_envelope_in_force(rig: Rig) -> None:
    await _first_certified(rig)
    await rig.servers["inverter-2"].aclose()  # inverter-2 stops answering

    def default_in_force() -> list[dict[str, Any]]:
        return [r for r in rig.audit("envelope") if r["default"] and "inverter-2" in (r["reason"] or "")]

    await until(default_in_force, 20, "the default envelope in force")
    assert "stale devices: inverter-2" in default_in_force()[0]["reason"]
    await until(lambda: any(not e.certificate.certified and "inverter-2" in (e.certificate.reason or "")
                            for e in rig.envelopes()), 20, "an uncertified envelope published")
    published = next(e for e in rig.envelopes() if not e.certificate.certified)
    assert {d.der_id: d.op_mod_exp_lim_w for d in published.ders} == dict.fromkeys(BUSES, DEFAULT_EXPORT_W)

    async def inverter_1_pct() -> float:
        return float((await points(rig.ports["inverter-1"], 123))["WMaxLimPct"])

    deadline = time.monotonic() + 20
    while await inverter_1_pct() != pytest.approx(DEFAULT_EXPORT_W / RATED_W * 100):
        assert time.monotonic() < deadline, "inverter-1 was not capped at the default envelope"
        await asyncio.sleep(0.2)
    caps = [r for r in rig.audit("device-write") if r.get("action") == "cap" and r["der_id"] == "inverter-1"]
    assert caps[-1]["export_binding"] == "default-envelope"
