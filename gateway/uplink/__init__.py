"""Uplinks: the signed message layer (JWS ES256, wire schemas, inbound command checks) and the transports.

Importing this package stays light (no asyncio, MQTT or OpenADR client, no daemon), so a head-end or a script
can ``from gateway.uplink import verify_message``. Transport classes are listed in ``_LAZY`` and imported only when
first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from gateway.errors import CommandRejected, MessageError, SignatureError
from gateway.uplink._inbound import MAX_COMMAND_BYTES, REASONS, CommandVerifier, TrustedKey, trusted_signer
from gateway.uplink._jws import ALG, Signer, Verifier, canonical_json, verify_message
from gateway.uplink._messages import (
    MESSAGE_TYPES,
    CertificateWire,
    CommandMessage,
    ConnectionPointLimits,
    DerLimits,
    DeviceStatusWire,
    EnvelopeMessage,
    EventMessage,
    MeasurementWire,
    Message,
    StatusMessage,
    TelemetryMessage,
    new_id,
    parse_message,
    sign_message,
)
from gateway.uplink._sequence import Sequencer

#: Public names whose modules pull in a network client or asyncio: ``name -> module``, imported on first access.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("MqttUplink", "MqttSettings", "UplinkStats", "CONNECTION_LOST", "UP_TOPICS",
                     "client_tls_context"), "gateway.uplink._mqtt"),
    **dict.fromkeys(("Outbox", "MessageKind", "OutboxStats", "DROP_ORDER"), "gateway.uplink._outbox"),
    **dict.fromkeys(("OpenAdrVen", "OpenAdrConfig", "VenHooks", "Ven"), "gateway.uplink._openadr"),
    "ReportAnswer": "gateway.uplink._openadr_client",
}

__all__ = [
    "ALG",
    "MAX_COMMAND_BYTES",
    "MESSAGE_TYPES",
    "REASONS",
    "CertificateWire",
    "CommandMessage",
    "CommandRejected",
    "CommandVerifier",
    "ConnectionPointLimits",
    "DerLimits",
    "DeviceStatusWire",
    "EnvelopeMessage",
    "EventMessage",
    "MeasurementWire",
    "Message",
    "MessageError",
    "Sequencer",
    "SignatureError",
    "Signer",
    "StatusMessage",
    "TelemetryMessage",
    "TrustedKey",
    "Verifier",
    "canonical_json",
    "new_id",
    "parse_message",
    "sign_message",
    "trusted_signer",
    "verify_message",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
