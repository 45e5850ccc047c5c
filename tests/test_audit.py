"""The audit log: a hash chain that names the first edited, removed, reordered or cut line, survives restarts,
and reports (never silently continues past) a torn last line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit import GENESIS, AuditLog, verify_log
from gateway.cli import main
from gateway.errors import AuditLogError
from gateway.types import Authority, Setpoint


def _write(path: Path, n: int = 6) -> list[bytes]:
    with AuditLog.open(path, clock=iter(range(1000, 2000)).__next__) as log:
        for i in range(n):
            log.record("decision", der_id="inv-1", i=i, w=1000.5 * i, reason=f"step {i} ✓")
    return path.read_bytes().splitlines(keepends=True)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _verify_cli(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    code = main(["audit", "verify", str(path), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


# --- the chain ------------------------------------------------------------------------------------------------------


def test_each_line_hashes_the_previous_hash_and_its_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    prev = GENESIS
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        record = json.loads(line)
        digest = record.pop("hash")
        assert (record["seq"], record["prev"]) == (n, prev)
        # RFC 8785 for this data is sorted keys, no spaces, UTF-8: recomputed here without the library
        body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert hashlib.sha256(body).hexdigest() == digest
        prev = digest


def test_records_take_dataclasses_enums_and_non_finite_numbers(tmp_path: Path) -> None:
    sp = Setpoint("inv-1", 1500.0, 4800.0, "envelope-export", "c1", Authority.AGGREGATOR, 1e9)
    with AuditLog.open(tmp_path / "a.jsonl") as log:
        rec = log.record("decision", setpoint=sp, target_w=float("nan"), big=2**60)
    assert rec["setpoint"]["authority"] == "aggregator"
    assert rec["target_w"] == "nan"
    assert rec["big"] == str(2**60)
    assert verify_log(tmp_path / "a.jsonl").ok


def test_reserved_field_names_are_refused(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "a.jsonl") as log, pytest.raises(ValueError, match="reserved"):
        log.record("decision", hash="0" * 64)


def test_intact_log_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path)
    code, out = _verify_cli(path, capsys)
    assert code == 0
    assert out["ok"] is True
    assert out["records"] == 6
    assert out["first_bad_line"] is None
    assert out["head"] == json.loads(path.read_bytes().splitlines()[-1])["hash"]


def test_empty_log_passes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.touch()
    assert verify_log(path).ok
    assert verify_log(path).head == GENESIS


# --- tampering ------------------------------------------------------------------------------------------------------


def _edit_value(lines: list[bytes]) -> list[bytes]:
    out = list(lines)
    out[3] = out[3].replace(b'"w":3001.5', b'"w":9001.5')
    assert out[3] != lines[3]
    return out


def _edit_and_rehash(lines: list[bytes]) -> list[bytes]:
    """An editor who recomputes the line's own hash: the next line no longer chains to it."""
    import rfc8785

    out = list(lines)
    record = json.loads(out[3])
    record["w"] = 9001.5
    record.pop("hash")
    record["hash"] = hashlib.sha256(rfc8785.dumps(record)).hexdigest()
    out[3] = rfc8785.dumps(record) + b"\n"
    return out


def _reformat(lines: list[bytes]) -> list[bytes]:
    out = list(lines)
    out[2] = json.dumps(json.loads(out[2]), indent=None).encode() + b"\n"  # same data, spaces after ':' and ','
    return out


def _truncate_middle(lines: list[bytes]) -> list[bytes]:
    """A line cut short in the middle of the file (the bytes from its middle to the next newline gone)."""
    out = list(lines)
    out[2] = out[2][: len(out[2]) // 2]
    return out


def _torn_tail(lines: list[bytes]) -> list[bytes]:
    out = list(lines)
    out[-1] = out[-1][: len(out[-1]) // 2]
    return out


@pytest.mark.parametrize(
    ("tamper", "bad_line", "code"),
    [
        (_edit_value, 4, "hash"),
        (_edit_and_rehash, 5, "prev"),
        (_reformat, 3, "canonical"),
        (lambda ls: ls[:2] + ls[3:], 3, "seq"),  # a line removed
        (lambda ls: ls[1:], 1, "seq"),  # the first line removed
        (lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]], 3, "seq"),  # two lines swapped
        (lambda ls: [*ls[:4], ls[1], *ls[4:]], 5, "seq"),  # a line copied in again
        (_truncate_middle, 3, "json"),
        (_torn_tail, 6, "torn"),
    ],
    ids=["edited", "edited-and-rehashed", "reformatted", "removed", "first-removed", "reordered", "replayed",
         "truncated-in-the-middle", "torn-tail"],
)
def test_tampering_fails_naming_the_first_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: object,
                                                   bad_line: int, code: str) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write(path)
    _rewrite(path, tamper(lines))  # type: ignore[operator]
    exit_code, out = _verify_cli(path, capsys)
    assert exit_code == 1
    assert (out["ok"], out["first_bad_line"], out["problem"]) == (False, bad_line, code)
    assert out["records"] == bad_line - 1
    # the human form names the line too
    assert main(["audit", "verify", str(path)]) == 1
    assert f"line {bad_line}:" in capsys.readouterr().err


