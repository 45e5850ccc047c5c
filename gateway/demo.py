"""``gridedge demo``: the whole data path on one machine — devices -> twin -> envelope -> dispatch and uplinks.

Built-in defaults only (nothing outside the package is read): simulated SunSpec devices on loopback (three PV
inverters, a battery and the feeder's head meter), the IEEE European LV feeder bundled with pandapower (built once,
handed to the daemon as a feeder file in the demo's temporary directory) with the inverters at its far end on one
phase (where export is voltage-limited) and the battery behind the next far-end customer's meter (on the feeder, not
an envelope holder of the twin), the devices put on that feeder by a power flow every second
(:mod:`gateway._demogrid`: each device's voltage and the head meter's flow and voltage come from it, the loads about
half their nominal; ``--log-level debug`` logs its truth beside each cycle's estimate), a development PKI in the
temporary directory, a local mosquitto on a free loopback port when ``/usr/sbin/mosquitto`` exists (else the demo
says so and runs without MQTT), an in-process OpenADR VTN, and a head-end that verifies every signed message and
signs commands. It prints the telemetry the head-end verified, each envelope with its certificate, the head-end's
commands and what dispatch made of them (clamped to the envelope, and which constraint bound), a tampered command
being refused, and the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import structlog

from gateway._demogrid import DemoGrid, Placement
from gateway.config import Config, build_config
from gateway.daemon import Gateway, build, device_states, run
from gateway.devices import Reading
from gateway.pki import Identity, fingerprint, init_dev_pki, load_certificate
from gateway.segment import Segment, open_feeder
from gateway.sim import DeviceSpec, PhysicsSettings, SimulatedDevice, make_devices, serve_fleet
from gateway.twin import Feeder, TwinError, dump_feeder
from gateway.types import Authority, Envelope
from gateway.uplink import EnvelopeMessage, EventMessage, TelemetryMessage
from gateway.uplink._devbroker import dev_broker, find_mosquitto
from gateway.uplink._devheadend import DevHeadEnd
from gateway.uplink._devvtn import DevVtn, ReportValue, openadr_fingerprint

log = structlog.get_logger("gateway.demo")

SITE, GATEWAY = "demo-site", "demo-gw"
FEEDER = "builtin:ieee-european-lv"
#: Far-end customers of the European LV feeder on phase b: the inverters connect here, in this order, then the
#: batteries (on the feeder for the demo's power flow only).
FAR_END_BUSES = ("899", "886", "898", "906", "835", "780")
DER_PHASE = "b"
SOURCE_V_PU = 1.025
#: The simulated devices' nominal phase voltage: the bundled feeder's LV side is 416 V line to line.
V_NOM = 240.0
TWIN_INTERVAL_S = 5.0
GRID_INTERVAL_S = 1.0  # the demo grid's power flow
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
        self._point: tuple[str, str | None] | None = None  # the operating point's mode and fallback, last said

    def say(self, who: str, text: str) -> None:
        print(f"{time.monotonic() - self.t0:6.1f}s  {who:<9} {text}", file=self.out, flush=True)

    def envelope(self, env: Envelope, elapsed_s: float, segment: Segment) -> None:
        binding = segment.last_binding
        point = segment.last_operating_point
        if point is not None and (point.mode, point.reason) != self._point:
            self._point = (point.mode, point.reason)
            why = f" (fallback: {point.reason})" if point.reason else ""
            self.say("twin", f"operating point: {point.mode}, made in {point.seconds * 1e3:.0f} ms{why}")
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


def _device_ids(served: list[Any]) -> list[str]:
    """Each served device's id in the demo's config (``inverter-1``, ``battery-1``, ``meter-1``, ...), in order."""
    counts: dict[str, int] = {}
    ids = []
    for s in served:
        counts[s.kind] = counts.get(s.kind, 0) + 1
        ids.append(f"{s.kind}-{counts[s.kind]}")
    return ids


def _placements(config: Config) -> list[Placement]:
    """Where the demo grid puts the devices: each envelope holder where ``[twin]`` has it, then each battery at the
    next far-end bus (while there is one; a device without a place keeps its own voltage model)."""
    if config.twin is None:
        return []
    placed = [Placement(d.device, d.bus, d.phase) for d in config.twin.ders]
    batteries = [d.id for d in config.devices if d.role == "battery"]
    free = FAR_END_BUSES[len(placed):]
    return placed + [Placement(b, bus, DER_PHASE) for b, bus in zip(batteries, free, strict=False)]


def _config(served: list[Any], tmp: Path, pki: Mapping[str, Identity], *, broker: Any, vtn: DevVtn,
            feeder: str = FEEDER) -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    customer: dict[str, dict[str, float]] = {}
    twin_ders: list[dict[str, str]] = []
    for s, device_id in zip(served, _device_ids(served), strict=True):
        if s.kind == "meter":  # the head meter of the feeder segment: what the state estimate starts from
            devices.append({"id": device_id, "host": s.endpoint.host, "port": s.endpoint.port,
                            "unit": s.endpoint.unit, "role": "meter", "poll_interval_s": 1.0})
            continue
        role = "battery" if s.kind == "battery" else "inverter"
        devices.append({"id": device_id, "host": s.endpoint.host, "port": s.endpoint.port, "unit": s.endpoint.unit,
                        "role": role, "rated_w": 5000.0, "poll_interval_s": 1.0})
        customer[device_id] = {"export_w": 5000.0, "import_w": 0.0} if role == "inverter" else {
            "export_w": 3000.0, "import_w": 3000.0}
        if role == "inverter" and len(twin_ders) < len(FAR_END_BUSES):
            twin_ders.append({"device": device_id, "bus": FAR_END_BUSES[len(twin_ders)], "phase": DER_PHASE})
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
        config["twin"] = {"feeder": feeder, "interval_s": TWIN_INTERVAL_S, "validity_s": 6 * TWIN_INTERVAL_S,
                          "policy": "equal", "source_v_pu": SOURCE_V_PU, "load_bound": [0.3, 1.1], "ders": twin_ders}
    if broker is not None:
        config["uplink"]["mqtt"] = {"host": broker.host, "port": broker.port, "ca": str(pki["gateway"].ca),
                                    "cert": str(pki["gateway"].cert), "key": str(pki["gateway"].key)}
        config["uplink"]["headends"] = [{"cert": str(pki["headend"].cert), "authority": "grid-operator",
                                         "issuer": HEADEND}]
    return config


def _bundled_feeder(path: Path) -> Feeder:
    """The demo's feeder (pandapower builds it: slow), also written to ``path`` as a gridedge feeder file for the
    daemon: the twin and the demo grid then stand on the very same feeder, built once."""
    feeder = open_feeder(FEEDER)
    dump_feeder(feeder, path)
    return feeder


async def _grid(config: Config, served: list[Any], devices: list[tuple[str, SimulatedDevice]],
                feeder: Feeder) -> DemoGrid | None:
    """The demo grid over the devices as ``config`` names them (None without a twin), built off the event loop and
    stepped once, so that the gateway's first readings already come from its power flow."""
    if config.twin is None:
        return None
    by_id = {device_id: device for device_id, (_, device) in zip(_device_ids(served), devices, strict=True)}
    meter = next((d.id for d in config.devices if d.role == "meter"), None)
    source = config.twin.source_v_pu if config.twin.source_v_pu is not None else feeder.source.v_pu
    grid = await asyncio.to_thread(DemoGrid, feeder, by_id, _placements(config), meter=meter, source_v_pu=source)
    await grid.step()
    return grid


