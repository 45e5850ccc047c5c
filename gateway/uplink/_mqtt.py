"""The MQTT v5 uplink over mutual TLS (paho-mqtt 2.x, callback API v2), driven by the asyncio loop: MqttUplink.

Topics: ``gridedge/<site>/<gateway>/{status,telemetry,envelope,events}`` up, ``.../cmd`` down. Every publish is
QoS 1. ``status`` is retained: a will (``offline``) is registered with each connect and a birth (``online``) is
published after each CONNACK; :meth:`MqttUplink.stop` disconnects with reason 0x04 so the broker publishes the will
then too. Payloads arrive already signed: nothing here signs, parses or alters them.

How it runs: paho's socket is registered with the asyncio loop (``add_reader``/``add_writer`` through paho's
socket callbacks) instead of running paho's own network thread. ``tests/benchmarks/bench_uplink.py`` measures both
with bare paho (2 cores, mosquitto on the same machine, TLS, QoS 1, ~1 KB messages signed ES256 by the publisher):
9,000-10,000 msg/s on the loop against 6,200-6,700 with ``loop_start()``, at 100 against 160-200 us of client CPU
per message (the thread pays for GIL hand-offs), and acknowledgements need no cross-thread hand-off. Only the
blocking TCP connect and TLS handshake run in a worker thread. paho's own inflight cap is off (its bookkeeping
scans every message in flight on each PUBACK, which made a window of 1,000 slower than one of 100); the window is
ours, ``max_inflight`` (default 256, the fastest measured: 64 and 1,024 ran 5-10 % slower, 16 about 25 %), lowered
to the broker's Receive Maximum when it announces one.

Each connection is a fresh paho client, so paho never retransmits by itself: a publish that was in flight when
its connection dropped is reported to its ``on_ack`` as :data:`CONNECTION_LOST`, and the caller (the durable
outbox) resends it. A PUBACK reason code >= 0x80 (e.g. 0x87 Not authorized: the broker's ACL refused the topic)
is passed to ``on_ack``, counted and logged, once per topic and code per connection. Reconnects back off
exponentially with jitter. Inbound ``cmd`` payloads go to ``on_command`` as raw bytes; oversized ones are dropped
and a failing handler is logged, never raised into the network loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import ConfigError, UplinkUnavailable
from gateway.pki import load_private_key
from gateway.uplink._inbound import MAX_COMMAND_BYTES
from gateway.uplink._lifecycle import StartStop

__all__ = ["CONNECTION_LOST", "UP_TOPICS", "MqttSettings", "MqttUplink", "UplinkStats", "client_tls_context"]

log = structlog.get_logger("gateway.uplink.mqtt")
_paho_log = logging.getLogger("gateway.uplink.paho")

#: The upward topic suffixes, under ``gridedge/<site>/<gateway>/``.
UP_TOPICS = ("status", "telemetry", "envelope", "events")
#: The code ``on_ack`` receives when the connection dropped before the PUBACK (the message may or may not have
#: reached the broker; resend it).
CONNECTION_LOST = -1
_DISCONNECT_WITH_WILL = 0x04
_MAX_WINDOW = 65_000  # MQTT packet ids are 16 bits; leave paho room for its own (subscribe, birth)

OnAck = Callable[[int], object]


def _topic_level(field_name: str, value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64 or any(c in value for c in "/+#\0") \
            or not value.isprintable() or value != value.strip():
        raise ConfigError(f"{field_name}: {value!r} cannot be an MQTT topic level; fix: 1-64 printable characters "
                          f"without '/', '+', '#' or surrounding spaces, e.g. \"feeder-12\"")
    return value


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where and as whom to connect, and how hard to push. Paths are PEM files; ``key`` must be mode 0600."""

    host: str
    port: int
    ca: Path
    cert: Path
    key: Path
    site: str
    gateway_id: str
    client_id: str | None = None  # default: gridedge-<site>-<gateway_id>
    keepalive_s: int = 30
    max_inflight: int = 256  # QoS 1 publishes awaiting PUBACK; >= 100 sustains full rate on loopback
    connect_timeout_s: float = 10.0  # TCP connect + TLS handshake, and again for the CONNACK
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    jitter: float = 0.2  # each reconnect delay is scaled by uniform(1 - jitter, 1 + jitter)

    def __post_init__(self) -> None:
        _topic_level("mqtt.site", self.site)
        _topic_level("mqtt.gateway_id", self.gateway_id)
        if not self.host:
            raise ConfigError("mqtt.host: is empty; fix: the broker's host name or address")
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt.port: {self.port} is not a TCP port; fix: 1-65535 (8883 is MQTT over TLS)")
        if not 0 < self.max_inflight <= _MAX_WINDOW:
            raise ConfigError(f"mqtt.max_inflight: {self.max_inflight}; fix: 1-{_MAX_WINDOW} (256 is plenty)")
        if not 5 <= self.keepalive_s <= 65535:
            raise ConfigError(f"mqtt.keepalive_s: {self.keepalive_s}; fix: 5-65535 seconds")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ConfigError(f"mqtt.backoff_initial_s/backoff_max_s: need 0 < {self.backoff_initial_s} <= "
                              f"{self.backoff_max_s}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"mqtt.jitter: {self.jitter}; fix: a fraction in [0, 1)")
        if self.connect_timeout_s <= 0:
            raise ConfigError(f"mqtt.connect_timeout_s: {self.connect_timeout_s}; fix: > 0 seconds")

    @property
    def prefix(self) -> str:
        return f"gridedge/{self.site}/{self.gateway_id}"


def client_tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS >= 1.2 client context that verifies the broker against ``ca`` (and its host name) and presents
    ``cert``/``key``. The key goes through :func:`gateway.pki.load_private_key` first: a group- or world-readable
    or non-P-256 key is a :class:`ConfigError` naming the file and the fix."""
    load_private_key(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.ca {ca}: cannot be loaded as PEM CA certificates ({exc}); fix the path") from exc
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.cert {cert} with mqtt.key {key}: cannot be used ({exc}); fix: the PEM certificate "
                          f"and the key it was issued for") from exc
    return context


@dataclass(slots=True)
class UplinkStats:
    """Counters since construction (never reset)."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # PUBACK reason code (>= 0x80) -> count
    lost_in_flight: int = 0
    commands: int = 0
    commands_dropped: int = 0


class _PahoLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho's log sink: keeps its last warning/error (the detail of a failed connection, also passed on at debug
    level) and ignores the rest (it logs every packet). Our own lines report connection state, once."""

    def __init__(self, session: _Session) -> None:
        super().__init__(_paho_log, {})
        self.session = session

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING:
            with contextlib.suppress(Exception):
                self.session.detail = str(msg) % args if args else str(msg)
            _paho_log.debug(msg, *args)


class _Refused(ConnectionError):
    """The broker answered CONNACK with a failure reason (e.g. 0x87 Not authorized)."""


@dataclass(eq=False)
class _Session:
    """One TCP/TLS connection: its paho client, the fd registered with the loop, and its publishes in flight."""

    client: paho.Client
    window: int
    inflight: dict[int, tuple[OnAck, str]] = field(default_factory=dict)
    fd: int | None = None
    attached: bool = False  # its socket is registered with the loop: callbacks now run on the loop thread
    ready: bool = False  # CONNACK success received and not lost since
    announced: bool = False  # listeners were told this connection is up
    abandoned: bool = False
    detail: str | None = None  # paho's last warning (why a connection failed)
    disconnect_reason: str | None = None
    connack: asyncio.Future[None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    refusals_logged: set[tuple[str, int]] = field(default_factory=set)
    birth_mid: int | None = None
    resume_at: int = 0  # waiters for room wake when the window has drained to this many in flight


def _backoff(failures: int, settings: MqttSettings, rng: random.Random) -> float:
    base = min(settings.backoff_max_s, settings.backoff_initial_s * 2.0 ** max(0, failures - 1))
    return min(settings.backoff_max_s, base * rng.uniform(1.0 - settings.jitter, 1.0 + settings.jitter))


def _plain_status(state: str) -> bytes:
    return state.encode()


class MqttUplink(StartStop):
    """One gateway's MQTT v5 connection: publish signed bytes upward (QoS 1), receive ``cmd`` bytes.

    ``on_command(payload)`` receives every ``cmd`` message's raw payload (at most ``MAX_COMMAND_BYTES``);
    ``status_payload(state)`` makes the ``status`` payload for ``"online"`` (birth) and ``"offline"`` (will),
    called at each connect (default: the bare words; the daemon passes signed status messages). Construction does
    no I/O; :meth:`start` (or ``async with``) checks the key and certificates and starts connecting in the
    background, retrying until :meth:`stop`. It never waits for the broker: see :meth:`wait_connected`.
    """

    def __init__(self, settings: MqttSettings, *, on_command: Callable[[bytes], object] | None = None,
                 status_payload: Callable[[str], bytes] = _plain_status, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.stats = UplinkStats()
        self.last_error: str | None = None
        self._on_command = on_command
        self._status_payload = status_payload
        self._rng = rng or random.Random()
        self._topics = {suffix: f"{settings.prefix}/{suffix}" for suffix in UP_TOPICS}
        self._cmd_topic = f"{settings.prefix}/cmd"
        self._client_id = settings.client_id or f"gridedge-{settings.site}-{settings.gateway_id}"
        self._historical = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self._historical.UserProperty = [("historical", "1")]
        self._tls: ssl.SSLContext | None = None
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._changed = asyncio.Event()  # set (and replaced) whenever connection state or room changes
        self._listeners: list[Callable[[bool], object]] = []
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the key (0600, P-256) and certificates, then connect in the background (ConfigError if unusable)."""
        if self._task is not None:
            return
        s = self.settings
        self._tls = client_tls_context(s.ca, s.cert, s.key)
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"mqtt {s.host}:{s.port}")
        self._task.add_done_callback(_report_crash)

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Disconnect (the broker publishes the ``offline`` will) and stop reconnecting. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        session = self._session
        if session is not None and session.ready:
            session.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.closed.wait(), timeout_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if session is not None:
            self._close(session, "stopped")

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.ready

    @property
    def generation(self) -> int:
        """How many connections have been established (CONNACK success) so far: changes on every reconnect."""
        return self._generation

    @property
    def inflight(self) -> int:
        session = self._session
        return len(session.inflight) if session is not None else 0

    def room(self) -> int:
        """How many more publishes fit in the window now (0 when not connected)."""
        session = self._session
        if session is None or not session.ready:
            return 0
        return max(0, session.window - len(session.inflight))

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Until connected (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while not self.connected:
                await self._changed.wait()

    async def wait_room(self) -> None:
        """Until connected with room in the window. Wakes once the window has drained to 3/4, not on every ack."""
        while self.room() == 0:
            await self._changed.wait()

    def add_listener(self, listener: Callable[[bool], object]) -> None:
        """Call ``listener(True)`` right after each CONNACK success (before anything else is sent on the new
        connection) and ``listener(False)`` when that connection is lost or closed (after its in-flight publishes
        got :data:`CONNECTION_LOST`). A listener must not block; its exceptions are logged."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[bool], object]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _tell(self, connected: bool) -> None:
        for listener in self._listeners:
            try:
                listener(connected)
            except Exception:
                log.exception("mqtt connection listener failed", connected=connected)

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- publishing ------------------------------------------------------------------------------------------------

    def publish(self, topic_suffix: str, payload: bytes, *, on_ack: OnAck, historical: bool = False,
                retain: bool = False) -> None:
        """Send ``payload`` on ``<prefix>/<topic_suffix>`` at QoS 1, now, without waiting.

        ``on_ack(code)`` is called exactly once: with the PUBACK reason code (< 0x80 delivered to the broker; >= 0x80
        refused, e.g. 0x87 Not authorized), or with :data:`CONNECTION_LOST`. ``historical`` adds the MQTT v5 user
        property ``historical=1`` (a replay from the outbox), leaving the payload byte-identical. Raises
        :class:`UplinkUnavailable` when not connected; callers keep within :meth:`room` (see :meth:`wait_room`).
        """
        topic = self._topics.get(topic_suffix)
        if topic is None:
            raise ValueError(f"topic suffix {topic_suffix!r}: use one of {', '.join(UP_TOPICS)}")
        session = self._session
        if session is None or not session.ready:
            raise UplinkUnavailable(f"MQTT uplink to {self.settings.host}:{self.settings.port} is not connected")
        info = session.client.publish(topic, payload, qos=1, retain=retain,
                                      properties=self._historical if historical else None)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkUnavailable(f"MQTT publish failed: {paho.error_string(info.rc)}")
        session.inflight[info.mid] = (on_ack, topic_suffix)
        self.stats.published += 1

    # -- the connection supervisor ---------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while True:
            session: _Session | None = None
            try:
                session = self._new_session()
                await self._connect(session)
            except Exception as exc:  # ssl.SSLError, refused, no CONNACK, ...; anything else is logged with its trace
                if session is not None:
                    self._close(session, "connect failed")
                failures += 1
                self.stats.connect_failures += 1
                self.last_error = _describe(exc, session.detail if session is not None else None)
                delay = _backoff(failures, self.settings, self._rng)
                expected = isinstance(exc, OSError | TimeoutError | ValueError)
                (log.warning if failures == 1 else log.debug)(
                    "mqtt connect failed", host=self.settings.host, port=self.settings.port, error=self.last_error,
                    attempt=failures, retry_in_s=round(delay, 2), exc_info=None if expected else exc)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                if session is not None:
                    self._close(session, "cancelled")
                raise
            log.info("mqtt connected", host=self.settings.host, port=self.settings.port, client_id=self._client_id,
                     window=session.window, after_failures=failures, generation=self._generation)
            failures = 0
            self._notify()
            try:
                await self._serve(session)
            finally:
                self._close(session, session.disconnect_reason or "connection lost")
            if self._stopping:
                log.info("mqtt stopped", host=self.settings.host, port=self.settings.port)
                return
            self.last_error = session.disconnect_reason
            self.stats.disconnects += 1
            log.warning("mqtt disconnected", reason=self.last_error)
            failures = 1
            await asyncio.sleep(_backoff(failures, self.settings, self._rng))

    def _new_session(self) -> _Session:
        s = self.settings
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id,
                             protocol=MQTTProtocolVersion.MQTTv5)
        assert self._tls is not None
        client.tls_set_context(self._tls)
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(0)  # our window; paho's cap scans every message per PUBACK
        client.max_queued_messages_set(0)
        client.suppress_exceptions = True
        session = _Session(client=client, window=s.max_inflight)
        client.enable_logger(_PahoLog(session))  # type: ignore[arg-type]
        client.will_set(self._topics["status"], self._status_payload("offline"), qos=1, retain=True)
        client.on_connect = lambda _c, _u, _f, rc, props: self._on_connect(session, rc, props)
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self._on_disconnect(session, rc)
        client.on_publish = partial(self._on_publish, session)
        client.on_subscribe = lambda _c, _u, _mid, codes, _p: self._on_subscribe(codes)
        client.on_message = lambda _c, _u, msg: self._on_message(msg)
        return session

    async def _connect(self, session: _Session) -> None:
        """TCP + TLS + CONNECT in a worker thread, then the socket joins the loop; returns on CONNACK success."""
        loop = asyncio.get_running_loop()
        s = self.settings
        session.connack = loop.create_future()
        client = session.client

        def blocking_connect() -> None:
            client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=True)
            if session.abandoned:  # cancelled while we were connecting: nobody will read this socket
                sock = client.socket()
                if sock is not None:
                    sock.close()

        try:
            await loop.run_in_executor(None, blocking_connect)
        except BaseException:
            session.abandoned = True
            raise
        self._attach(session)
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                await session.connack
        except TimeoutError:
            raise TimeoutError(f"no CONNACK within {s.connect_timeout_s} s") from None

    def _attach(self, session: _Session) -> None:
        """Register the connected socket with the loop; from now on paho's socket callbacks keep it registered."""
        assert self._loop is not None
        loop, client = self._loop, session.client
        sock = client.socket()
        if sock is None:
            raise ConnectionError("the connection closed while it was being set up")
        session.fd = fd = sock.fileno()
        session.attached = True
        loop.add_reader(fd, self._on_readable, session)

        def want_write(_c: paho.Client, _u: Any, _s: Any) -> None:
            loop.add_writer(fd, self._on_writable, session)

        def written(_c: paho.Client, _u: Any, _s: Any) -> None:
            loop.remove_writer(fd)

        client.on_socket_register_write = want_write
        client.on_socket_unregister_write = written
        client.on_socket_close = lambda _c, _u, _s: self._unregister(session)
        self._session = session
        if client.want_write():
            loop.add_writer(fd, self._on_writable, session)

    async def _serve(self, session: _Session) -> None:
        """While connected: drive paho's keepalive once a second."""
        while not session.closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.closed.wait(), 1.0)
            if not session.closed.is_set():
                self._guard(session, session.client.loop_misc)

    def _unregister(self, session: _Session) -> None:
        if session.fd is not None and self._loop is not None:
            self._loop.remove_reader(session.fd)
            self._loop.remove_writer(session.fd)
            session.fd = None

    def _close(self, session: _Session, reason: str) -> None:
        """Forget a connection: unregister and close its socket, fail what was in flight. Idempotent."""
        session.abandoned = True
        session.ready = False
        self._unregister(session)
        client = session.client
        client.on_socket_close = client.on_socket_register_write = client.on_socket_unregister_write = None
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if session.connack is not None and not session.connack.done():
            session.connack.set_exception(ConnectionError(f"{reason} before CONNACK"))
            session.connack.exception()  # retrieved: nobody may be awaiting it any more
        session.closed.set()
        lost, session.inflight = session.inflight, {}
        self.stats.lost_in_flight += len(lost)
        for on_ack, _suffix in lost.values():
            self._ack(on_ack, CONNECTION_LOST)
        if self._session is session:
            self._session = None
            if session.announced:
                self._tell(False)
            self._notify()

    # -- network events (loop thread) ------------------------------------------------------------------------------

    def _guard(self, session: _Session, step: Callable[[], MQTTErrorCode]) -> None:
        try:
            step()
        except Exception as exc:  # a bug or a malformed packet paho did not catch: lose the connection, not the loop
            log.exception("mqtt network step failed", error=str(exc))
            session.disconnect_reason = f"internal error: {exc}"
            self._close(session, "internal error")

    def _on_readable(self, session: _Session) -> None:
        client = session.client

        def read_all() -> MQTTErrorCode:
            rc = client.loop_read()
            sock = client.socket()
            # TLS may hold decrypted bytes the fd no longer signals: drain them now.
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, ssl.SSLSocket) and sock.pending():
                rc = client.loop_read()
                sock = client.socket()
            return rc

        self._guard(session, read_all)

    def _on_writable(self, session: _Session) -> None:
        self._guard(session, session.client.loop_write)

    def _on_connect(self, session: _Session, reason: ReasonCode, props: Properties | None) -> None:
        if reason.is_failure:
            if session.connack is not None and not session.connack.done():
                session.connack.set_exception(_Refused(f"CONNACK refused: {reason} (0x{reason.value:02x})"))
            return
        receive_max = getattr(props, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:
            session.window = min(session.window, receive_max)
        session.resume_at = session.window * 3 // 4
        session.ready = True
        self.stats.connects += 1
        self._generation += 1
        session.announced = True
        self._tell(True)  # before anything can be published on this connection
        client = session.client
        client.subscribe(self._cmd_topic, qos=1)
        info = client.publish(self._topics["status"], self._status_payload("online"), qos=1, retain=True)
        session.birth_mid = info.mid
        if session.connack is not None and not session.connack.done():
            session.connack.set_result(None)

    def _on_disconnect(self, session: _Session, reason: ReasonCode) -> None:
        detail = f" ({session.detail})" if session.detail else ""
        session.disconnect_reason = f"{reason}{detail}"
        if not session.attached:  # still inside connect() in the worker thread: _attach will see the socket gone
            return
        was_ready = session.ready
        session.ready = False
        if session.connack is not None and not session.connack.done():
            session.connack.set_exception(ConnectionError(f"connection closed before CONNACK: {reason}{detail}"))
        session.closed.set()
        if was_ready and self._session is session:
            self._notify()

    def _on_publish(self, session: _Session, _client: paho.Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _props: Properties) -> None:
        code = reason.value
        entry = session.inflight.pop(mid, None)
        if entry is None:
            suffix = "status" if mid == session.birth_mid else "?"
            if code >= 0x80:
                self._refused(session, suffix, code, reason)
            return
        on_ack, suffix = entry
        if code >= 0x80:
            self._refused(session, suffix, code, reason)
        else:
            self.stats.acked += 1
        try:
            on_ack(code)
        except Exception:  # a caller's bug must not break the network loop
            log.exception("mqtt on_ack callback failed", code=code)
        if len(session.inflight) == session.resume_at and session.ready:
            self._notify()

    def _refused(self, session: _Session, suffix: str, code: int, reason: ReasonCode) -> None:
        self.stats.refused[code] = self.stats.refused.get(code, 0) + 1
        if (suffix, code) not in session.refusals_logged:
            session.refusals_logged.add((suffix, code))
            log.warning("mqtt publish refused by the broker", topic=self._topics.get(suffix, suffix),
                        reason_code=f"0x{code:02x}", reason=str(reason),
                        hint="check the broker's ACL for this client's identity" if code == 0x87 else None)

    @staticmethod
    def _ack(on_ack: OnAck, code: int) -> None:
        try:
            on_ack(code)
        except Exception:  # a caller's bug must not break the network loop
            log.exception("mqtt on_ack callback failed", code=code)

    def _on_subscribe(self, codes: list[ReasonCode]) -> None:
        for code in codes:
            if code.is_failure:
                log.error("mqtt cmd subscription refused; commands will not arrive", topic=self._cmd_topic,
                          reason_code=f"0x{code.value:02x}", reason=str(code))

    def _on_message(self, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return
        if topic != self._cmd_topic:
            return
        payload = bytes(message.payload)
        if len(payload) > MAX_COMMAND_BYTES:
            self.stats.commands_dropped += 1
            log.warning("mqtt command dropped: too long", topic=self._cmd_topic, bytes=len(payload),
                        limit=MAX_COMMAND_BYTES)
            return
        self.stats.commands += 1
        if self._on_command is None:
            return
        try:
            self._on_command(payload)
        except Exception:
            log.exception("mqtt command handler failed", topic=self._cmd_topic, bytes=len(payload))


def _describe(exc: BaseException, detail: str | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if detail and detail not in text:
        text += f" ({detail})"
    return text


def _report_crash(task: asyncio.Task[None]) -> None:
    """The supervisor never ends by itself; if a bug ends it, say so loudly (nothing reconnects any more)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("mqtt uplink supervisor crashed: the uplink stays down", exc_info=task.exception())

