"""``gridedge verify`` and ``gridedge certs init``: exit 0 for a valid message with its payload printed, 1 with the
reason for an invalid one, 2 for bad usage; the development PKI is made with 0600 keys and reported."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.pki import fingerprint, load_certificate
from gateway.types import DerLimit, Envelope
from gateway.uplink import EnvelopeMessage, Signer, sign_message
from tests.uplink._signing import T0, command_payload, compact, with_payload


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    assert main(["certs", "init", str(directory), "--gateway-id", "gw-7"]) == 0
    return directory


@pytest.fixture(scope="module")
def envelope_file(pki_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    signer = Signer.from_files(pki_dir / "gateway.pem", pki_dir / "gateway.key")
    envelope = Envelope("gw-7", 3, T0, T0 + 300, (DerLimit("inv-1", 5000.0, 0.0),), False, reason="stale devices")
    path = tmp_path_factory.mktemp("msg") / "envelope.jws"
    path.write_bytes(sign_message(signer, EnvelopeMessage.from_envelope(envelope, issued_at=T0)) + b"\n")
    return path


def test_certs_init_reports_what_it_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", str(tmp_path), "--gateway-id", "gw-7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["identities"]) == {"broker", "gateway", "headend", "vtn", "ven"}
    gateway = out["identities"]["gateway"]
    assert gateway["cn"] == "gw-7"
    assert gateway["kid"] == fingerprint(load_certificate(gateway["cert"]))
    for ident in out["identities"].values():
        assert stat.S_IMODE(Path(ident["key"]).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    # An existing CA is not replaced by accident.
    before = (tmp_path / "ca.pem").read_bytes()
    assert main(["certs", "init", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "ca.pem").read_bytes() == before
    assert main(["certs", "init", str(tmp_path), "--force"]) == 0
    human = capsys.readouterr().out
    assert "certs/README.md" in human
    assert str(tmp_path / "gateway.key") in human
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_verify_valid(pki_dir: Path, envelope_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(envelope_file), "--keys", str(pki_dir / "gateway.pem")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid envelope from gw-7 (seq 3, id ")
    assert str(pki_dir / "gateway.pem") in out
    assert json.loads(out.split("\n", 1)[1])["certificate"]["reason"] == "stale devices"


def test_verify_json_and_key_directories(pki_dir: Path, envelope_file: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(envelope_file), "--keys", str(pki_dir), "--json"]) == 0  # every leaf, CA skipped
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is True
    assert out["type"] == "envelope"
    assert out["signer"] == str(pki_dir / "gateway.pem")
    assert out["kid"] == fingerprint(load_certificate(pki_dir / "gateway.pem"))
    assert out["payload"]["ders"][0]["opModExpLimW"] == 5000.0


def test_verify_invalid(pki_dir: Path, envelope_file: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(envelope_file), "--keys", str(pki_dir / "headend.pem")]) == 1
    assert "invalid: unknown-key" in capsys.readouterr().err
    tampered = tmp_path / "tampered.jws"
    token = envelope_file.read_text().strip()
    tampered.write_text(with_payload(token, compact({"type": "envelope", "issuer": "gw-7"})))
    assert main(["verify", str(tampered), "--keys", str(pki_dir / "gateway.pem"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "bad-signature"
    # Well signed, but not a gridedge message.
    odd = tmp_path / "odd.jws"
    odd.write_bytes(Signer.from_files(pki_dir / "gateway.pem", pki_dir / "gateway.key").sign({"type": "nope"}))
    assert main(["verify", str(odd), "--keys", str(pki_dir / "gateway.pem"), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["reason"] == "malformed"
    assert "type" in out["detail"]


def test_verify_usage(pki_dir: Path, envelope_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(envelope_file)]) == 2
    assert "--keys" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "absent.jws"), "--keys", str(pki_dir / "gateway.pem")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["verify", str(envelope_file), "--keys", str(pki_dir / "gateway.key")]) == 4  # a key, not a cert
    assert "configuration error" in capsys.readouterr().err


def test_verify_command_from_stdin_with_the_console_script(pki_dir: Path) -> None:
    """The installed entry point, reading ``-``: a head-end's command verified with the head-end's certificate."""
    headend = Signer.from_files(pki_dir / "headend.pem", pki_dir / "headend.key")
    token = headend.sign(command_payload(seq=4))
    script = Path(sys.executable).with_name("gridedge")
    run = subprocess.run([str(script), "verify", "-", "--keys", str(pki_dir / "headend.pem"), "--json"],
                         input=token, capture_output=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["type"] == "command"
    assert out["payload"]["seq"] == 4
    assert out["payload"]["targetW"] == -2500.0
    bad = subprocess.run([str(script), "verify", "-", "--keys", str(pki_dir / "gateway.pem")],
                         input=token, capture_output=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert b"unknown-key" in bad.stderr
