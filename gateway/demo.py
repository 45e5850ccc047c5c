"""``gridedge demo``: the whole data path on one machine — devices -> twin -> envelope -> dispatch and uplinks.

Built-in defaults only (nothing outside the package is read): simulated SunSpec devices on loopback (three PV
inverters and a battery), the IEEE European LV feeder bundled with pandapower with the inverters at its far end on
one phase (where export is voltage-limited), a development PKI in a temporary directory, a local mosquitto on a free
loopback port when ``/usr/sbin/mosquitto`` exists (else the demo says so and runs without MQTT), an in-process
OpenADR VTN, and a head-end that verifies every signed message and signs commands. It prints the telemetry the
head-end verified, each envelope with its certificate, the head-end's commands and what dispatch made of them
(clamped to the envelope, and which constraint bound), a tampered command being refused, and the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

from gateway.config import build_config
from gateway.daemon import build, run
from gateway.devices import Reading
from gateway.pki import Identity, fingerprint, init_dev_pki, load_certificate
from gateway.sim import DeviceSpec, make_devices, serve_fleet
from gateway.types import Authority, Envelope
from gateway.uplink import EnvelopeMessage, EventMessage, TelemetryMessage
from gateway.uplink._devbroker import dev_broker, find_mosquitto
from gateway.uplink._devheadend import DevHeadEnd
from gateway.uplink._devvtn import DevVtn, ReportValue, openadr_fingerprint

SITE, GATEWAY = "demo-site", "demo-gw"
FEEDER = "builtin:ieee-european-lv"
#: Far-end customers of the European LV feeder on phase b: the inverters connect here, in this order.
FAR_END_BUSES = ("899", "886", "898", "906", "835", "780")
TWIN_INTERVAL_S = 5.0
TELEMETRY_S = 5.0
HEADEND = "demo-headend"
#: When the head-end sends its commands, after the first certified envelope (seconds).
COMMAND_AFTER_S = 3.0


def _w(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} W"


class Printer:
    """Everything the demo prints, one readable line per thing that happened."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.certified = asyncio.Event()
        self._vtn_seen: dict[tuple[str, str], float] = {}

    def say(self, who: str, text: str) -> None:
        print(f"{time.monotonic() - self.t0:6.1f}s  {who:<9} {text}", file=self.out, flush=True)

    def envelope(self, env: Envelope, elapsed_s: float, binding: tuple[str, str] | None) -> None:
        limits = {lim.der_id: (lim.export_w, lim.import_w) for lim in env.limits}
        values = set(limits.values())
        if len(values) == 1:
            (exp, imp), = values
            shown = f"{', '.join(limits)} each: export <= {_w(exp)}, import <= {_w(imp)}"
        else:
            shown = "; ".join(f"{d}: export <= {_w(e)}, import <= {_w(i)}" for d, (e, i) in limits.items())
        if not env.certified or env.certificate is None:
            self.say("twin", f"envelope #{env.sequence} NOT certified ({env.reason}) -> default: {shown}")
            return
        c = env.certificate
        self.say("twin", f"envelope #{env.sequence} certified in {elapsed_s * 1e3:.0f} ms: {shown}")
        binds = f"; binds: export {binding[0]}, import {binding[1]}" if binding else ""
        self.say("", f"  certificate: worst V {c.vmax_pu:.4f} / {c.vmin_pu:.4f} pu, max loading "
                     f"{c.max_loading * 100:.0f} %, margin {c.margin_pu:.3f} pu, {c.ac_solves} AC solves{binds}")
        self.certified.set()

    def reading(self, r: Reading) -> None:
        m = r.measurement
        soc = "" if m.soc_pct is None else f", SoC {m.soc_pct:.0f} %"
        self.say("device", f"{r.device_id}: {_w(m.w)}, {m.v or 0:.1f} V{soc}")

    def vtn_value(self, value: ReportValue) -> None:
        if value.measurement not in ("EXPORT_CAPACITY_LIMIT", "IMPORT_CAPACITY_LIMIT"):
            return
        key = (value.resource_id, value.measurement)
        if self._vtn_seen.get(key) != value.value:
            self._vtn_seen[key] = value.value
            self.say("vtn", f"OpenADR report from {value.ven_id}: {value.resource_id} {value.measurement} "
                            f"{_w(value.value)}")

    def audit(self, record: Mapping[str, Any]) -> None:
        e = record["event"]
        head = f"#{record['seq']} [{str(record['hash'])[:8]}]"
        if e == "envelope":
            kind = "default" if record.get("default") else "certified"
            why = f" ({record['reason']})" if record.get("reason") else ""
            text = f"envelope in force: {record['issuer']}#{record['sequence']} {kind}{why}"
        elif e == "device-write" and record.get("action") == "cap":
            text = (f"write cap {record['der_id']}: export <= {_w(record['export_w'])} ({record['export_binding']}),"
                    f" import <= {_w(record['import_w'])} ({record['import_binding']}), models {record['models']}, "
                    f"reverts in {record['reversion_s']} s")
        elif e == "device-write":
            text = (f"write {record['der_id']}: {record.get('action') or 'setpoint'} {_w(record.get('w'))} "
                    f"via model {record['model']}")
        elif e == "read-back":
            text = f"read-back {record['der_id']}: {'ok' if record['ok'] else 'MISMATCH'} {record.get('points')}"
        elif e == "command-received":
            text = (f"command {str(record['command_id'])[:8]} from {record['issuer']} ({record['authority']}): "
                    f"{record['der_id']} {_w(record['target_w'])}")
        elif e == "decision":
            text = f"decision {record['der_id']}: {record['outcome']} — {record['reason']}"
        elif e == "command-rejected":
            text = f"command REJECTED ({record['code']}): {record['reason']}; nothing actuated"
        else:
            text = e + " " + json.dumps({k: v for k, v in record.items()
                                         if k not in ("event", "seq", "ts", "prev", "hash")})[:200]
        self.say("audit", f"{head} {text}")


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