async def _estimate_vs_truth(segment: Segment, gw: Gateway, grid: DemoGrid) -> None:
    """Debug: the operating point the segment estimates from the fleet's state now, beside the demo grid's last step.

    The estimate's side is the flow at its loads and source voltage with the twin's DERs at their true outputs; a
    device the twin does not hold (the battery) is behind a customer's meter to it, so its output is in the estimated
    loads, and the true ``load_p_w`` is shown net of it. ``der_v_error_pu``: the largest error at the twin's DERs.
    """
    truth = grid.last
    if truth is None:
        return
    point = await asyncio.to_thread(segment.starting_point, device_states(gw.fleet.snapshot()))
    if point is None or point.load_p_w is None or point.load_q_var is None or point.source_v_pu is None:
        log.debug("estimate_vs_truth", operating_point=point and point.used.mode,
                  reason="no estimated loads this cycle")
        return
    held = np.array([p.device in {d.device for d in segment.twin.ders} for p in grid.placements], dtype=bool)
    try:
        est = await asyncio.to_thread(grid.flow, truth.der_p_w * held, truth.der_q_var * held, point.load_p_w,
                                      point.load_q_var, point.source_v_pu)
    except (TwinError, ValueError) as exc:
        log.debug("estimate_vs_truth", operating_point=point.used.mode, error=str(exc))
        return
    net_load = float(truth.load_p_w.sum() - truth.der_p_w[~held].sum())
    log.debug("estimate_vs_truth", operating_point=point.used.mode,
              head_p_w=[round(truth.head_p_w), round(est.head_p_w)],
              head_q_var=[round(truth.head_q_var), round(est.head_q_var)],
              head_v_pu=[round(truth.head_v_pu, 5), round(est.head_v_pu, 5)],
              load_p_w=[round(net_load), round(float(est.load_p_w.sum()))],
              source_v_pu=[round(truth.source_v_pu, 5), round(est.source_v_pu, 5)],
              der_v_error_pu=round(float(abs(est.der_v_pu - truth.der_v_pu)[held].max(initial=0.0)), 5))


