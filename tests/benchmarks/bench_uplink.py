"""Uplink benchmark: our figures beside bare paho-mqtt with the same signing, measured in the same run.

Run: ``.venv/bin/python -m tests.benchmarks.bench_uplink [--quick] [--json PATH]``.

One real mosquitto 2.x on 127.0.0.1 (TLS 1.3 with client certificates, ACL, ``set_tcp_nodelay true``, persistence
off: ``tests/uplink/_broker.py``) serves every contender. Each message is a ~1 KB telemetry message with a fresh
``id``, ``seq`` and ``issuedAt``, signed ES256 by the project's :class:`~gateway.uplink.Signer` in the publishing
process as part of the measured work, and published at QoS 1 on ``gridedge/<site>/<gw>/telemetry``. A run ends
when the last PUBACK is in (for ours: when the outbox has deleted the last message). Contenders take turns in each
round so machine noise falls on all alike; figures are medians over rounds.

Sections (a list, :data:`SECTIONS`: the OpenADR report round trip joins it there):

* signed QoS 1 messages per second over mTLS:
  - ours, ``MqttUplink`` + durable ``Outbox`` (SQLite WAL, ``synchronous=FULL``: each message fsynced before it is
    sent), the producer keeping up to 1,024 accepted-but-unconfirmed puts outstanding;
  - ours with ``synchronous=NORMAL`` (what FULL costs), and ``MqttUplink`` alone (what the outbox costs);
  - bare paho on the asyncio loop (paho's socket callbacks, the integration ours uses, no outbox, no wrapper);
  - bare paho with its own network thread (``loop_start()``, the usual way), the producer in the main thread.
  Both bare clients keep the same window (256 in flight) with paho's own inflight cap off. Target: ours (with the
  outbox, FULL) >= 6,000 msg/s and >= 90 % of the faster bare client. Beside each rate: the client's CPU per
  message (all its threads and the outbox's store process, signing included), which other load on the machine
  disturbs far less.
* outbox replay rate: messages stored during an outage (broker down), then the broker comes back; from the
  reconnect to the last deletion, beside ours publishing live in the same round.
* the window: ours with the outbox at ``max_inflight`` 16, 64, 256 (the default) and 1,024.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.logs import configure as configure_logging
from gateway.types import Measurement
from gateway.uplink import Signer, TelemetryMessage, new_id
from gateway.uplink._mqtt import MqttSettings, MqttUplink, client_tls_context
from gateway.uplink._outbox import MessageKind, Outbox
from tests.benchmarks import _bench_openadr
from tests.uplink._broker import Broker, find_mosquitto

WINDOW = 256
OUTSTANDING_PUTS = 1024
TARGET_RATE = 6000.0
TARGET_RATIO = 0.90
OURS = "ours: MqttUplink + Outbox (FULL)"
BARE = ("bare paho, asyncio socket callbacks", "bare paho, loop_start() thread")


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    messages: int  # per contender per round
    replay: int  # messages stored during the outage, per round
    reports: int  # OpenADR round trips (for the OpenADR section)


FULL = Settings(rounds=9, messages=20_000, replay=20_000, reports=50)
QUICK = Settings(rounds=3, messages=5_000, replay=5_000, reports=10)


# -- the signed messages, the same for every contender -------------------------------------------------------------


class Messages:
    """Signs telemetry messages like the daemon will: fresh id, seq and issuedAt each, ES256 over canonical JSON."""

    def __init__(self, signer: Signer, issuer: str) -> None:
        now = time.time()
        measurements = [Measurement(device_id=f"pv-{i}", at=now, role="inverter", w=1234.5 + i, var=-12.0, v=230.4,
                                    hz=50.01, wh=1.5e6, w_max=5000.0, state=4) for i in range(3)]
        self.template = TelemetryMessage.from_measurements(measurements, issuer=issuer, seq=0,
                                                           issued_at=now).payload()
        self.signer = signer
        self.seq = 0

    def next(self) -> bytes:
        self.seq += 1
        payload = dict(self.template, id=new_id(), seq=self.seq, issuedAt=time.time())
        return self.signer.sign(payload)


@dataclass
class Bench:
    """What every section shares: the broker, the gateway's settings and signer, scratch space."""

    broker: Broker
    settings: MqttSettings
    signer: Signer
    scratch: Path
    config: Settings

    def messages(self) -> Messages:
        return Messages(self.signer, self.settings.gateway_id)

    def outbox_path(self) -> Path:
        return self.scratch / f"outbox-{time.monotonic_ns()}.sqlite"


