"""Keys and certificates: the development PKI (`gridedge certs init`) and the start-up checks on private keys.

Every key is EC P-256 (ES256 for JWS, ECDHE-ECDSA for TLS; openleadr signs RSA ~80x slower and fails on Ed25519).
A private key file that group or others can read is refused: the error names the file and the fix.
The development CA is for loopback tests and demos only; ``certs/README.md`` explains production use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError

#: The leaf certificates `init_dev_pki` makes by default: the MQTT broker, this gateway, the head-end that signs
#: commands and verifies envelopes, the OpenADR VTN, and the gateway's OpenADR VEN (its TLS client identity there).
DEFAULT_NAMES = ("broker", "gateway", "headend", "vtn", "ven")
_LOOPBACK_SANS: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
]


@dataclass(frozen=True, slots=True)
class Identity:
    """One party's files: its certificate and private key (PEM), issued by the CA in ``ca``."""

    name: str
    cert: Path
    key: Path
    ca: Path


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_private_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, created 0600 (never readable by others, even for an instant)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def check_key_permissions(path: Path) -> None:
    """Refuse a private key file that group or others can read or write (ConfigError naming the fix)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"private key {path}: cannot be read ({exc.strerror}); fix the path") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"private key {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                          f"fix: chmod 600 {path}")


def load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Load an EC P-256 private key (PEM), after :func:`check_key_permissions`. Anything else is a ConfigError."""
    path = Path(path)
    check_key_permissions(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"private key {path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"private key {path}: must be EC P-256 (ES256); make one with `gridedge certs init`")
    return key


def load_certificate(path: str | Path) -> x509.Certificate:
    path = Path(path)
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"certificate {path}: cannot be loaded ({exc})") from exc


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate, lowercase hex: the key id (``kid``) of its key's signatures."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridedge development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
           *, ca: bool, days: int) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               # RFC 5280 4.2.1.1: strict verifiers (cryptography's, rustls) refuse a leaf without it.
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName(_LOOPBACK_SANS), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, key_agreement=True, key_cert_sign=False, crl_sign=False,
                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                       encipher_only=False, decipher_only=False), critical=True))
    return builder.sign(issuer_key, hashes.SHA256())


def init_dev_pki(directory: str | Path, names: tuple[str, ...] = DEFAULT_NAMES, *, days: int = 30,
                 common_names: Mapping[str, str] | None = None) -> dict[str, Identity]:
    """Make a development CA and one EC P-256 leaf per name in ``directory`` (``ca.pem``, ``NAME.pem``,
    ``NAME.key``; keys 0600, the CA key ``ca.key`` too). Leaves are valid for loopback (localhost, 127.0.0.1,
    ::1) as server and client; a leaf's subject CN is ``common_names[NAME]`` if given (e.g. the gateway id), else
    ``NAME``. Existing files are replaced. Returns each name's :class:`Identity`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = new_key()
    ca_name = _name("gridedge development CA")
    ca_cert = _issue("gridedge development CA", ca_key, ca_name, ca_key, ca=True, days=days)
    write_private_key(ca_key, out / "ca.key")
    (out / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    identities = {}
    for name in names:
        key = new_key()
        cert = _issue((common_names or {}).get(name, name), key, ca_name, ca_key, ca=False, days=days)
        write_private_key(key, out / f"{name}.key")
        (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        identities[name] = Identity(name, out / f"{name}.pem", out / f"{name}.key", out / "ca.pem")
    return identities
