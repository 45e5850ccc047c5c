"""Peers for the uplink tests: a real mosquitto broker (TLS with client certificates, an ACL confining the gateway
to its prefix) on a free loopback port, a head-end subscriber, and settings for our uplink."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.pki import Identity
from gateway.uplink import Signer, Verifier
from gateway.uplink._mqtt import MqttSettings
from tests.uplink._broker import Broker, find_mosquitto
from tests.uplink._headend import HeadEnd


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A running mosquitto 2.x on 127.0.0.1:<free port> with the dev PKI in ``tmp_path``; killed at teardown.

    ``broker.stop()``/``broker.start()`` restart it on the same port (outage tests)."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (/usr/sbin/mosquitto): `make test` installs it, or "
                    "`apt-get install mosquitto`")
    broker = Broker(binary, tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def headend(mosquitto: Broker) -> Iterator[Callable[..., HeadEnd]]:
    """Makes head-end subscribers (closed at teardown): ``headend()`` subscribes to ``gridedge/#``."""
    made: list[HeadEnd] = []

    def make(**kwargs: object) -> HeadEnd:
        client = HeadEnd(mosquitto.host, mosquitto.port, mosquitto.pki["headend"], **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def settings_for(broker: Broker, name: str = "gateway", **overrides: object) -> MqttSettings:
    """Our uplink's settings for identity ``name`` against ``broker`` (fast reconnects for tests)."""
    identity = broker.pki[name]
    values: dict[str, object] = {
        "host": broker.host, "port": broker.port, "ca": identity.ca, "cert": identity.cert, "key": identity.key,
        "site": broker.site, "gateway_id": broker.gateway_id, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
        "connect_timeout_s": 5.0,
    }
    values.update(overrides)
    return MqttSettings(**values)  # type: ignore[arg-type]


# The gateway's signer and a verifier trusting it, over the ``pki`` fixture of the test module.
@pytest.fixture(scope="module")
def signer(pki: dict[str, Identity]) -> Signer:
    return Signer.from_files(pki["gateway"].cert, pki["gateway"].key)


@pytest.fixture(scope="module")
def verifier(pki: dict[str, Identity]) -> Verifier:
    return Verifier.from_certs([pki["gateway"].cert])