# -- contenders ----------------------------------------------------------------------------------------------------


async def ours(bench: Bench, n: int, *, synchronous: Literal["FULL", "NORMAL"] = "FULL", outbox: bool = True,
               window: int = WINDOW) -> float:
    """Messages per second through MqttUplink (+ Outbox): sign, put (durable), send, PUBACK, delete."""
    msgs = bench.messages()
    async with MqttUplink(dataclasses.replace(bench.settings, max_inflight=window)) as uplink:
        await uplink.wait_connected(10)
        if not outbox:
            acked = 0
            done = asyncio.Event()

            def on_ack(_code: int) -> None:
                nonlocal acked
                acked += 1
                if acked == n:
                    done.set()

            start = time.perf_counter()
            for _ in range(n):
                if not uplink.room():
                    await uplink.wait_room()
                uplink.publish("telemetry", msgs.next(), on_ack=on_ack)
            await done.wait()
            return n / (time.perf_counter() - start)
        async with Outbox(bench.outbox_path(), uplink, synchronous=synchronous) as box:
            start = time.perf_counter()
            for i in range(n):
                row_id = box.put_nowait(MessageKind.TELEMETRY, msgs.next())
                if i % 64 == 63:  # let the loop run (as waiting for room does for the others), and keep at most
                    await asyncio.sleep(0)  # OUTSTANDING_PUTS accepted-but-not-yet-durable
                    await box.durable(row_id - OUTSTANDING_PUTS)
            await box.durable(row_id)
            await box.wait_empty(120)
            return n / (time.perf_counter() - start)


def _bare_client(bench: Bench, client_id: str) -> paho.Client:
    s = bench.settings
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(client_tls_context(s.ca, s.cert, s.key))
    client.max_inflight_messages_set(0)
    return client


async def bare_asyncio(bench: Bench, n: int) -> float:
    """paho on the asyncio loop through its socket callbacks, our window, no wrapper, no outbox."""
    loop = asyncio.get_running_loop()
    msgs = bench.messages()
    client = _bare_client(bench, "bare-asyncio")
    connected, done, room = asyncio.Event(), asyncio.Event(), asyncio.Event()
    counts = {"sent": 0, "acked": 0}

    def on_read() -> None:
        client.loop_read()
        sock = client.socket()
        while sock is not None and sock.pending():  # type: ignore[union-attr]
            client.loop_read()
            sock = client.socket()

    def on_publish(*_args: object) -> None:
        counts["acked"] += 1
        if counts["sent"] - counts["acked"] == WINDOW * 3 // 4:
            room.set()
        if counts["acked"] == n:
            done.set()

    client.on_connect = lambda *_args: connected.set()
    client.on_publish = on_publish
    await loop.run_in_executor(None, client.connect, bench.settings.host, bench.settings.port)
    sock = client.socket()
    assert sock is not None
    fd = sock.fileno()
    loop.add_reader(fd, on_read)
    client.on_socket_register_write = lambda *_a: loop.add_writer(fd, client.loop_write)
    client.on_socket_unregister_write = lambda *_a: loop.remove_writer(fd)
    client.on_socket_close = lambda *_a: (loop.remove_reader(fd), loop.remove_writer(fd))
    if client.want_write():
        loop.add_writer(fd, client.loop_write)
    await asyncio.wait_for(connected.wait(), 10)
    start = time.perf_counter()
    for _ in range(n):
        if counts["sent"] - counts["acked"] >= WINDOW:
            room.clear()
            await room.wait()
        client.publish(bench.settings.prefix + "/telemetry", msgs.next(), qos=1)
        counts["sent"] += 1
    await done.wait()
    rate = n / (time.perf_counter() - start)
    client.disconnect()
    await asyncio.sleep(0.05)
    loop.remove_reader(fd)
    loop.remove_writer(fd)
    return rate


