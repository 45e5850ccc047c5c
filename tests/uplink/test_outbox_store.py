"""The outbox's store process (SQLite in a process of its own): it ends with the outbox, survives a Ctrl-C or a
service stop sent to the whole group, is started again if it dies without losing what was accepted, and while the
uplink keeps up, messages go to the broker from memory, never read back from disk."""

from __future__ import annotations

import asyncio
import fcntl
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
from gateway.uplink import _outbox, _outbox_store
from gateway.uplink._mqtt import MqttUplink
from gateway.uplink._outbox import MessageKind, Outbox
from gateway.uplink._outbox_store import KINDS, frame
from tests.uplink._broker import Broker
from tests.uplink._headend import HeadEnd
from tests.uplink._waits import store_pids, until
from tests.uplink.conftest import settings_for
from tests.uplink.test_outbox import stored

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


async def test_a_store_killed_while_the_backlog_replays_loses_nothing_and_stops_nothing(
        mosquitto: Broker, headend: Callable[..., HeadEnd], tmp_path: Path) -> None:
    """Small pages, so that the sender is reading the disk when the store is killed, again and again."""
    path = tmp_path / "outbox.sqlite"
    payloads = [b"old-%05d" % i for i in range(3000)]
    mosquitto.stop()
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as outbox:
        await asyncio.gather(*(outbox.put(T, p) for p in payloads))
    mosquitto.start()
    he = headend()
    await he.wait_subscribed()
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink, page_rows=20) as outbox:
        await uplink.wait_connected(10)
        kills = 0
        while outbox.stats.stored_rows and kills < 10:
            await asyncio.sleep(0.03)
            for pid in store_pids(path):
                os.kill(pid, signal.SIGKILL)
                kills += 1
        assert kills >= 3
        await outbox.wait_empty(60)
    await he.wait_until(lambda: set(payloads) <= set(arrived(he)), what="every message of the backlog")
    firsts = list(dict.fromkeys(arrived(he)))  # first copies, in arrival order (resends may repeat some)
    assert firsts == payloads


async def test_durable_never_says_stored_of_a_message_that_failed(
        mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed transactions (a store that cannot come back: its directory moved away) alternating with good ones:
    once the failure that held a message is no longer remembered, durable() says it cannot tell, never 'stored'."""
    monkeypatch.setattr(_outbox, "_FAILURES_KEPT", 2)
    home = tmp_path / "state"
    home.mkdir()
    path = home / "outbox.sqlite"
    mosquitto.stop()
    failed: list[int] = []
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as outbox:
        for episode in range(4):
            await outbox.put(T, b"good-%d" % episode)
            for pid in store_pids(path):
                os.kill(pid, signal.SIGKILL)
            home.rename(tmp_path / "away")
            row_id = outbox.put_nowait(T, b"lost-%d" % episode)
            with pytest.raises(UplinkUnavailable):
                await outbox.durable(row_id)
            failed.append(row_id)
            (tmp_path / "away").rename(home)
        await outbox.put(T, b"good-again")  # the store came back: the outbox goes on
        for row_id in failed:
            with pytest.raises(UplinkUnavailable):
                await outbox.durable(row_id)
    assert [p for _k, p in stored(path)] == [b"good-0", b"good-1", b"good-2", b"good-3", b"good-again"]


async def test_a_restart_that_finds_the_file_taken_fails_its_puts_and_the_outbox_goes_on(
        mosquitto: Broker, tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    mosquitto.stop()
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as outbox:
        await outbox.put(T, b"first")
        for pid in store_pids(path):
            os.kill(pid, signal.SIGKILL)
        taker = os.open(path, os.O_RDWR)
        try:
            await until(lambda: not store_pids(path), "the killed store is gone")
            await asyncio.sleep(0.1)  # and the outbox has seen its pipes close: the next request starts a new one
            fcntl.flock(taker, fcntl.LOCK_EX)  # another process has the file now
            with pytest.raises(UplinkUnavailable):
                await outbox.put(T, b"refused")
        finally:
            os.close(taker)
        async with asyncio.timeout(20):  # a writer that died on the refusal would leave this waiting for ever
            await outbox.put(T, b"then")
    assert [p for _k, p in stored(path)] == [b"first", b"then"]


def test_the_store_exits_quietly_when_its_parent_is_gone_before_the_answer(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-I", "-S", _outbox_store.__file__, str(tmp_path / "o.sqlite"),
                             "FULL"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdout.close()  # nobody reads the answer
    proc.stdin.write(frame(("open",)))
    proc.stdin.close()
    assert proc.wait(5) == 0
    assert proc.stderr is not None
    assert proc.stderr.read() == b""  # no traceback in the daemon's journal


async def test_an_outbox_opens_once(mosquitto: Broker, tmp_path: Path) -> None:
    async with MqttUplink(settings_for(mosquitto)) as uplink:
        outbox = Outbox(tmp_path / "outbox.sqlite", uplink)
        await outbox.open()
        await outbox.close()
        with pytest.raises(RuntimeError, match="make a new one"):
            await outbox.open()
