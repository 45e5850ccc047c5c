"""Outages against a real broker and a real publisher process (our uplink + outbox), killed with SIGKILL.

What must hold: every message the outbox accepted arrives, in order; a message that arrives twice is byte-identical
(same id and seq, same signature), so a head-end drops it; what is replayed after an outage or a crash carries the
MQTT v5 user property ``historical=1``; what is published live does not.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.uplink._broker import Broker
from tests.uplink._headend import HeadEnd, Received
from tests.uplink._relay import Relay
from tests.uplink._signed import verifier_for
from tests.uplink._waits import store_pids, until

REPO = Path(__file__).resolve().parents[2]
LIVE_SEQ = 1_000_000  # the second process numbers its new messages from here


class Publisher:
    """``python -m tests.uplink._publisher`` as a child process; what it reports is collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.accepted: list[tuple[int, str, str]] = []  # (seq, id, kind) in put order
        self.connects = 0
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, broker: Broker, outbox: Path, log_dir: Path, *args: str, port: int | None = None,
                    ) -> Publisher:
        stderr = log_dir / f"publisher-{time.monotonic_ns()}.log"
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.uplink._publisher", "--broker-dir", str(broker.directory),
                "--port", str(port or broker.port), "--outbox", str(outbox), *args,
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL)
        return cls(proc, stderr)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode():
            self.lines.append(line.strip())
            if line.startswith("accepted "):
                _, seq, msg_id, kind = line.split()
                self.accepted.append((int(seq), msg_id, kind))
            elif line.strip() == "connected":
                self.connects += 1

    async def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"publisher: {what} did not happen (exit {self.proc.returncode}); its log:\n"
                                     f"{self.stderr.read_text()[-3000:]}")
            await asyncio.sleep(0.01)

    async def kill(self) -> None:
        """SIGKILL, then read what it had written before dying."""
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader

    async def exit_code(self, timeout_s: float = 60.0) -> int:
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"publisher did not finish; its log:\n{self.stderr.read_text()[-3000:]}") from None
        await self._reader
        return code


def data_messages(headend: HeadEnd, broker: Broker) -> list[Received]:
    topics = {f"{broker.prefix}/telemetry", f"{broker.prefix}/envelope"}
    return [m for m in headend.snapshot() if m.topic in topics]


def analyse(received: list[Received], broker: Broker
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[int]]]:
    """Verify every message as a head-end would. Returns every payload (by position), the first copies in arrival
    order, and per id the positions of its copies."""
    verifier = verifier_for(broker.pki["gateway"])
    payloads = [verifier.verify(message.payload) for message in received]  # raises unless the signature verifies
    firsts: list[dict[str, Any]] = []
    copies: dict[str, list[int]] = {}
    for position, (message, payload) in enumerate(zip(received, payloads, strict=True)):
        assert message.topic.endswith("/" + payload["type"]), (message.topic, payload["type"])
        if payload["id"] not in copies:
            firsts.append(payload)
            copies[payload["id"]] = []
        copies[payload["id"]].append(position)
    return payloads, firsts, copies