def bare_threaded(bench: Bench, n: int) -> float:
    """paho with its own network thread (``loop_start``), the producer in this thread, the same window."""
    msgs = bench.messages()
    client = _bare_client(bench, "bare-thread")
    connected, done = threading.Event(), threading.Event()
    window = threading.Semaphore(WINDOW)
    acked = [0]

    def on_publish(*_args: object) -> None:
        window.release()
        acked[0] += 1
        if acked[0] == n:
            done.set()

    client.on_connect = lambda *_args: connected.set()
    client.on_publish = on_publish
    client.connect(bench.settings.host, bench.settings.port)
    client.loop_start()
    connected.wait(10)
    start = time.perf_counter()
    for _ in range(n):
        window.acquire()
        client.publish(bench.settings.prefix + "/telemetry", msgs.next(), qos=1)
    done.wait(120)
    rate = n / (time.perf_counter() - start)
    client.disconnect()
    client.loop_stop()
    return rate


async def replay(bench: Bench, n: int) -> float:
    """Store ``n`` signed messages with the broker down; bring it back; messages per second from the reconnect
    until the outbox has deleted the last one."""
    msgs = bench.messages()
    path = bench.outbox_path()
    bench.broker.stop()
    async with MqttUplink(bench.settings) as uplink, Outbox(path, uplink) as box:
        for _ in range(n):
            row_id = box.put_nowait(MessageKind.TELEMETRY, msgs.next())
        await box.durable(row_id)
    bench.broker.start()
    async with MqttUplink(bench.settings) as uplink, Outbox(path, uplink) as box:
        await uplink.wait_connected(30)
        start = time.perf_counter()
        await box.wait_empty(300)
        elapsed = time.perf_counter() - start
        assert box.stats.sent_historical >= n
    return n / elapsed


