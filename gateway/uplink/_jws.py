"""JWS (RFC 7515) compact serialisation, ES256 only: :class:`Signer`, :class:`Verifier`, :func:`verify_message`.

A token is ``BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(R || S)`` with the protected header
``{"alg":"ES256","kid":KID,"typ":"JOSE"}``; ``KID`` is the SHA-256 fingerprint of the signer's certificate
(:func:`gateway.pki.fingerprint`), so a verifier pins certificates, not names. The payload is canonical compact
JSON (sorted keys, no spaces, ASCII, no NaN), so equal messages sign equal bytes.

The signature itself is PyJWT's ES256 (``jwt.algorithms``: ECDSA P-256 over SHA-256 through ``cryptography``,
R || S encoding, curve check); the compact framing around it is ours, because ``PyJWS`` re-encodes the header per
message and checks base64 one character at a time in Python: ~15 % more per signature and ~30 % more per
verification, measured in ``tests/benchmarks/bench_signing.py``, where the MQTT uplink signs and head-ends verify
thousands of messages a second. Our parsing is
stricter than ``PyJWS``'s: unpadded canonical base64url only, ES256 only, a ``kid`` we trust, no ``crit``/``b64``,
I-JSON payloads (no duplicate names, no NaN). Tests check both directions interoperate with PyJWT's ``PyJWS``.
Nothing here does I/O except :meth:`Signer.from_files` and :meth:`Verifier.from_certs` reading their files.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import PyJWTError

from gateway.errors import ConfigError, SignatureError
from gateway.pki import fingerprint, load_certificate, load_private_key

ALG = "ES256"
TYP = "JOSE"
#: Longest token :class:`Verifier` looks at; anything longer is ``malformed`` before any parsing.
MAX_TOKEN_BYTES = 1 << 20
_ES256 = get_default_algorithms()[ALG]  # PyJWT's: SHA-256, R || S, P-256 expected
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")  # unpadded base64url (RFC 7515 section 2)


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """The bytes a payload is signed as: sorted keys, ``,``/``:`` separators, ASCII; NaN/Infinity refused."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64url_decode(segment: bytes, what: str) -> bytes:
    """Decode a segment already known to hold only base64url characters; refuse non-canonical encodings (unused
    trailing bits set, an impossible length), so one message has exactly one token."""
    try:
        data = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise SignatureError("malformed", f"the {what} is not base64url") from exc
    if b64url(data) != segment:
        raise SignatureError("malformed", f"the {what} is not canonical base64url")
    return data


def _check_p256(key: object, what: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP256R1):
        raise ConfigError(f"{what}: must be an EC P-256 key (ES256), got {type(key).__name__}"
                          f"{f' on {curve.name}' if isinstance(curve, ec.EllipticCurve) else ''}")


class Signer:
    """Signs payloads as ES256 compact JWS under one key and ``kid``. Stateless after construction."""

    __slots__ = ("_header", "_key", "kid")

    def __init__(self, key: ec.EllipticCurvePrivateKey, kid: str) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"signing key: must be an EC P-256 private key, got {type(key).__name__}")
        _check_p256(key, "signing key")
        if not isinstance(kid, str) or not kid:
            raise ConfigError("signing key id (kid): must be a non-empty string, the certificate's fingerprint")
        self._key = key
        self.kid = kid
        self._header = b64url(canonical_json({"alg": ALG, "kid": kid, "typ": TYP})) + b"."

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path) -> Signer:
        """The signer of ``key`` (PEM, refused if group/world-readable), its kid the fingerprint of ``cert``."""
        certificate = load_certificate(cert)
        private = load_private_key(key)
        public = certificate.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or private.public_key().public_numbers() != \
                public.public_numbers():
            raise ConfigError(f"private key {key} does not belong to certificate {cert}; fix: pair each "
                              f"certificate with the key it was issued for")
        return cls(private, fingerprint(certificate))

    def sign(self, payload: Mapping[str, Any]) -> bytes:
        """The compact JWS of ``payload`` (ASCII bytes)."""
        return self.sign_bytes(canonical_json(payload))

    def sign_bytes(self, payload: bytes) -> bytes:
        """The compact JWS of ``payload`` taken as already-encoded bytes (use :func:`canonical_json`)."""
        signing_input = self._header + b64url(payload)
        return signing_input + b"." + b64url(_ES256.sign(signing_input, self._key))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member name")
    return out


