"""JWS ES256: round trip, interoperation with PyJWT both ways, and every forgery refused with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.api_jws import PyJWS

from gateway.errors import ConfigError, SignatureError
from gateway.pki import Identity, fingerprint, init_dev_pki, load_certificate, load_private_key, write_private_key
from gateway.uplink import Signer, Verifier, canonical_json, verify_message
from tests.uplink._signing import compact, es256_token, hs256_token, unb64, with_payload

PAYLOAD = {"type": "event", "b": [1, 2.5, None], "a": "x", "nested": {"z": True, "y": "é"}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    return init_dev_pki(tmp_path_factory.mktemp("pki"), ("gateway", "headend"))


def reason(verifier: Verifier, token: str | bytes) -> str:
    with pytest.raises(SignatureError) as info:
        verifier.verify(token)
    return info.value.reason


def test_round_trip_header_and_canonical_payload(pki: dict[str, Identity], signer: Signer,
                                                 verifier: Verifier) -> None:
    token = signer.sign(PAYLOAD)
    header, payload, signature = token.split(b".")
    kid = fingerprint(load_certificate(pki["gateway"].cert))
    assert json.loads(unb64(header.decode())) == {"alg": "ES256", "kid": kid, "typ": "JOSE"}
    assert unb64(payload.decode()) == json.dumps(PAYLOAD, sort_keys=True, separators=(",", ":")).encode()
    assert len(unb64(signature.decode())) == 64  # R || S, not DER
    assert verifier.verify(token) == PAYLOAD
    assert verifier.verify(token.decode()) == PAYLOAD
    assert verifier.verify_with_kid(token) == (kid, PAYLOAD)


def test_equal_payloads_sign_equal_bytes(signer: Signer) -> None:
    reordered = dict(reversed(list(PAYLOAD.items())))
    assert signer.sign(PAYLOAD).split(b".")[1] == signer.sign(reordered).split(b".")[1]
    assert canonical_json(PAYLOAD) == canonical_json(reordered)


def test_our_tokens_verify_with_pyjwt(pki: dict[str, Identity], signer: Signer) -> None:
    public = load_certificate(pki["gateway"].cert).public_key()
    decoded = PyJWS().decode_complete(signer.sign(PAYLOAD), public, algorithms=["ES256"])
    assert json.loads(decoded["payload"]) == PAYLOAD
    assert decoded["header"]["kid"] == signer.kid


def test_pyjwt_tokens_verify_with_ours(pki: dict[str, Identity], verifier: Verifier, signer: Signer) -> None:
    key = load_private_key(pki["gateway"].key)
    token = PyJWS().encode(compact(PAYLOAD), key, algorithm="ES256", headers={"kid": signer.kid})
    assert verifier.verify(token) == PAYLOAD
    jwt_token = jwt.encode({"type": "event", "n": 1}, key, algorithm="ES256", headers={"kid": signer.kid})
    assert verifier.verify(jwt_token) == {"type": "event", "n": 1}  # typ JWT is fine: the payload says its type


def test_tampered_payload_is_bad_signature(signer: Signer, verifier: Verifier) -> None:
    token = signer.sign({"type": "command", "targetW": 1000.0}).decode()
    forged = with_payload(token, compact({"type": "command", "targetW": 9000.0}))
    assert reason(verifier, forged) == "bad-signature"


def test_tampered_signature_and_header(signer: Signer, verifier: Verifier) -> None:
    header, payload, signature = signer.sign(PAYLOAD).decode().split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    assert reason(verifier, f"{header}.{payload}.{flipped}") == "bad-signature"
    assert reason(verifier, f"{header}.{payload}.{signature[:40]}") == "bad-signature"  # truncated
    assert reason(verifier, f"{header}.{payload}.") == "bad-signature"  # no signature at all
    # A header re-encoded with the same meaning still changes the signing input.
    loose = json.dumps(json.loads(unb64(header)), indent=1).encode()
    from tests.uplink._signing import b64
    assert reason(verifier, f"{b64(loose)}.{payload}.{signature}") == "bad-signature"


def test_one_message_one_token(signer: Signer, verifier: Verifier) -> None:
    """Non-canonical base64url (unused trailing bits set) would let one signed message travel as several tokens."""
    header, payload, signature = signer.sign(PAYLOAD).decode().split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twins = [c for c in alphabet if c != signature[-1] and unb64(signature[:-1] + c) == unb64(signature)]
    assert twins  # 64 bytes -> 86 characters: the last carries 4 unused bits
    assert reason(verifier, f"{header}.{payload}.{signature[:-1]}{twins[0]}") == "malformed"
    assert reason(verifier, f"{header}.{payload}.{signature}==") == "malformed"  # padding is not JWS


def test_wrong_key(pki: dict[str, Identity], signer: Signer, verifier: Verifier) -> None:
    headend = Signer.from_files(pki["headend"].cert, pki["headend"].key)
    assert reason(verifier, headend.sign(PAYLOAD)) == "unknown-key"  # a key we do not trust
    impostor = load_private_key(pki["headend"].key)  # a key claiming to be the gateway's
    assert reason(verifier, es256_token(impostor, {"alg": "ES256", "kid": signer.kid}, compact(PAYLOAD))) \
        == "bad-signature"


def test_alg_none_hs256_rs256_refused(pki: dict[str, Identity], signer: Signer, verifier: Verifier) -> None:
    none = jwt.encode(PAYLOAD, None, algorithm="none", headers={"kid": signer.kid})
    assert reason(verifier, none) == "bad-alg"
    pem = Path(pki["gateway"].cert).read_bytes()  # public, so an HMAC under it is forgeable by anyone
    assert reason(verifier, hs256_token(pem, {"alg": "HS256", "kid": signer.kid}, compact(PAYLOAD))) == "bad-alg"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs256 = jwt.encode(PAYLOAD, rsa_key, algorithm="RS256", headers={"kid": signer.kid})
    assert reason(verifier, rs256) == "bad-alg"
    key = load_private_key(pki["gateway"].key)
    assert reason(verifier, es256_token(key, {"alg": "es256", "kid": signer.kid}, compact(PAYLOAD))) == "bad-alg"
    assert reason(verifier, es256_token(key, {"kid": signer.kid}, compact(PAYLOAD))) == "malformed"


def test_missing_or_odd_kid_refused(pki: dict[str, Identity], signer: Signer, verifier: Verifier) -> None:
    key = load_private_key(pki["gateway"].key)
    for header in ({"alg": "ES256"}, {"alg": "ES256", "kid": ""}, {"alg": "ES256", "kid": 7},
                   {"alg": "ES256", "kid": signer.kid.upper()}):
        assert reason(verifier, es256_token(key, header, compact(PAYLOAD))) == "unknown-key", header


def test_critical_headers_refused(pki: dict[str, Identity], signer: Signer, verifier: Verifier) -> None:
    key = load_private_key(pki["gateway"].key)
    for extra in ({"crit": ["exp"], "exp": 1}, {"b64": False, "crit": ["b64"]}):
        header = {"alg": "ES256", "kid": signer.kid, **extra}
        assert reason(verifier, es256_token(key, header, compact(PAYLOAD))) == "malformed"


@pytest.mark.parametrize("payload", [b"[1,2]", b"not json", b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":Infinity}',
                                     b"\xff\xfe", b"[" * 5000 + b"]" * 5000])
def test_signed_but_unusable_payload_is_malformed(signer: Signer, verifier: Verifier, payload: bytes) -> None:
    assert reason(verifier, signer.sign_bytes(payload)) == "malformed"


@pytest.mark.parametrize("token", [b"", b"abc", b"a.b", b"a.b.c.d", b"a b.c.d", "ümlaut.a.b", b"==.a.b",
                                   b"e30.e30.AA==", b"!!!!.e30.e30", b"x" * (1 << 20) + b".a.b"])
def test_not_a_jws_is_malformed(verifier: Verifier, token: bytes | str) -> None:
    assert reason(verifier, token) == "malformed"


def test_non_tokens_are_malformed(verifier: Verifier) -> None:
    for token in (None, 12, ["a.b.c"]):
        assert reason(verifier, token) == "malformed"  # type: ignore[arg-type]


def test_verify_message_for_head_ends(pki: dict[str, Identity], signer: Signer) -> None:
    token = signer.sign(PAYLOAD)
    assert verify_message(token, [pki["gateway"].cert]) == PAYLOAD
    assert verify_message(token, [load_certificate(pki["headend"].cert), str(pki["gateway"].cert)]) == PAYLOAD
    with pytest.raises(SignatureError) as info:
        verify_message(token, [pki["headend"].cert])
    assert info.value.reason == "unknown-key"


def test_only_p256_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="P-256"):
        Signer(ec.generate_private_key(ec.SECP384R1()), "kid")
    with pytest.raises(ConfigError, match="P-256"):
        Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "kid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="P-256"):
        Verifier({"k": ec.generate_private_key(ec.SECP521R1()).public_key()})
    with pytest.raises(ConfigError, match="kid"):
        Signer(ec.generate_private_key(ec.SECP256R1()), "")


def test_from_files_checks_the_pair_and_the_key_mode(pki: dict[str, Identity], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not belong"):
        Signer.from_files(pki["gateway"].cert, pki["headend"].key)
    key = tmp_path / "loose.key"
    write_private_key(load_private_key(pki["gateway"].key), key)
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {key}"):
        Signer.from_files(pki["gateway"].cert, key)


def test_signing_nan_is_refused(signer: Signer) -> None:
    with pytest.raises(ValueError, match="JSON"):
        signer.sign({"w": float("nan")})


def test_key_material_never_in_errors(pki: dict[str, Identity], verifier: Verifier) -> None:
    key = load_private_key(pki["headend"].key)
    secret = key.private_numbers().private_value
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    forged = es256_token(key, {"alg": "ES256", "kid": "x" * 500}, b"{}")
    for token in (Signer(key, "not-trusted").sign(PAYLOAD), forged):
        with pytest.raises(SignatureError) as info:
            verifier.verify(token)
        text = str(info.value)
        assert str(secret) not in text
        assert pem.splitlines()[1] not in text
        assert len(text) < 200


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=400), st.text(max_size=200),
                 st.lists(st.sampled_from(["e30", "eyJhbGciOiJFUzI1NiJ9", "", "AAAA", ".", "=", "-_"]),
                          max_size=6).map("".join)))
def test_fuzz_only_signature_errors(verifier: Verifier, token: bytes | str) -> None:
    with pytest.raises(SignatureError):
        verifier.verify(token)


def test_head_end_import_is_light() -> None:
    """``from gateway.uplink import verify_message`` pulls in no asyncio, transport client or daemon."""
    code = ("import sys; from gateway.uplink import verify_message; "
            "print(' '.join(m for m in ('asyncio', 'paho', 'openleadr', 'aiohttp', 'gateway.daemon', "
            "'gateway.devices', 'gateway.twin') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == ""