# -- sections ------------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def _publish_rounds(bench: Bench) -> dict[str, Any]:
    n = bench.config.messages
    contenders: dict[str, Callable[[], Any]] = {
        OURS: lambda: ours(bench, n),
        BARE[0]: lambda: bare_asyncio(bench, n),
        BARE[1]: lambda: asyncio.to_thread(bare_threaded, bench, n),
        "ours: MqttUplink + Outbox (NORMAL)": lambda: ours(bench, n, synchronous="NORMAL"),
        "ours: MqttUplink alone": lambda: ours(bench, n, outbox=False),
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(bench.config.rounds):
        for name, run in contenders.items():
            started = _client_cpu_s()
            rates[name].append(await run())
            cpu[name].append((_client_cpu_s() - started) / n * 1e6)
    return {"messages_per_round": n, "rounds": bench.config.rounds,
            "rates": {name: {"median": _median(v), "all": v} for name, v in rates.items()},
            "cpu_us_per_message": {name: _median(v) for name, v in cpu.items()}}


def _client_cpu_s() -> float:
    """CPU seconds of this process (every thread) and of its children that ended (the outbox's store process
    ends when the outbox closes, inside each run; the broker runs on through the publish section): what the
    client costs, whatever else runs on the machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure_publish(bench: Bench) -> dict[str, Any]:
    return asyncio.run(_publish_rounds(bench))


def render_publish(result: dict[str, Any]) -> str:
    rates = {name: r["median"] for name, r in result["rates"].items()}
    ours_rate = rates[OURS]
    bare_name = max(BARE, key=lambda name: rates[name])
    lines = [f"Signed QoS 1 messages/s over mTLS ({result['messages_per_round']:,} per run, median of "
             f"{result['rounds']} rounds):"]
    cpu = result["cpu_us_per_message"]
    lines += [f"  {name:<40} {rate:>9,.0f} msg/s   client CPU {cpu[name]:6.1f} us/msg" for name, rate in rates.items()]
    ratio = ours_rate / rates[bare_name]
    per_round = [o / b for o, b in zip(result["rates"][OURS]["all"], result["rates"][bare_name]["all"], strict=True)]
    verdict = "met" if ours_rate >= TARGET_RATE and ratio >= TARGET_RATIO else "NOT met"
    lines.append(f"  target: ours (outbox, FULL) >= {TARGET_RATE:,.0f} msg/s and >= {TARGET_RATIO:.0%} of the faster "
                 f"bare client ({bare_name}): {ours_rate:,.0f} msg/s, {ratio:.1%} of its median "
                 f"(median of per-round ratios {_median(per_round):.1%}) -> {verdict}")
    return "\n".join(lines)


async def _replay_rounds(bench: Bench) -> dict[str, Any]:
    replayed, live = [], []
    for _ in range(bench.config.rounds):
        replayed.append(await replay(bench, bench.config.replay))
        live.append(await ours(bench, bench.config.replay))
    return {"messages_per_round": bench.config.replay, "rounds": bench.config.rounds,
            "replay": {"median": _median(replayed), "all": replayed}, "live": {"median": _median(live), "all": live}}


def measure_replay(bench: Bench) -> dict[str, Any]:
    return asyncio.run(_replay_rounds(bench))


def render_replay(result: dict[str, Any]) -> str:
    return "\n".join([
        f"Outbox replay after an outage ({result['messages_per_round']:,} stored messages, median of "
        f"{result['rounds']} rounds):",
        f"  {'ours: replay (reconnect -> last deletion)':<40} {result['replay']['median']:>9,.0f} msg/s",
        f"  {'ours: live publishing, same round':<40} {result['live']['median']:>9,.0f} msg/s"])


WINDOWS = (16, 64, 256, 1024)


async def _window_rounds(bench: Bench) -> dict[str, Any]:
    n = bench.config.messages // 2
    rates: dict[int, list[float]] = {w: [] for w in WINDOWS}
    for _ in range(bench.config.rounds):
        for w in WINDOWS:
            rates[w].append(await ours(bench, n, window=w))
    return {"messages_per_round": n, "rounds": bench.config.rounds,
            "rates": {str(w): {"median": _median(v), "all": v} for w, v in rates.items()}}


def measure_window(bench: Bench) -> dict[str, Any]:
    return asyncio.run(_window_rounds(bench))


def render_window(result: dict[str, Any]) -> str:
    lines = [f"Window (max_inflight) sweep, ours with the outbox ({result['messages_per_round']:,} per run, median "
             f"of {result['rounds']} rounds; the default is {WINDOW}):"]
    lines += [f"  {'max_inflight ' + w:<40} {r['median']:>9,.0f} msg/s" for w, r in result["rates"].items()]
    return "\n".join(lines)


@dataclass(frozen=True)
class Section:
    name: str
    measure: Callable[[Bench], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]


#: Every figure this benchmark prints, in order.
SECTIONS: list[Section] = [
    Section("publish", measure_publish, render_publish),
    Section("replay", measure_replay, render_replay),
    Section("window", measure_window, render_window),
    Section("openadr", lambda b: _bench_openadr.measure_report_round_trip(b.config.reports), _bench_openadr.render),
]


def _environment() -> str:
    return (f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
            f"paho-mqtt {metadata.version('paho-mqtt')}, SQLite {__import__('sqlite3').sqlite_version}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--only", choices=[s.name for s in SECTIONS], action="append", help="run only these")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    configure_logging("warning", stream=sys.stderr)  # the figures, not the uplink's connect/stop lines
    binary = find_mosquitto()
    if binary is None:
        print("mosquitto is not installed (/usr/sbin/mosquitto): `make test` installs it", file=sys.stderr)
        return 2
    config = QUICK if args.quick else FULL
    results: dict[str, Any] = {"environment": _environment()}
    print(f"bench_uplink: {results['environment']}")
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as scratch:
        broker = Broker(binary, Path(scratch) / "broker")
        broker.start()
        try:
            gw = broker.pki["gateway"]
            settings = MqttSettings(host=broker.host, port=broker.port, ca=gw.ca, cert=gw.cert, key=gw.key,
                                    site=broker.site, gateway_id=broker.gateway_id, max_inflight=WINDOW,
                                    backoff_initial_s=0.05, backoff_max_s=0.5)
            bench = Bench(broker, settings, Signer.from_files(gw.cert, gw.key), Path(scratch), config)
            for section in SECTIONS:
                if args.only and section.name not in args.only:
                    continue
                results[section.name] = section.measure(bench)
                print(section.render(results[section.name]), flush=True)
        finally:
            broker.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