async def test_broker_outage_then_publisher_killed_every_accepted_message_arrives_in_order(
        mosquitto: Broker, headend: Callable[..., HeadEnd], tmp_path: Path) -> None:
    he = headend()
    await he.wait_subscribed(1)
    outbox = tmp_path / "outbox.sqlite"
    first = await Publisher.start(mosquitto, outbox, tmp_path, "--count", "100000", "--every-s", "0.002",
                                  "--envelope-every", "20", "--wait-connected")
    await first.wait(lambda: len(first.accepted) >= 300, "300 messages accepted")
    await he.wait_until(lambda: len(data_messages(he, mosquitto)) >= 200, what="200 live messages")

    mosquitto.stop()
    await he.wait_until(lambda: not he.client.is_connected(), what="the head-end noticing the outage")
    delivered_before_outage = len(data_messages(he, mosquitto))
    accepted_at_outage = len(first.accepted)
    await first.wait(lambda: len(first.accepted) >= accepted_at_outage + 300, "300 more accepted during the outage")
    await first.kill()

    mosquitto.start()
    await he.wait_subscribed(2)
    second = await Publisher.start(mosquitto, outbox, tmp_path, "--count", "50", "--first-seq", str(LIVE_SEQ),
                                   "--wait-connected", "--exit-when-empty")
    assert await second.exit_code() == 0, second.stderr.read_text()[-3000:]
    await _quiet(he, mosquitto)

    received = data_messages(he, mosquitto)
    payloads, firsts, copies = analyse(received, mosquitto)
    arrived = {p["id"] for p in firsts}
    accepted_ids = [msg_id for _seq, msg_id, _kind in first.accepted]
    missing = [seq for seq, msg_id, _kind in first.accepted if msg_id not in arrived]
    assert not missing, f"{len(missing)} accepted messages never arrived, e.g. seq {missing[:5]}"
    assert len(accepted_ids) >= accepted_at_outage + 300

    # In order: the first process's messages arrive (first copies) as 1, 2, 3, ... with no gap: what it stored is
    # a prefix of what it put, and everything stored arrives; then the second process's new ones, in order.
    old = [p["seq"] for p in firsts if p["seq"] < LIVE_SEQ]
    new = [p["seq"] for p in firsts if p["seq"] >= LIVE_SEQ]
    assert old == list(range(1, len(old) + 1))
    assert len(old) >= len(first.accepted)
    assert new == list(range(LIVE_SEQ, LIVE_SEQ + 50))
    assert [p["seq"] for p in firsts] == old + new
    assert {p["type"] for p in firsts} == {"telemetry", "envelope"}

    # Duplicates are byte-identical (so they carry the same id and seq); a head-end keeps the first.
    for positions in copies.values():
        assert len({received[i].payload for i in positions}) == 1

    # Live before the outage; everything the first process left behind is replayed as historical; the second
    # process's own messages, put once it was connected, are live again.
    assert not any(m.historical for m in received[:delivered_before_outage])
    after = list(zip(received, payloads, strict=True))[delivered_before_outage:]
    assert after, "nothing arrived after the outage"
    for message, payload in after:
        assert message.historical == (payload["seq"] < LIVE_SEQ), (payload["seq"], message.user_properties)


async def test_crash_with_deliveries_unacknowledged_resends_the_same_bytes_as_historical(
        mosquitto: Broker, headend: Callable[..., HeadEnd], tmp_path: Path) -> None:
    """The publisher's messages reach the broker and the head-end, but its PUBACKs are held back (a relay), then
    it is killed: the next run must send every one of them again, byte-identical and marked historical."""
    he = headend()
    await he.wait_subscribed(1)
    relay = Relay(mosquitto.host, mosquitto.port)
    await relay.start()
    outbox = tmp_path / "outbox.sqlite"
    first = await Publisher.start(mosquitto, outbox, tmp_path, "--count", "1000000", "--wait-connected",
                                  port=relay.port)
    try:
        await first.wait(lambda: len(first.accepted) >= 500, "500 messages accepted")
        relay.hold()
        at_hold = len(data_messages(he, mosquitto))
        await he.wait_until(lambda: len(data_messages(he, mosquitto)) >= at_hold + 100,
                            what="100 deliveries the publisher will never hear acknowledged")
        await _quiet(he, mosquitto)
        assert len(store_pids(outbox)) == 1
        await first.kill()
        # Its store process ends too (its stdin closed), once its last transaction is done: no orphan holds the file.
        await until(lambda: not store_pids(outbox), "the killed publisher's store process exits")
    finally:
        await relay.close()

    second = await Publisher.start(mosquitto, outbox, tmp_path, "--exit-when-empty")
    assert await second.exit_code() == 0, second.stderr.read_text()[-3000:]

    await _quiet(he, mosquitto)
    received = data_messages(he, mosquitto)
    _payloads, firsts, copies = analyse(received, mosquitto)
    seqs = [p["seq"] for p in firsts]
    assert seqs == list(range(1, len(seqs) + 1))
    assert {msg_id for _s, msg_id, _k in first.accepted} <= {p["id"] for p in firsts}
    duplicated = {msg_id: positions for msg_id, positions in copies.items() if len(positions) > 1}
    assert len(duplicated) >= 100, f"only {len(duplicated)} messages were sent twice"
    # The publisher stops at its window (max_inflight 256): what it sent and never heard acknowledged (so sends
    # again) is at most one window. (Counted here, not at the head-end at the hold: deliveries the broker had
    # acknowledged before the hold may still be on their way to the head-end then.)
    assert len(duplicated) <= 256, len(duplicated)
    for positions in duplicated.values():
        original, *again = (received[i] for i in positions)
        assert all(copy.payload == original.payload for copy in again)
        assert not original.historical
        assert all(copy.historical for copy in again)


async def _quiet(he: HeadEnd, broker: Broker, for_s: float = 0.5) -> None:
    """Until no new message has arrived for ``for_s``."""
    count, since = -1, time.monotonic()
    while time.monotonic() - since < for_s:
        now = len(data_messages(he, broker))
        if now != count:
            count, since = now, time.monotonic()
        await asyncio.sleep(0.05)
