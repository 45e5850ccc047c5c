"""gateway.pki: the development PKI's chain verifies as TLS server and client under a strict verifier; private keys
readable by others are refused with the fix; only EC P-256 keys are accepted; the kid is the SHA-256 fingerprint."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.errors import ConfigError
from gateway.pki import (
    DEFAULT_NAMES,
    Identity,
    check_key_permissions,
    fingerprint,
    init_dev_pki,
    load_certificate,
    load_private_key,
    write_private_key,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    return init_dev_pki(tmp_path_factory.mktemp("pki"), common_names={"gateway": "gw-7"})


def test_files_and_modes(pki: dict[str, Identity]) -> None:
    assert set(pki) == set(DEFAULT_NAMES)
    assert "ven" in pki
    directory = pki["gateway"].cert.parent
    for key in [directory / "ca.key", *(ident.key for ident in pki.values())]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        check_key_permissions(key)
    cn = load_certificate(pki["gateway"].cert).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "gw-7"
    assert load_certificate(pki["broker"].cert).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value \
        == "broker"


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_chain_verifies_for_server_and_client(pki: dict[str, Identity], name: str) -> None:
    ca = load_certificate(pki[name].ca)
    leaf = load_certificate(pki[name].cert)
    store = Store([ca])
    for host in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.IPAddress(ipaddress.ip_address("::1"))):
        chain = PolicyBuilder().store(store).build_server_verifier(host).verify(leaf, [])
        assert chain[-1] == ca
    assert PolicyBuilder().store(store).build_client_verifier().verify(leaf, []).chain[-1] == ca
    with pytest.raises(VerificationError):  # not valid for other hosts
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("example.com")).verify(leaf, [])


def test_another_ca_does_not_verify(pki: dict[str, Identity], tmp_path: Path) -> None:
    other = init_dev_pki(tmp_path, ("gateway",))
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([load_certificate(pki["gateway"].ca)])).build_client_verifier().verify(
            load_certificate(other["gateway"].cert), [])


def test_fingerprint_is_sha256_of_der(pki: dict[str, Identity]) -> None:
    cert = load_certificate(pki["headend"].cert)
    assert fingerprint(cert) == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert fingerprint(cert) != fingerprint(load_certificate(pki["gateway"].cert))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o620])
def test_readable_key_is_refused_naming_the_fix(pki: dict[str, Identity], tmp_path: Path, mode: int) -> None:
    key = tmp_path / "gateway.key"
    write_private_key(load_private_key(pki["gateway"].key), key)
    os.chmod(key, mode)
    with pytest.raises(ConfigError) as info:
        load_private_key(key)
    assert f"chmod 600 {key}" in str(info.value)
    assert f"{mode:04o}" in str(info.value)
    os.chmod(key, 0o400)
    assert isinstance(load_private_key(key), ec.EllipticCurvePrivateKey)


def test_missing_key_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "absent.key")):
        load_private_key(tmp_path / "absent.key")


def _write(path: Path, pem: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return path


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP256K1()),
                                 rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                 ed25519.Ed25519PrivateKey.generate()], ids=["p384", "secp256k1", "rsa", "ed25519"])
def test_only_p256_keys(tmp_path: Path, key: object) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                            serialization.NoEncryption())
    with pytest.raises(ConfigError, match="must be EC P-256"):
        load_private_key(_write(tmp_path / "other.key", pem))


def test_garbage_key_and_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(_write(tmp_path / "junk.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"))
    (tmp_path / "junk.pem").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_certificate(tmp_path / "junk.pem")
