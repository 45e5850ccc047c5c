"""Signed gridedge messages for the uplink tests and benchmark, made with the project's own signer and schemas."""

from __future__ import annotations

import time

from gateway.pki import Identity
from gateway.types import DerLimit, Envelope, Measurement
from gateway.uplink import EnvelopeMessage, Signer, TelemetryMessage, Verifier, sign_message


def signer_for(identity: Identity) -> Signer:
    return Signer.from_files(identity.cert, identity.key)


def verifier_for(identity: Identity) -> Verifier:
    return Verifier.from_certs([identity.cert])


def telemetry(signer: Signer, issuer: str, seq: int, *, devices: int = 3) -> bytes:
    """A telemetry message of ``devices`` inverters (~1 KB signed for 3)."""
    now = time.time()
    measurements = [Measurement(device_id=f"pv-{i}", at=now, role="inverter", w=1234.5 + i, var=-12.0, v=230.4,
                                hz=50.01, wh=1.5e6, w_max=5000.0, state=4) for i in range(devices)]
    return sign_message(signer, TelemetryMessage.from_measurements(measurements, issuer=issuer, seq=seq,
                                                                   issued_at=now))


def envelope(signer: Signer, issuer: str, seq: int) -> bytes:
    """A default (uncertified) envelope for two DERs, valid for five minutes."""
    now = time.time()
    env = Envelope(issuer=issuer, sequence=seq, valid_from=now, valid_until=now + 300,
                   limits=(DerLimit("pv-0", 5000.0, 0.0), DerLimit("bat-1", 3000.0, 3000.0)), certified=False,
                   reason="twin not certified (test)")
    return sign_message(signer, EnvelopeMessage.from_envelope(env, issued_at=now))