async def _tail_audit(path: Path, printer: Printer) -> None:
    offset = 0
    while True:
        await asyncio.sleep(0.3)
        data = await asyncio.to_thread(_read_from, path, offset)
        end = data.rfind(b"\n") + 1
        offset += end
        for line in data[:end].splitlines():
            printer.audit(json.loads(line))


async def _headend_reader(headend: DevHeadEnd, printer: Printer) -> None:
    while True:
        suffix, item = await headend.received.get()
        if isinstance(item, str):
            printer.say("head-end", f"{suffix}: signature NOT valid — {item}")
            continue
        if isinstance(item, TelemetryMessage):
            parts = [f"{m.device_id} {_w(m.w)}" + ("" if m.soc_pct is None else f" SoC {m.soc_pct:.0f} %")
                     for m in item.measurements]
            printer.say("head-end", f"telemetry #{item.seq} (signature ok): {' | '.join(parts)}")
        elif isinstance(item, EnvelopeMessage):
            state = "certified" if item.certificate.certified else "default"
            printer.say("head-end", f"envelope #{item.seq} ({state}) signature ok, valid "
                                    f"{item.valid_until - item.valid_from:.0f} s")
        elif isinstance(item, EventMessage):
            d = item.data
            if item.kind == "command-decision":
                printer.say("head-end", f"gateway decided on {str(d.get('commandId'))[:8]}: {d.get('outcome')}, "
                                        f"{d.get('derId')} asked {_w(_num(d.get('requestedW')))} -> "
                                        f"{_w(_num(d.get('w')))}, binding: {d.get('binding')}")
            else:
                printer.say("head-end", f"event {item.kind}: {item.message}")


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def _commands(headend: DevHeadEnd, printer: Printer, broker_prefix: str, battery: str | None) -> None:
    """After the first certified envelope: commands the envelope clamps, then a tampered one."""
    await printer.certified.wait()
    await asyncio.sleep(COMMAND_AFTER_S)
    topic = f"{broker_prefix}/cmd"
    cid, token = headend.command("inverter-1", 5000.0, gateway=GATEWAY)
    printer.say("head-end", f"-> signed command {cid[:8]} ({headend.authority.value}): inverter-1 export 5,000 W")
    headend.publish(topic, token)
    if battery is not None:
        await asyncio.sleep(1.0)
        cid, token = headend.command(battery, 2500.0, gateway=GATEWAY)
        printer.say("head-end", f"-> signed command {cid[:8]}: {battery} discharge 2,500 W")
        headend.publish(topic, token)
    await asyncio.sleep(2.0)
    cid, token = headend.command("inverter-2", 0.0, gateway=GATEWAY)
    header, payload, signature = token.split(b".")
    tampered = header + b"." + payload[:-2] + (b"A" if payload[-2:-1] != b"A" else b"B") + payload[-1:] + b"." + \
        signature
    printer.say("head-end", f"-> TAMPERED command {cid[:8]}: inverter-2 to 0 W with one byte of its payload changed")
    headend.publish(topic, tampered)


