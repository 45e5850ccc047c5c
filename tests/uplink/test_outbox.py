"""The durable outbox with our MQTT uplink and a real mosquitto: stored before sent, deleted on PUBACK, replayed in
order as historical, bounded with the stated drop policy."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.errors import ConfigError
from gateway.uplink._mqtt import MqttUplink
from gateway.uplink._outbox import DROP_ORDER, MessageKind, Outbox
from tests.uplink._broker import Broker
from tests.uplink._headend import HeadEnd
from tests.uplink.conftest import settings_for

T, E, V = MessageKind.TELEMETRY, MessageKind.EVENTS, MessageKind.ENVELOPE


def stored(path: Path) -> list[tuple[str, bytes]]:
    """What the outbox file holds, read as another process would."""
    with sqlite3.connect(path) as db:
        return [(kind, bytes(payload)) for kind, payload in db.execute("SELECT kind, payload FROM outbox ORDER BY id")]


def arrived(he: HeadEnd, broker: Broker) -> list[bytes]:
    return [m.payload for m in he.snapshot() if not m.topic.endswith("/status")]


async def test_a_message_is_on_disk_when_put_returns_even_with_no_broker(mosquitto: Broker, tmp_path: Path) -> None:
    mosquitto.stop()
    path = tmp_path / "outbox.sqlite"
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as outbox:
        first = await outbox.put(T, b"reading-1")
        second = await outbox.put("envelope", b"limits-1")
        assert second > first
        assert stored(path) == [("telemetry", b"reading-1"), ("envelope", b"limits-1")]  # while still open
        assert outbox.stats.stored_rows == 2
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_acknowledged_messages_are_deleted_and_arrive_in_order_live(
        mosquitto: Broker, headend: Callable[..., HeadEnd], tmp_path: Path) -> None:
    he = headend()
    await he.wait_subscribed()
    path = tmp_path / "outbox.sqlite"
    payloads = [b"m-%04d" % i for i in range(500)]
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as outbox:
        await uplink.wait_connected(10)
        await asyncio.gather(*(outbox.put(T if i % 10 else V, p) for i, p in enumerate(payloads)))
        await outbox.wait_empty(20)
        assert outbox.stats.acked == 500
        assert stored(path) == []
    await he.wait_until(lambda: len(arrived(he, mosquitto)) == 500, what="500 messages")
    assert arrived(he, mosquitto) == payloads
    assert not any(m.historical for m in he.snapshot())
    assert {m.topic.rsplit("/", 1)[1] for m in he.snapshot() if m.payload in payloads} == {"telemetry", "envelope"}


async def test_after_a_restart_what_was_left_is_replayed_in_order_as_historical_then_live_again(
        mosquitto: Broker, headend: Callable[..., HeadEnd], tmp_path: Path) -> None:
    """Small memory queue and pages, and new messages put while the backlog replays: the hand-over from reading
    the disk to sending from memory keeps order and loses nothing."""
    path = tmp_path / "outbox.sqlite"
    mosquitto.stop()
    async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink) as outbox:
        await asyncio.gather(*(outbox.put(T, b"old-%04d" % i) for i in range(300)))
    mosquitto.start()
    he = headend()
    await he.wait_subscribed()
    async with MqttUplink(settings_for(mosquitto)) as uplink, \
            Outbox(path, uplink, memory_rows=16, page_rows=7, batch_rows=5) as outbox:
        assert outbox.stats.stored_rows == 300
        await uplink.wait_connected(10)
        for i in range(200):  # while the backlog replays
            await outbox.put(T, b"new-%04d" % i)
            if i % 20 == 0:
                await asyncio.sleep(0.005)
        await outbox.wait_empty(30)
        assert outbox.stats.sent_historical == 300
    expected = [b"old-%04d" % i for i in range(300)] + [b"new-%04d" % i for i in range(200)]
    await he.wait_until(lambda: len(arrived(he, mosquitto)) >= 500, what="500 messages")
    assert arrived(he, mosquitto) == expected
    historical = {m.payload: m.historical for m in he.snapshot() if not m.topic.endswith("/status")}
    assert all(historical[p] for p in expected[:300])
    assert not any(historical[p] for p in expected[300:])


# The drop policy, table-driven: what is put (in order) under the bounds, and what must remain afterwards.
DROP_CASES = {
    "oldest telemetry goes first": ({"max_rows": 5}, [T, E, T, V, T, T], [E, T, V, T, T], {"telemetry": 1}),
    "telemetry goes before events even when it is the newest": ({"max_rows": 3}, [V, E, E, T], [V, E, E],
                                                                {"telemetry": 1}),
    "then the oldest events": ({"max_rows": 3}, [E, V, E, V], [V, E, V], {"events": 1}),
    "envelopes only when nothing else is left, oldest first": ({"max_rows": 2}, [V, V, E, V], [V, V],
                                                               {"events": 1, "envelope": 1}),
    "never the newest envelope": ({"max_rows": 1}, [V, E, V], [V], {"events": 1, "envelope": 1}),
    "a byte bound works the same way": ({"max_bytes": 3 * 8}, [T, T, V, T, T], [V, T, T], {"telemetry": 2}),
}


@pytest.mark.parametrize("case", list(DROP_CASES), ids=list(DROP_CASES))
async def test_drop_policy(mosquitto: Broker, tmp_path: Path, case: str) -> None:
    bounds, puts, remaining, dropped = DROP_CASES[case]
    mosquitto.stop()  # nothing is sent: the outbox only fills
    path = tmp_path / "outbox.sqlite"
    payloads = [f"{kind.value[0]}-{i:05d}".encode() for i, kind in enumerate(puts)]  # 7-8 bytes each
    with capture_logs() as logs:
        async with MqttUplink(settings_for(mosquitto)) as uplink, Outbox(path, uplink, **bounds) as outbox:
            for kind, payload in zip(puts, payloads, strict=True):
                await outbox.put(kind, payload)
            counted = {k: n for k, n in outbox.stats.dropped.items() if n}
    kept = stored(path)
    assert [kind for kind, _ in kept] == [k.value for k in remaining]
    # Within a kind the oldest went: what is kept of each kind is its newest.
    for kind in MessageKind:
        mine = [p for k, p in zip(puts, payloads, strict=True) if k is kind]
        kept_of_kind = [p for k, p in kept if k == kind.value]
        assert kept_of_kind == mine[len(mine) - len(kept_of_kind):]
    assert counted == dropped
    lines = [e for e in logs if e["event"] == "outbox full: dropped the oldest messages"]
    assert lines, "a drop must be logged"
    assert sum(sum(e["dropped"].values()) for e in lines) == sum(dropped.values())


def test_the_drop_order_is_the_documented_one() -> None:
    assert DROP_ORDER == (T, E, V)


async def test_what_can_never_fit_or_is_not_an_outbox_message_is_refused(mosquitto: Broker, tmp_path: Path) -> None:
    async with MqttUplink(settings_for(mosquitto)) as uplink, \
            Outbox(tmp_path / "outbox.sqlite", uplink, max_bytes=100) as outbox:
        with pytest.raises(ValueError, match="max_bytes=100"):
            outbox.put_nowait(T, b"x" * 101)
        with pytest.raises(ValueError, match="status"):
            outbox.put_nowait("status", b"online")
        with pytest.raises(TypeError, match="bytes"):
            outbox.put_nowait(T, "text")  # type: ignore[arg-type]


async def test_a_message_the_broker_refuses_is_deleted_and_counted(mosquitto: Broker, tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    async with MqttUplink(settings_for(mosquitto, site="not-mine")) as uplink, Outbox(path, uplink) as outbox:
        await outbox.put(T, b"refused by the ACL")
        await outbox.wait_empty(10)
        assert (outbox.stats.refused, outbox.stats.acked) == (1, 0)
    assert stored(path) == []


async def test_a_file_that_is_not_an_outbox_is_a_config_error(mosquitto: Broker, tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not an SQLite database, it only has the name of one" * 20)
    async with MqttUplink(settings_for(mosquitto)) as uplink:
        with pytest.raises(ConfigError, match=str(path)):
            await Outbox(path, uplink).open()
