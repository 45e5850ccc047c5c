"""Inbound commands: only an authentic, fresh, first-seen command from a configured key becomes a Command; every
other input is refused with the right reason, whatever its bytes, and refusing never advances the replay state."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import CommandRejected, ConfigError
from gateway.pki import Identity, init_dev_pki, load_private_key
from gateway.types import Authority, Command
from gateway.uplink import REASONS, CommandVerifier, Signer, TrustedKey, trusted_signer
from tests.uplink._signing import T0, command_payload, compact, es256_token, hs256_token, with_payload


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    return init_dev_pki(tmp_path_factory.mktemp("pki"), ("gateway", "headend", "aggregator", "rogue"))


@pytest.fixture(scope="module")
def headend(pki: dict[str, Identity]) -> Signer:
    return Signer.from_files(pki["headend"].cert, pki["headend"].key)


@pytest.fixture(scope="module")
def aggregator(pki: dict[str, Identity]) -> Signer:
    return Signer.from_files(pki["aggregator"].cert, pki["aggregator"].key)


@pytest.fixture(scope="module")
def allowed(pki: dict[str, Identity]) -> dict[str, TrustedKey]:
    return dict([trusted_signer(pki["headend"].cert, Authority.GRID_OPERATOR, "headend"),
                 trusted_signer(pki["aggregator"].cert, Authority.AGGREGATOR, "agg-1")])


@pytest.fixture
def verifier(allowed: dict[str, TrustedKey]) -> CommandVerifier:
    return CommandVerifier(allowed)


def rejected(verifier: CommandVerifier, raw: bytes | str, now: float = T0) -> str:
    with pytest.raises(CommandRejected) as info:
        verifier.verify(raw, now)
    assert info.value.reason in REASONS
    return info.value.reason


def test_a_valid_command(verifier: CommandVerifier, headend: Signer, aggregator: Signer) -> None:
    payload = command_payload(seq=3, extra={"program": "flex"}, gateway="gw-1")
    command = verifier.verify(headend.sign(payload), T0 + 2)
    assert command == Command(command_id=payload["id"], issuer="headend", authority=Authority.GRID_OPERATOR,
                              der_id="inv-1", target_w=-2500.0, valid_from=T0, valid_until=T0 + 900, source="mqtt",
                              received_at=T0 + 2, extra={"program": "flex"})
    other = verifier.verify(aggregator.sign(command_payload(issuer="agg-1")), T0)
    assert other.authority is Authority.AGGREGATOR  # the authority is the key's, never the payload's


def test_tampered(verifier: CommandVerifier, headend: Signer) -> None:
    token = headend.sign(command_payload(targetW=1000.0)).decode()
    forged = with_payload(token, compact(command_payload(targetW=-9000.0)))
    assert rejected(verifier, forged) == "bad-signature"


def test_wrong_key(verifier: CommandVerifier, pki: dict[str, Identity], headend: Signer) -> None:
    rogue = Signer.from_files(pki["rogue"].cert, pki["rogue"].key)
    assert rejected(verifier, rogue.sign(command_payload())) == "unknown-key"
    gateway_key = load_private_key(pki["gateway"].key)  # a real key claiming the head-end's kid
    forged = es256_token(gateway_key, {"alg": "ES256", "kid": headend.kid, "typ": "JOSE"}, compact(command_payload()))
    assert rejected(verifier, forged) == "bad-signature"


def test_unsigned_and_other_algorithms(verifier: CommandVerifier, pki: dict[str, Identity],
                                       headend: Signer) -> None:
    payload = command_payload()
    none = jwt.encode(payload, None, algorithm="none", headers={"kid": headend.kid})
    assert rejected(verifier, none) == "unsigned"
    header, body, _ = headend.sign(payload).decode().split(".")
    assert rejected(verifier, f"{header}.{body}.") == "unsigned"  # a real header, the signature stripped
    pem = Path(pki["headend"].cert).read_bytes()
    assert rejected(verifier, hs256_token(pem, {"alg": "HS256", "kid": headend.kid}, compact(payload))) == "bad-alg"
    assert rejected(verifier, es256_token(load_private_key(pki["headend"].key), {"alg": "ES256"},
                                          compact(payload))) == "unknown-key"


def test_expired_and_not_yet_valid(verifier: CommandVerifier, headend: Signer) -> None:
    assert rejected(verifier, headend.sign(command_payload(validUntil=T0 - 1, validFrom=T0 - 60))) == "expired"
    assert rejected(verifier, headend.sign(command_payload(validUntil=T0, validFrom=T0 - 60))) == "expired"
    stale = command_payload(now=T0 - 301, validUntil=T0 + 600)  # signed before the replay window began
    assert rejected(verifier, headend.sign(stale)) == "expired"
    assert rejected(verifier, headend.sign(command_payload(validFrom=T0 + 31))) == "not-yet-valid"
    assert rejected(verifier, headend.sign(command_payload(issuedAt=T0 + 31))) == "not-yet-valid"
    # Inside the allowed clock skew both ways: accepted.
    verifier.verify(headend.sign(command_payload(seq=1, now=T0 + 29)), T0)
    verifier.verify(headend.sign(command_payload(seq=2, now=T0 - 299)), T0)


def test_replayed(verifier: CommandVerifier, headend: Signer) -> None:
    first = command_payload(seq=10)
    token = headend.sign(first)
    verifier.verify(token, T0)
    assert rejected(verifier, token, T0 + 1) == "replayed"  # the same bytes again
    same_id = command_payload(seq=11, id=first["id"])
    assert rejected(verifier, headend.sign(same_id), T0 + 1) == "replayed"  # a new seq, an id already used
    assert rejected(verifier, headend.sign(command_payload(seq=10)), T0 + 1) == "replayed"  # an old seq
    assert rejected(verifier, headend.sign(command_payload(seq=4)), T0 + 1) == "replayed"
    verifier.verify(headend.sign(command_payload(seq=12)), T0 + 1)  # the issuer's next command is fine


def test_sequences_are_per_issuer(verifier: CommandVerifier, headend: Signer, aggregator: Signer) -> None:
    verifier.verify(headend.sign(command_payload(seq=100)), T0)
    verifier.verify(aggregator.sign(command_payload(seq=1, issuer="agg-1")), T0)


def test_issuer_must_match_the_key(verifier: CommandVerifier, headend: Signer) -> None:
    assert rejected(verifier, headend.sign(command_payload(issuer="agg-1"))) == "issuer-mismatch"


def test_gateway_addressing(allowed: dict[str, TrustedKey], headend: Signer) -> None:
    verifier = CommandVerifier(allowed, gateway="gw-1")
    assert rejected(verifier, headend.sign(command_payload(gateway="gw-2"))) == "wrong-gateway"
    assert rejected(verifier, headend.sign(command_payload(gateway=None))) == "wrong-gateway"
    verifier.verify(headend.sign(command_payload(gateway="gw-1")), T0)


@pytest.mark.parametrize("over", [{"type": "envelope"}, {"derId": None}, {"targetW": "100"}, {"seq": 1.5},
                                  {"id": "not-a-uuid"}, {"validFrom": T0 + 1000}, {"surprise": 1},
                                  {"extra": {"k": 5}}, {"targetW": 1e12}])
def test_schema_violations_are_malformed(verifier: CommandVerifier, headend: Signer, over: dict[str, Any]) -> None:
    assert rejected(verifier, headend.sign(command_payload(**over))) == "malformed"


def test_signed_non_commands_are_malformed(verifier: CommandVerifier, headend: Signer) -> None:
    assert rejected(verifier, headend.sign({"type": "envelope", "issuer": "headend"})) == "malformed"
    assert rejected(verifier, headend.sign({})) == "malformed"
    assert rejected(verifier, b"x" * 20_000) == "malformed"


def test_a_rejection_does_not_advance_the_state(verifier: CommandVerifier, headend: Signer) -> None:
    token = headend.sign(command_payload(seq=500, targetW=0.0)).decode()
    assert rejected(verifier, with_payload(token, compact(command_payload(seq=500)))) == "bad-signature"
    assert rejected(verifier, headend.sign(command_payload(seq=400, validUntil=T0 - 1, validFrom=T0 - 9))) == "expired"
    verifier.verify(headend.sign(command_payload(seq=2)), T0)  # neither 500 nor 400 was recorded


def test_replay_state_survives_a_restart(allowed: dict[str, TrustedKey], headend: Signer, tmp_path: Path) -> None:
    state = tmp_path / "replay.json"
    token = headend.sign(command_payload(seq=7))
    CommandVerifier(allowed, state_path=state).verify(token, T0)
    assert (state.stat().st_mode & 0o077) == 0
    restarted = CommandVerifier(allowed, state_path=state)
    restarted.load_state()
    assert rejected(restarted, token, T0 + 5) == "replayed"
    assert rejected(restarted, headend.sign(command_payload(seq=6)), T0 + 5) == "replayed"
    restarted.verify(headend.sign(command_payload(seq=8)), T0 + 5)
    assert rejected(CommandVerifier(allowed, state_path=state), headend.sign(command_payload(seq=8)), T0) \
        == "replayed"
    assert not any(key.lower() in state.read_text().lower() for key in ("begin", "private"))


def test_broken_replay_state_fails_closed(allowed: dict[str, TrustedKey], headend: Signer, tmp_path: Path) -> None:
    state = tmp_path / "replay.json"
    state.write_text('{"version": 1, "issuers": {"headend": {"seq": "x", "ids": {}}}}')
    with pytest.raises(ConfigError, match="fix: restore it"):
        CommandVerifier(allowed, state_path=state).load_state()
    assert rejected(CommandVerifier(allowed, state_path=state), headend.sign(command_payload())) \
        == "state-unavailable"


def test_unwritable_replay_state_fails_closed(allowed: dict[str, TrustedKey], headend: Signer,
                                             tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    verifier = CommandVerifier(allowed, state_path=directory / "replay.json")
    verifier.verify(headend.sign(command_payload(seq=1)), T0)
    shutil.rmtree(directory)  # the disk went away: the acceptance could not be made durable
    token = headend.sign(command_payload(seq=2))
    assert rejected(verifier, token) == "state-unavailable"
    directory.mkdir()
    assert verifier.verify(token, T0).issuer == "headend"  # it was not recorded as seen


def test_ids_are_forgotten_after_the_window_but_seq_still_guards(verifier: CommandVerifier,
                                                                 headend: Signer) -> None:
    token = headend.sign(command_payload(seq=1, validUntil=T0 + 86_400))
    verifier.verify(token, T0)
    assert rejected(verifier, token, T0 + 10_000) in ("expired", "replayed")
    assert rejected(verifier, headend.sign(command_payload(seq=1, now=T0 + 10_000)), T0 + 10_000) == "replayed"


def test_nan_clock_is_a_caller_bug(verifier: CommandVerifier, headend: Signer) -> None:
    with pytest.raises(ValueError, match="finite"):
        verifier.verify(headend.sign(command_payload()), float("nan"))


def test_bad_configuration(allowed: dict[str, TrustedKey]) -> None:
    with pytest.raises(ConfigError, match="replay_window_s"):
        CommandVerifier(allowed, replay_window_s=0)
    with pytest.raises(ConfigError, match="max_clock_skew_s"):
        CommandVerifier(allowed, max_clock_skew_s=400)
    key = next(iter(allowed.values()))[0]
    with pytest.raises(ConfigError, match="Authority"):
        CommandVerifier({"kid": (key, "grid-operator", "x")})  # type: ignore[dict-item]


# --- fuzz -----------------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.one_of(st.binary(max_size=600), st.text(max_size=300)))
def test_fuzz_arbitrary_bytes(allowed: dict[str, TrustedKey], raw: bytes | str) -> None:
    with pytest.raises(CommandRejected):
        CommandVerifier(allowed).verify(raw, T0)


@st.composite
def mutations(draw: st.DrawFn, token: bytes) -> bytes:
    data = bytearray(token)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "swap-segments"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from(b"A_-.=0z\x00\xff"))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        elif op == "swap-segments":
            parts = bytes(data).split(b".")
            data = bytearray(b".".join(reversed(parts)))
    return bytes(data)


VALID = {"seq": 5, "id": "7d3c5b1e-2a44-4f0e-8a11-5c2b9e0d4f21"}


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_tokens(allowed: dict[str, TrustedKey], headend: Signer, data: st.DataObject) -> None:
    token = headend.sign(command_payload(**VALID))
    mutated = data.draw(mutations(token))
    try:
        command = CommandVerifier(allowed).verify(mutated, T0)
    except CommandRejected:
        return
    assert mutated.strip() == token
    assert command.command_id == VALID["id"]


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
payload_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.text(), inner, max_size=3), max_leaves=10)


@FUZZ
@given(drop=st.sets(st.sampled_from(sorted(command_payload()))),
       replace=st.dictionaries(st.sampled_from(sorted(command_payload())), payload_values, max_size=3))
def test_fuzz_signed_payloads(allowed: dict[str, TrustedKey], headend: Signer, drop: set[str],
                              replace: dict[str, Any]) -> None:
    """Well-signed but arbitrary payloads: a Command only if the result is a valid command, else malformed."""
    payload = {k: v for k, v in command_payload(seq=5).items() if k not in drop} | replace
    outcome: Command | str
    try:
        outcome = CommandVerifier(allowed).verify(headend.sign(payload), T0)
    except CommandRejected as exc:
        outcome = exc.reason
    if isinstance(outcome, str):
        assert outcome in ("malformed", "issuer-mismatch", "expired", "not-yet-valid")
    else:
        assert outcome.issuer == "headend"
        assert outcome.authority is Authority.GRID_OPERATOR