async def demo(inverters: int = 3, batteries: int = 1, duration_s: float | None = None,
               out: TextIO = sys.stdout) -> None:
    specs = [DeviceSpec("inverter", inverters)] if inverters else []
    specs += [DeviceSpec("battery", batteries)] if batteries else []
    specs += [DeviceSpec("meter", 1)]  # the head meter at the feeder's LV busbar
    printer = Printer(out)
    with tempfile.TemporaryDirectory(prefix="gridedge-demo-") as tmp_name:
        tmp = Path(tmp_name)
        # the feeder (the twin's and the demo grid's), built while the PKI, the devices, the broker and the VTN start
        feeder_file = tmp / "feeder.json"
        loading = asyncio.ensure_future(asyncio.to_thread(_bundled_feeder, feeder_file)) if inverters else None
        pki = init_dev_pki(tmp / "pki")
        devices = make_devices(specs, physics=PhysicsSettings(v_nom=V_NOM))
        async with serve_fleet(devices) as served, AsyncExitStack() as stack:
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
            config = build_config(_config(served, tmp, pki, broker=broker, vtn=vtn, feeder=str(feeder_file)), "demo")
            grid = await _grid(config, served, devices, await loading) if loading is not None else None
            if config.twin is not None:
                printer.say("demo", f"twin: {FEEDER}, " + ", ".join(
                    f"{d.device} at bus {d.bus} phase {d.phase}" for d in config.twin.ders)
                    + f"; a certified envelope every {TWIN_INTERVAL_S:g} s")
            if grid is not None and config.twin is not None:
                twin_ders = {d.device for d in config.twin.ders}
                placed = "".join(f", {p.device} at bus {p.bus} phase {p.phase}" for p in grid.placements
                                 if p.device not in twin_ders)
                printer.say("demo", f"grid: a power flow of {FEEDER} every {GRID_INTERVAL_S:g} s gives the devices "
                                    f"their voltages and the head meter its flow (loads ~{grid.profile.mean:g}x "
                                    f"nominal, source {grid.source_v_pu:g} pu{placed})")
            gw = build(config)
            debug = log.is_enabled_for(logging.DEBUG)
            async with asyncio.TaskGroup() as tg:
                helpers = [tg.create_task(_tail_audit(Path(config.dispatch.audit_log), printer))] \
                    if config.dispatch is not None else []
                if grid is not None:
                    helpers.append(tg.create_task(grid.run(GRID_INTERVAL_S)))
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

                def on_envelope(env: Envelope, elapsed_s: float, segment: Segment) -> None:
                    printer.envelope(env, elapsed_s, segment)
                    if debug and grid is not None:
                        helpers.append(tg.create_task(_estimate_vs_truth(segment, gw, grid)))

                try:
                    await run(config, duration_s=duration_s, gateway=gw, on_envelope=on_envelope,
                              on_reading=on_reading)
                finally:
                    await asyncio.sleep(0.5)  # the last audit lines
                    for task in helpers:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