def strict_json(data: bytes) -> Any:
    """Parse I-JSON (RFC 7493): UTF-8, no duplicate member names, no NaN/Infinity. Raises ValueError."""
    try:
        return json.loads(data, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


class Verifier:
    """Verifies ES256 compact JWS against pinned public keys (``kid`` -> key). Raises :class:`SignatureError`."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> None:
        for kid, key in keys.items():
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ConfigError(f"verification key {kid}: must be an EC P-256 public key, got {type(key).__name__}")
            _check_p256(key, f"verification key {kid}")
        self._keys = {kid: _ES256.prepare_key(key) for kid, key in keys.items()}

    @classmethod
    def from_certs(cls, certs: Iterable[x509.Certificate | str | Path]) -> Verifier:
        """Trust the keys of these certificates (objects or PEM paths), each under its fingerprint."""
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for cert in certs:
            c = cert if isinstance(cert, x509.Certificate) else load_certificate(cert)
            key = c.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ConfigError(f"certificate {c.subject.rfc4514_string()}: its key must be EC P-256 (ES256), "
                                  f"got {type(key).__name__}")
            keys[fingerprint(c)] = key
        return cls(keys)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: bytes | str) -> dict[str, Any]:
        """The payload of a valid token (a JSON object), else :class:`SignatureError`."""
        return self.verify_with_kid(token)[1]

    def verify_with_kid(self, token: bytes | str) -> tuple[str, dict[str, Any]]:
        """``(kid, payload)`` of a valid token: which pinned key signed it, and what it says."""
        raw = as_token(token)
        segments = raw.split(b".")
        if len(segments) != 3 or not all(_SEGMENT.fullmatch(s) for s in segments):
            raise SignatureError("malformed", "not a JWS compact serialisation (three base64url segments)")
        header_segment, payload_segment, signature_segment = segments
        header = _header(header_segment)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise SignatureError("malformed", "the header has no alg")
        if alg != ALG:
            raise SignatureError("bad-alg", f"alg {alg[:20]!r} is refused; only {ALG} is accepted")
        if "crit" in header or "b64" in header:
            raise SignatureError("malformed", "critical header extensions (crit, b64) are not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise SignatureError("unknown-key", "the header names no key (kid)")
        key = self._keys.get(kid)
        if key is None:
            raise SignatureError("unknown-key", f"kid {kid[:64]!r} is not a trusted key")
        signature = _b64url_decode(signature_segment, "signature")
        try:
            valid = _ES256.verify(header_segment + b"." + payload_segment, key, signature)
        except (PyJWTError, ValueError, TypeError) as exc:
            raise SignatureError("malformed", f"the signature cannot be checked ({type(exc).__name__})") from exc
        if not valid:
            raise SignatureError("bad-signature", "the signature does not match the message and key")
        try:
            payload = strict_json(_b64url_decode(payload_segment, "payload"))
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise SignatureError("malformed", f"the payload is not JSON ({str(exc)[:120]})") from exc
        if not isinstance(payload, dict):
            raise SignatureError("malformed", "the payload is not a JSON object")
        return kid, payload


def as_token(token: object, limit: int = MAX_TOKEN_BYTES) -> bytes:
    """``token`` (str or bytes-like) as stripped ASCII bytes of at most ``limit``, else SignatureError (malformed)."""
    if isinstance(token, str):
        try:
            token = token.encode("ascii")
        except UnicodeEncodeError:
            raise SignatureError("malformed", "a JWS is ASCII") from None
    if isinstance(token, bytearray | memoryview):
        token = bytes(token)
    if not isinstance(token, bytes):
        raise SignatureError("malformed", f"a token is bytes or str, not {type(token).__name__}")
    if len(token) > limit:
        raise SignatureError("malformed", f"{len(token)} bytes, longer than a token may be ({limit})")
    return token.strip()


def _header(segment: bytes) -> dict[str, Any]:
    data = _b64url_decode(segment, "header")
    try:
        header = strict_json(data)
    except ValueError as exc:
        raise SignatureError("malformed", "the header is not JSON") from exc
    if not isinstance(header, dict):
        raise SignatureError("malformed", "the header is not a JSON object")
    return header


def verify_message(token: bytes | str, certs: Iterable[x509.Certificate | str | Path]) -> dict[str, Any]:
    """Verify one signed gridedge message against trusted certificates; return its payload.

    For head-ends and scripts: no asyncio, no daemon. Raises :class:`SignatureError` (``reason`` says why) or
    ``ConfigError`` for an unusable certificate. To verify many messages, build one ``Verifier.from_certs`` and
    reuse it.
    """
    return Verifier.from_certs(certs).verify(token)
