"""A development head-end for ``gridedge demo``: subscribes to ``gridedge/#`` over mutual TLS, verifies every
message against the gateway's certificate before reading it, and signs commands with its own key.

A plain paho client on its own network thread (the way a head-end written apart from the gateway would be); what
it receives is handed to the asyncio loop as :class:`Verified` items, or :class:`Unverified` ones naming why the
signature did not check out.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.errors import MessageError, SignatureError
from gateway.pki import Identity
from gateway.types import Authority, Command
from gateway.uplink._jws import Signer, Verifier
from gateway.uplink._messages import CommandMessage, Message, new_id, parse_message, sign_message
from gateway.uplink._sequence import Sequencer

Verified = tuple[str, Message]  # (topic suffix, the message)
Unverified = tuple[str, str]  # (topic suffix, why it did not verify)


class DevHeadEnd:
    """A head-end ``issuer`` with ``identity`` (its TLS and signing certificate) trusting ``gateway_cert``."""

    def __init__(self, host: str, port: int, identity: Identity, *, gateway_cert: Identity, issuer: str,
                 authority: Authority) -> None:
        self.issuer = issuer
        self.authority = authority
        self.signer = Signer.from_files(identity.cert, identity.key)
        self.verifier = Verifier.from_certs([gateway_cert.cert])
        self.received: asyncio.Queue[Verified | Unverified] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._seq = Sequencer(start=int(time.time()))
        self._subscribed = asyncio.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cafile=str(identity.ca))
        context.load_cert_chain(str(identity.cert), str(identity.key))
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"headend-{new_id()[:8]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe("gridedge/#", qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def _on_subscribe(self, _c: object, _u: object, _mid: int, _codes: object, _p: object) -> None:
        self._loop.call_soon_threadsafe(self._subscribed.set)

    async def wait_subscribed(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            await self._subscribed.wait()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        suffix = msg.topic.rsplit("/", 1)[-1]
        if suffix == "cmd":
            return  # our own commands, echoed by the broker
        try:
            item: Verified | Unverified = (suffix, parse_message(self.verifier.verify(bytes(msg.payload))))
        except (SignatureError, MessageError) as exc:
            item = (suffix, f"{type(exc).__name__}: {exc}")
        self._loop.call_soon_threadsafe(self.received.put_nowait, item)

    def command(self, der_id: str, target_w: float, *, gateway: str, valid_s: float = 120.0) -> tuple[str, bytes]:
        """A signed command (id, compact JWS) for ``der_id`` at ``target_w`` (W, export positive)."""
        now = time.time()
        command = Command(command_id=new_id(), issuer=self.issuer, authority=self.authority, der_id=der_id,
                          target_w=target_w, valid_from=now - 1, valid_until=now + valid_s, source="headend")
        message = CommandMessage.from_command(command, seq=self._seq.next(), issued_at=now, gateway=gateway)
        return command.command_id, sign_message(self.signer, message)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
