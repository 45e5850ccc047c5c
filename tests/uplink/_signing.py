"""Helpers for the signing tests: hand-made tokens (the forgeries a verifier must refuse) and command payloads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: tests pass ``now`` explicitly


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def es256_token(key: ec.EllipticCurvePrivateKey, header: dict[str, Any], payload: bytes) -> str:
    """A JWS signed by hand with ES256 under an arbitrary header (for header-confusion cases)."""
    signing_input = f"{b64(compact(header))}.{b64(payload)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return f"{signing_input.decode()}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def hs256_token(secret: bytes, header: dict[str, Any], payload: bytes) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with something public (e.g. the certificate PEM)."""
    signing_input = f"{b64(compact(header))}.{b64(payload)}".encode()
    return f"{signing_input.decode()}.{b64(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


def with_payload(token: str, payload: bytes) -> str:
    """``token`` with its payload replaced and its original header and signature kept (a tampered message)."""
    header, _, signature = token.split(".")
    return f"{header}.{b64(payload)}.{signature}"


def command_payload(*, seq: int = 1, issuer: str = "headend", now: float = T0, **over: Any) -> dict[str, Any]:
    """A valid command's wire payload, issued at ``now``, valid for 15 min; ``over`` replaces fields."""
    payload: dict[str, Any] = {
        "type": "command", "id": str(uuid.uuid4()), "issuer": issuer, "seq": seq, "issuedAt": now,
        "validFrom": now, "validUntil": now + 900, "derId": "inv-1", "targetW": -2500.0, "gateway": None,
        "extra": {},
    }
    payload.update(over)
    return payload
