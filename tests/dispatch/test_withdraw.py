"""Withdrawal: an issuer takes commands back (an OpenADR event cancelled or modified). The withdrawal is audited, the
DER falls back to the next command in rank or, with none left, to its cap, and the device follows.

Unit tests on the dispatcher; then the whole daemon with a real openleadr VTN in-process and a simulated inverter:
an event becomes a setpoint on the inverter, its cancellation puts the inverter back under the default envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog, verify_log
from gateway.config import build_config
from gateway.daemon import build, run
from gateway.devices import TcpEndpoint, UnitIO
from gateway.dispatch import Dispatcher
from gateway.pki import fingerprint, init_dev_pki, load_certificate
from gateway.sim import make_devices, serve_tcp
from gateway.sunspec import SunSpecReader, discover
from tests.devices.conftest import free_port
from tests.uplink._openadr_fixtures import InProcessVtn, openadr_fp, real_power_kw, until

from ._helpers import AGG, GO, LOCAL, NOW, command, events, policy


def test_the_next_command_in_rank_takes_over(dispatcher: Dispatcher, log_path: Path) -> None:
    go = command(1000, GO)
    agg = command(3000, AGG)
    dispatcher.submit(go, NOW)
    dispatcher.submit(agg, NOW)
    assert dispatcher.setpoint("inv-1").w == 1000  # type: ignore[union-attr]

    (d,) = dispatcher.withdraw([go.command_id], "event cancelled", NOW + 1)

    assert d.setpoint is not None
    assert (d.outcome, d.changed, d.command_id) == ("withdrawn", True, go.command_id)
    assert (d.setpoint.w, d.setpoint.command_id, d.setpoint.authority) == (3000, agg.command_id, AGG)
    assert dispatcher.setpoint("inv-1") == d.setpoint
    assert f"{go.command_id} withdrawn (event cancelled)" in d.reason
    assert f"aggregator {agg.command_id} takes over: 3000 W" in d.reason
    withdrawn, decided = events(log_path)[-2:]
    assert (withdrawn["event"], withdrawn["command_id"], withdrawn["held"]) == ("command-withdrawn", go.command_id,
                                                                               True)
    assert (withdrawn["der_id"], withdrawn["issuer"], withdrawn["reason"]) == ("inv-1", go.issuer, "event cancelled")
    assert (decided["event"], decided["outcome"], decided["changed"]) == ("decision", "withdrawn", True)
    assert decided["setpoint"]["w"] == 3000
    statuses = {c["command_id"] for c in decided["commands"]}
    assert statuses == {agg.command_id}  # the withdrawn command is no longer considered
    assert verify_log(log_path).ok


def test_the_last_command_withdrawn_releases_the_der_to_its_cap(dispatcher: Dispatcher, log_path: Path) -> None:
    cmd = command(2500, AGG)
    dispatcher.submit(cmd, NOW)
    (d,) = dispatcher.withdraw([cmd.command_id], "event cancelled", NOW + 1)
    assert (d.outcome, d.setpoint, d.changed) == ("withdrawn", None, True)
    assert "released, the DER goes back to its cap" in d.reason
    assert dispatcher.setpoint("inv-1") is None
    assert dispatcher.tick(NOW + 2) == []  # nothing left to release or expire
    assert dispatcher.tick(NOW + 700) == []
    assert not events(log_path, "command-expired")


def test_withdrawing_a_losing_command_changes_nothing_to_write(dispatcher: Dispatcher) -> None:
    go = command(1000, GO)
    agg = command(3000, AGG)
    dispatcher.submit(go, NOW)
    dispatcher.submit(agg, NOW)
    (d,) = dispatcher.withdraw([agg.command_id], "event modified", NOW + 1)
    assert d.setpoint is not None
    assert (d.outcome, d.changed, d.setpoint.w, d.setpoint.command_id) == ("withdrawn", False, 1000, go.command_id)
    assert "the setpoint stays 1000 W" in d.reason


def test_a_pending_command_withdrawn_never_starts(dispatcher: Dispatcher) -> None:
    later = command(1800, AGG, valid_from=NOW + 30, valid_until=NOW + 90)
    dispatcher.submit(later, NOW)
    (d,) = dispatcher.withdraw([later.command_id], "event cancelled", NOW + 1)
    assert (d.outcome, d.setpoint, d.changed) == ("withdrawn", None, False)
    assert dispatcher.tick(NOW + 30) == []
    assert dispatcher.setpoint("inv-1") is None


def test_ids_not_held_are_recorded_and_decide_nothing(dispatcher: Dispatcher, log_path: Path) -> None:
    cmd = command(2500, AGG)
    dispatcher.submit(cmd, NOW)
    assert dispatcher.withdraw(["evt-1:sig:0:inv-1"], "event cancelled", NOW + 1) == []
    (line,) = events(log_path, "command-withdrawn")
    assert (line["command_id"], line["held"]) == ("evt-1:sig:0:inv-1", False)
    assert dispatcher.setpoint("inv-1").w == 2500  # type: ignore[union-attr]


def test_a_channel_withdraws_only_its_own_commands(dispatcher: Dispatcher) -> None:
    mqtt = command(1000, GO, command_id="shared-id")  # source "test": another channel's command, same id
    dispatcher.submit(mqtt, NOW)
    assert dispatcher.withdraw(["shared-id"], "event cancelled", NOW + 1, source="openadr") == []
    assert dispatcher.setpoint("inv-1").w == 1000  # type: ignore[union-attr]


def test_several_ders_and_the_default_envelope_are_said(audit: AuditLog, log_path: Path) -> None:
    d = Dispatcher(policy(), audit)  # no certified envelope: the default is in force
    pv, bat, other = command(1200, LOCAL), command(-1000, LOCAL, der_id="bat-1"), command(900, AGG)
    for c in (pv, bat, other):
        d.submit(c, NOW)
    decisions = d.withdraw([pv.command_id, bat.command_id], "event cancelled", NOW + 1)
    assert [(x.der_id, x.outcome) for x in decisions] == [("bat-1", "withdrawn"), ("inv-1", "withdrawn")]
    by_der = {x.der_id: x for x in decisions}
    assert by_der["bat-1"].setpoint is None
    assert by_der["inv-1"].setpoint is not None
    assert by_der["inv-1"].setpoint.command_id == other.command_id
    assert all("default envelope in force" in x.reason for x in decisions)
    assert [r["command_id"] for r in events(log_path, "command-withdrawn")] == [bat.command_id, pv.command_id]


# --- the daemon, a real VTN and a simulated inverter ---------------------------------------------------------------

RATED_W, DEFAULT_W, EVENT_W = 5000.0, 1500.0, 1000.0


async def _points(port: int, model: int) -> dict[str, Any]:
    async with TcpEndpoint("127.0.0.1", port) as tcp:
        io = UnitIO(tcp, 1)
        (block,) = await SunSpecReader(io, await discover(io), {model}).read()
    return block.points


def _audit(path: Path, *names: str) -> list[dict[str, Any]]:
    return events(path, *names) if path.exists() else []


async def _held_pct(port: int, pct: float, within_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        held = await _points(port, 123)
        if held["WMaxLim_Ena"] == 1 and held["WMaxLimPct"] == pytest.approx(pct):
            return held
        assert time.monotonic() < deadline, f"the inverter holds {held['WMaxLimPct']} %, not {pct} %"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_cancelled_openadr_event_hands_the_inverter_back_to_its_cap(tmp_path: Path) -> None:
    port = free_port()
    ((_, sim),) = make_devices(["inverter"])
    pki = init_dev_pki(tmp_path / "oadr", ("vtn", "ven"))
    vtn = InProcessVtn(pki["vtn"], allowed={openadr_fp(pki["ven"])})
    audit_path = tmp_path / "audit.jsonl"
    config = build_config({
        "site": {"id": "site-1", "gateway_id": "gw-1"},
        "devices": [{"id": "inverter-1", "host": "127.0.0.1", "port": port, "role": "inverter", "rated_w": RATED_W,
                     "poll_interval_s": 0.5, "timeout_s": 0.5}],
        "dispatch": {"audit_log": str(audit_path), "reversion_s": 60,
                     "customer_limits": {"inverter-1": {"export_w": RATED_W, "import_w": 0.0}},
                     "default_envelope": {"export_w": DEFAULT_W, "import_w": 0.0}},
        "uplink": {"state_dir": str(tmp_path / "state"),
                   "openadr": {"vtn_url": vtn.url, "ven_name": "gw-1", "cert": str(pki["ven"].cert),
                               "key": str(pki["ven"].key), "ca": str(pki["ven"].ca),
                               "vtn_fingerprint": fingerprint(load_certificate(pki["vtn"].cert)),
                               "authority": "grid-operator", "load_dispatch_sign": "generation",
                               "report_min_period_s": 1, "report_max_period_s": 60}},
    }, "withdraw-test")
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serve_tcp([sim], port=port))
        await vtn.start()
        stack.push_async_callback(vtn.stop)
        daemon = asyncio.create_task(run(config, gateway=build(config)))

        async def stop_daemon() -> None:
            daemon.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await daemon

        stack.push_async_callback(stop_daemon)

        await until(lambda: bool(vtn.vens), 20, "the VEN's registration")
        await _held_pct(port, DEFAULT_W / RATED_W * 100)  # capped at the default envelope: no twin here
        (ven_id,) = vtn.vens
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=5)
        event_id = vtn.add_event(ven_id, signal_name="LOAD_DISPATCH", signal_type="setpoint",
                                 intervals=[(start, dt.timedelta(minutes=10), EVENT_W / 1000)],
                                 resource_ids=["inverter-1"], measurement=real_power_kw())
        await until(lambda: vtn.opt_for(event_id) == "optIn", 20, "the VEN's opt-in")
        await _held_pct(port, EVENT_W / RATED_W * 100)  # the event's 1000 W, below the default envelope
        (accepted,) = [r for r in _audit(audit_path, "decision") if str(r["command_id"]).startswith(event_id)]
        assert (accepted["outcome"], accepted["setpoint"]["w"]) == ("accepted", EVENT_W)
        command_id = accepted["command_id"]

        vtn.cancel_event(ven_id, event_id)
        await until(lambda: [r for r in _audit(audit_path, "decision") if r["outcome"] == "withdrawn"], 20,
                    "the withdrawal decided")
        await _held_pct(port, DEFAULT_W / RATED_W * 100)  # back under the cap: the default envelope

    lines = _audit(audit_path)
    (withdrawn,) = [r for r in lines if r["event"] == "command-withdrawn"]
    assert (withdrawn["command_id"], withdrawn["held"], withdrawn["source"]) == (command_id, True, "openadr")
    assert "OpenADR" in withdrawn["reason"]
    at = lines.index(withdrawn)
    decision = lines[at + 1]
    assert (decision["event"], decision["outcome"], decision["setpoint"], decision["changed"]) == (
        "decision", "withdrawn", None, True)
    cap = next(r for r in lines[at:] if r["event"] == "device-write" and r.get("action") == "cap")
    assert (cap["der_id"], cap["export_w"], cap["export_binding"]) == ("inverter-1", DEFAULT_W, "default-envelope")
    assert verify_log(audit_path).ok