def _config(served: list[Any], tmp: Path, pki: Mapping[str, Identity], *, broker: Any, vtn: DevVtn) -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    customer: dict[str, dict[str, float]] = {}
    twin_ders: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for s in served:
        counts[s.kind] = counts.get(s.kind, 0) + 1
        device_id = f"{s.kind}-{counts[s.kind]}"
        role = "battery" if s.kind == "battery" else "inverter"
        devices.append({"id": device_id, "host": s.endpoint.host, "port": s.endpoint.port, "unit": s.endpoint.unit,
                        "role": role, "rated_w": 5000.0, "poll_interval_s": 1.0})
        customer[device_id] = {"export_w": 5000.0, "import_w": 0.0} if role == "inverter" else {
            "export_w": 3000.0, "import_w": 3000.0}
        if role == "inverter" and len(twin_ders) < len(FAR_END_BUSES):
            twin_ders.append({"device": device_id, "bus": FAR_END_BUSES[len(twin_ders)], "phase": "b"})
    batteries = {d["id"]: {"export_w": 2000.0, "import_w": 2000.0} for d in devices if d["role"] == "battery"}
    config: dict[str, Any] = {
        "site": {"id": SITE, "gateway_id": GATEWAY},
        "devices": devices,
        "dispatch": {"audit_log": str(tmp / "audit.jsonl"), "reversion_s": 60, "customer_limits": customer,
                     "default_envelope": {"export_w": 1500.0, "import_w": 1500.0, "ders": batteries}},
        "uplink": {"state_dir": str(tmp / "state"), "telemetry_interval_s": TELEMETRY_S,
                   "signing": {"cert": str(pki["gateway"].cert), "key": str(pki["gateway"].key)},
                   "openadr": {"vtn_url": vtn.url, "ven_name": GATEWAY, "cert": str(pki["ven"].cert),
                               "key": str(pki["ven"].key), "ca": str(pki["ven"].ca),
                               "vtn_fingerprint": fingerprint(load_certificate(pki["vtn"].cert)),
                               "report_min_period_s": 5, "report_max_period_s": 60}},
    }
    if twin_ders:
        config["twin"] = {"feeder": FEEDER, "interval_s": TWIN_INTERVAL_S, "validity_s": 6 * TWIN_INTERVAL_S,
                          "policy": "equal", "source_v_pu": 1.025, "load_bound": [0.3, 1.1], "ders": twin_ders}
    if broker is not None:
        config["uplink"]["mqtt"] = {"host": broker.host, "port": broker.port, "ca": str(pki["gateway"].ca),
                                    "cert": str(pki["gateway"].cert), "key": str(pki["gateway"].key)}
        config["uplink"]["headends"] = [{"cert": str(pki["headend"].cert), "authority": "grid-operator",
                                         "issuer": HEADEND}]
    return config


async def demo(inverters: int = 3, batteries: int = 1, duration_s: float | None = None,
               out: TextIO = sys.stdout) -> None:
    specs = [DeviceSpec("inverter", inverters)] if inverters else []
    specs += [DeviceSpec("battery", batteries)] if batteries else []
    printer = Printer(out)
    with tempfile.TemporaryDirectory(prefix="gridedge-demo-") as tmp_name:
        tmp = Path(tmp_name)
        pki = init_dev_pki(tmp / "pki")
        async with serve_fleet(make_devices(specs)) as served, AsyncExitStack() as stack:
            endpoints = ", ".join(sorted({f"{s.endpoint.host}:{s.endpoint.port}" for s in served}))
            printer.say("demo", f"{len(served)} simulated SunSpec devices on {endpoints}")
            binary = find_mosquitto()
            broker = None
            if binary is None:
                printer.say("demo", "mosquitto is not installed (/usr/sbin/mosquitto): running without MQTT — "
                                    "`apt-get install mosquitto` to see signed messages and commands")
            else:
                broker = await stack.enter_async_context(dev_broker(binary, tmp / "broker", pki["broker"],
                                                                    site=SITE, gateway_id=GATEWAY))
                printer.say("demo", f"mosquitto (mutual TLS, ACL) on {broker.host}:{broker.port}")
            vtn = DevVtn(pki["vtn"], allowed={openadr_fingerprint(pki["ven"])}, on_value=printer.vtn_value)
            await vtn.start()
            stack.push_async_callback(vtn.stop)
            printer.say("demo", f"OpenADR 2.0b VTN on {vtn.url}")
            config = build_config(_config(served, tmp, pki, broker=broker, vtn=vtn), "demo")
            if config.twin is not None:
                printer.say("demo", f"twin: {FEEDER}, " + ", ".join(
                    f"{d.device} at bus {d.bus} phase {d.phase}" for d in config.twin.ders)
                    + f"; a certified envelope every {TWIN_INTERVAL_S:g} s")
            gw = build(config)
            async with asyncio.TaskGroup() as tg:
                helpers = [tg.create_task(_tail_audit(Path(config.dispatch.audit_log), printer))] \
                    if config.dispatch is not None else []
                if broker is not None:
                    headend = DevHeadEnd(broker.host, broker.port, pki["headend"], gateway_cert=pki["gateway"],
                                         issuer=HEADEND, authority=Authority.GRID_OPERATOR)
                    stack.callback(headend.close)
                    battery = next((d.id for d in config.devices if d.role == "battery"), None)
                    helpers += [tg.create_task(_headend_reader(headend, printer)),
                                tg.create_task(_commands(headend, printer, f"gridedge/{SITE}/{GATEWAY}", battery))]
                    on_reading = None
                else:
                    last: dict[str, float] = {}

                    def on_reading(r: Reading) -> None:
                        if time.monotonic() - last.get(r.device_id, -1e9) >= TELEMETRY_S:
                            last[r.device_id] = time.monotonic()
                            printer.reading(r)

                try:
                    await run(config, duration_s=duration_s, gateway=gw, on_envelope=printer.envelope,
                              on_reading=on_reading)
                finally:
                    await asyncio.sleep(0.5)  # the last audit lines
                    for task in helpers:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
