"""The outbox's store process (SQLite in a process of its own): it ends with the outbox, survives a Ctrl-C or a
service stop sent to the whole group, is started again if it dies without losing what was accepted, and while the
uplink keeps up, messages go to the broker from memory, never read back from disk."""

from __future__ import annotations

import asyncio
import marshal
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.errors import ConfigError, UplinkUnavailable
from gateway.uplink import _outbox_store
from gateway.uplink._mqtt import MqttUplink
from gateway.uplink._outbox import MessageKind, Outbox
from gateway.uplink._outbox_store import KINDS, frame
from tests.uplink._broker import Broker
from tests.uplink._headend import HeadEnd
from tests.uplink._waits import store_pids
from tests.uplink.conftest import settings_for

T = MessageKind.TELEMETRY


def arrived(he: HeadEnd) -> list[bytes]:
    return [m.payload for m in he.snapshot() if not m.topic.endswith("/status")]


async def test_while_live_messages_are_sent_from_memory_not_read_back_from_disk(
        mosquitto: Broker, headend: Callable[..., HeadEnd], tmp_path: Path) -> None:
    """Puts pipelined from the start, so that transactions keep committing while the sender reads its first pages:
    everything arrives in order, and only what was committed before the sender caught up is read from the file.
    (It once never caught up: every message was stored, read back, then sent, at twice the disk work.)"""
    he = headend()
    await he.wait_subscribed()
    payloads = [b"live-%05d" % i for i in range(5000)]
    async with MqttUplink(settings_for(mosquitto)) as uplink:
        await uplink.wait_connected(10)
        async with Outbox(tmp_path / "outbox.sqlite", uplink, page_rows=256) as outbox:
            last = 0
            for i, payload in enumerate(payloads):
                last = outbox.put_nowait(T, payload)
                if i % 50 == 49:
                    await asyncio.sleep(0)
                    await outbox.durable(last - 500)
            await outbox.durable(last)
            await outbox.wait_empty(30)
            assert outbox.stats.acked == len(payloads)
            assert outbox.stats.paged < len(payloads) // 5, outbox.stats.paged
    await he.wait_until(lambda: len(arrived(he)) == len(payloads), what="every message")
    assert arrived(he) == payloads


async def test_the_store_process_ignores_a_group_wide_stop_signal_and_ends_with_the_outbox(
        mosquitto: Broker, tmp_path: Path) -> None:
    """Ctrl-C and systemd's stop reach every process of the group: the store must stay up for the daemon's orderly
    close (its last transaction), then end with it."""
    path = tmp_path / "outbox.sqlite"
    mosquitto.stop()
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as outbox:
        await outbox.put(T, b"before")
        (pid,) = store_pids(path)
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.2)
        await outbox.put(T, b"after")  # stored by the same process
        assert store_pids(path) == [pid]
        assert outbox.stats.stored_rows == 2
    assert store_pids(path) == []


async def test_a_store_process_that_dies_is_started_again_and_nothing_accepted_is_lost(
        mosquitto: Broker, headend: Callable[..., HeadEnd], tmp_path: Path) -> None:
    he = headend()
    await he.wait_subscribed()
    path = tmp_path / "outbox.sqlite"
    accepted: list[bytes] = []
    refused: list[bytes] = []

    async def put(payload: bytes) -> None:
        try:
            await outbox.put(T, payload)
        except UplinkUnavailable:
            refused.append(payload)
        else:
            accepted.append(payload)

    with capture_logs() as logs:
        async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as outbox:
            await uplink.wait_connected(10)
            for i in range(100):
                await put(b"first-%03d" % i)
            (pid,) = store_pids(path)
            os.kill(pid, signal.SIGKILL)
            await asyncio.gather(*(put(b"during-%03d" % i) for i in range(100)))  # some may meet the dead one
            for i in range(100):
                await put(b"then-%03d" % i)
            await outbox.wait_empty(30)
            (again,) = store_pids(path)
            assert again != pid
            assert outbox.stats.write_errors <= 1
    assert len(accepted) >= 200
    assert [p for p in accepted if p.startswith(b"first")] == [b"first-%03d" % i for i in range(100)]
    assert [p for p in accepted if p.startswith(b"then")] == [b"then-%03d" % i for i in range(100)]
    await he.wait_until(lambda: set(accepted) <= set(arrived(he)), what="every accepted message")
    got = arrived(he)
    assert [p for p in got if p in set(accepted)] == accepted  # in order, whatever was refused in between
    assert any(e["event"] == "outbox store process died; starting a new one" for e in logs)
    if refused:
        assert any(e["event"] == "outbox: messages not accepted" for e in logs)


def _store(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", "-S", _outbox_store.__file__, str(path), "FULL"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _ask(proc: subprocess.Popen[bytes], request: tuple[object, ...]) -> object:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(frame(request))
    proc.stdin.flush()
    size = int.from_bytes(proc.stdout.read(4), "little")
    return marshal.loads(proc.stdout.read(size))


def test_the_store_answers_a_request_it_cannot_serve_with_an_error_and_stays_up(tmp_path: Path) -> None:
    proc = _store(tmp_path / "outbox.sqlite")
    try:
        assert _ask(proc, ("open",)) == (0, (0, dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0)))
        code, kind, message = _ask(proc, ("frobnicate", 1))  # type: ignore[misc]
        assert (code, kind) == (1, "os")
        assert "unknown request" in message
        # a commit that breaks half-way (an unknown kind) rolls back whole: the row before it is not stored
        code, kind, message = _ask(proc, ("commit", [(1, "telemetry", b"a"), (2, "bogus", b"b")], [], [], [], 10,
                                          10_000))  # type: ignore[misc]
        assert (code, kind) == (1, "os")
        assert _ask(proc, ("page", 0, 10)) == (0, [])
        code, (dropped, rows, _bytes) = _ask(proc, ("commit", [(1, "telemetry", b"a")], [], [], [], 10,
                                                    10_000))  # type: ignore[misc]
        assert (code, dropped, rows["telemetry"]) == (0, [], 1)
        assert _ask(proc, ("close",)) == (0, None)
        assert proc.wait(5) == 0
    finally:
        proc.kill()


def test_the_store_exits_quietly_when_its_parent_dies_half_way_through_a_request(tmp_path: Path) -> None:
    proc = _store(tmp_path / "outbox.sqlite")
    assert proc.stdin is not None
    proc.stdin.write(frame(("open",))[:6])  # the parent dies while writing
    proc.stdin.close()
    assert proc.wait(5) == 0


async def test_one_outbox_per_file_a_second_is_a_config_error(mosquitto: Broker, tmp_path: Path) -> None:
    """Two gateways given the same state directory would hand out the same ids and send each other's messages."""
    path = tmp_path / "outbox.sqlite"
    mosquitto.stop()
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as first:
        await first.put(T, b"mine")
        with pytest.raises(ConfigError, match="in use by another process"):
            await Outbox(path, uplink).open()
        assert len(store_pids(path)) == 1  # the refused one did not stay
        await first.put(T, b"still mine")
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as second:  # free again
        assert second.stats.stored_rows == 2