def test_lines_cut_from_the_end_need_an_anchor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write(path)
    head = json.loads(lines[-1])["hash"]
    _rewrite(path, lines[:-2])
    assert _verify_cli(path, capsys)[0] == 0  # a shorter chain is still a chain ...
    code, out = _verify_cli(path, capsys, "--anchor", head)  # ... but not one holding the published head
    assert (code, out["ok"], out["anchor_found"]) == (1, False, False)
    assert "removed from its end" in out["reason"]
    _rewrite(path, lines)
    assert _verify_cli(path, capsys, "--anchor", head)[0] == 0


def test_cli_exit_codes_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write(path)
    ok = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", str(path)],
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "intact, 6 records" in ok.stdout
    _rewrite(path, _edit_value(lines))
    bad = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert "line 4: hash does not match" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", str(tmp_path / "nope.jsonl")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2
    assert "nope.jsonl" in missing.stderr


def test_garbage_never_crashes_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for blob in (b"\xff\xfe\n", b"[1,2]\n", b'{"hash": 5}\n', b"[" * 100_000 + b"\n",
                 b'{"hash":"' + b"a" * 64 + b'"}\n', b"\n", b'{"seq":1e400,"hash":"' + b"0" * 64 + b'"}\n'):
        path.write_bytes(blob)
        result = verify_log(path)
        assert not result.ok
        assert result.problem is not None
        assert result.problem.line == 1


# --- restart and crash ----------------------------------------------------------------------------------------------


def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write(path, 4)
    last = json.loads(lines[-1])
    with AuditLog.open(path) as log:
        assert (log.seq, log.head) == (4, last["hash"])
        rec = log.record("decision", after="restart")
    assert (rec["seq"], rec["prev"]) == (5, last["hash"])
    with AuditLog.open(path) as log:
        log.record("decision", after="second restart")
    result = verify_log(path)
    assert (result.ok, result.records) == (True, 6)


def test_torn_last_line_is_reported_not_continued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write(path, 4)
    _rewrite(path, _torn_tail(lines))
    before = path.read_bytes()
    with pytest.raises(AuditLogError, match="line 4: torn") as exc:
        AuditLog.open(path)
    assert exc.value.line == 4
    assert path.read_bytes() == before  # nothing appended after a torn line


def test_recovery_records_the_torn_line_and_continues_from_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write(path, 4)
    torn = _torn_tail(lines)[-1]
    _rewrite(path, _torn_tail(lines))
    with AuditLog.open(path, recover_torn_tail=True) as log:
        assert log.seq == 4  # three good lines and the recovery record
        log.record("decision", after="recovery")
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    recovered = records[3]
    assert recovered["event"] == "audit-recovered"
    assert (recovered["line"], recovered["bytes"]) == (4, len(torn))
    assert recovered["sha256"] == hashlib.sha256(torn).hexdigest()
    assert recovered["text"] == torn.decode()
    assert recovered["prev"] == json.loads(lines[2])["hash"]
    assert verify_log(path).ok


def test_a_partly_written_line_of_zeros_is_torn_too(tmp_path: Path) -> None:
    """What some file systems leave after a crash: the size grew, the data never arrived."""
    path = tmp_path / "audit.jsonl"
    lines = _write(path, 3)
    _rewrite(path, [*lines, b"\x00" * 40 + b"\n"])
    with pytest.raises(AuditLogError, match="line 4: not valid JSON"):
        AuditLog.open(path)
    with AuditLog.open(path, recover_torn_tail=True) as log:
        assert log.seq == 4
    assert verify_log(path).ok


def test_an_edited_last_line_is_never_recovered(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write(path, 4)
    lines[-1] = lines[-1].replace(b'"w":3001.5', b'"w":1.5')
    _rewrite(path, lines)
    with pytest.raises(AuditLogError, match="tampered"):
        AuditLog.open(path, recover_torn_tail=True)


def test_one_process_per_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path):
        code = ("import sys\nfrom gateway.audit import AuditLog\nfrom gateway.errors import AuditLogError\n"
                "try:\n    AuditLog.open(sys.argv[1])\nexcept AuditLogError as e:\n    print(e); sys.exit(7)\n")
        other = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                               check=False)
    assert other.returncode == 7
    assert "in use by another process" in other.stdout


def test_a_crash_mid_session_leaves_a_verifiable_log(tmp_path: Path) -> None:
    """A writer killed with SIGKILL: every record it returned from is on disk and the chain verifies."""
    path = tmp_path / "audit.jsonl"
    code = ("import sys, os, signal\nfrom gateway.audit import AuditLog\nlog = AuditLog.open(sys.argv[1])\n"
            "for i in range(50):\n    log.record('decision', i=i)\n    print(i, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == -9
    acknowledged = len(proc.stdout.split())
    result = verify_log(path)
    assert result.ok
    assert result.records == acknowledged == 50
    with AuditLog.open(path) as log:
        assert log.record("decision", after="crash")["seq"] == 51
    assert os.path.getsize(path) > 0


def test_an_unopenable_log_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(AuditLogError, match="directory exists"):
        AuditLog.open(tmp_path / "no-such-dir" / "audit.jsonl")
