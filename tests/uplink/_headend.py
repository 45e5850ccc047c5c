"""A head-end for the tests: a plain paho client (its own network thread) with the head-end's certificate that
subscribes to everything under ``gridedge/#`` and records what arrives, and can publish commands."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.pki import Identity


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    user_properties: tuple[tuple[str, str], ...]

    @property
    def historical(self) -> bool:
        return ("historical", "1") in self.user_properties


def tls_context(identity: Identity | None, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=ca)
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


class HeadEnd:
    """Subscribes to ``topic_filter`` at QoS 1 (again after every reconnect) and keeps every message in order."""

    def __init__(self, host: str, port: int, identity: Identity, *, topic_filter: str = "gridedge/#",
                 client_id: str = "headend") -> None:
        self.messages: list[Received] = []
        self.subscriptions = 0  # SUBACKs received: one per (re)connect
        self.refused: list[int] = []  # PUBACK reason codes >= 0x80 for our own publishes
        self.acks: dict[int, int] = {}
        self._lock = threading.Lock()
        self._filter = topic_filter
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.tls_set_context(tls_context(identity, str(identity.ca)))
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        client.subscribe(self._filter, qos=1)

    def _on_subscribe(self, _c: object, _u: object, _mid: int, codes: list[object], _p: object) -> None:
        with self._lock:
            self.subscriptions += 1

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        props = tuple(getattr(msg.properties, "UserProperty", []) or [])
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), props))

    def _on_publish(self, _c: object, _u: object, mid: int, rc: paho.ReasonCode, _p: object) -> None:
        with self._lock:
            self.acks[mid] = rc.value

    def snapshot(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.client.publish(topic, payload, qos=1)
        return info.mid

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"head-end: timed out after {timeout_s} s waiting for {what or predicate}")
            await asyncio.sleep(0.01)

    async def wait_subscribed(self, count: int = 1, timeout_s: float = 10.0) -> None:
        await self.wait_until(lambda: self.subscriptions >= count, timeout_s, f"subscription #{count}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
