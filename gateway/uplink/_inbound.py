"""Inbound commands: a signed command becomes a :class:`~gateway.types.Command` only here, else it is rejected.

:class:`CommandVerifier` checks, in this order, and raises :class:`~gateway.errors.CommandRejected` with the
first failing reason (nothing else escapes, whatever the bytes):

==================== =================================================================================
``malformed``        not a compact JWS, not JSON, too long, not a command, a field missing or wrong
``unsigned``         an empty signature (``alg: none`` tokens look like this)
``bad-alg``          an ``alg`` other than ES256
``unknown-key``      no ``kid``, or a key not configured for commands
``bad-signature``    tampered, or signed by another key than the ``kid`` names
``issuer-mismatch``  the payload's ``issuer`` is not the one configured for the key
``wrong-gateway``    the command names another gateway (checked when ``gateway`` is configured)
``expired``          ``validUntil`` has passed, or it was issued longer ago than the replay window
``not-yet-valid``    ``validFrom`` or ``issuedAt`` lies further ahead than the allowed clock skew
``replayed``         its ``id`` was accepted before, or its ``seq`` is not above the issuer's last accepted
``state-unavailable`` the replay state cannot be read or written (fail closed: nothing is accepted)
==================== =================================================================================

The replay state (per issuer: the last accepted ``seq`` and the ids accepted within the window) survives
restarts when ``state_path`` is given: it is written atomically and fsynced before a command is returned. The
signature is checked before anything in the payload is looked at. Nothing here logs (the caller audits the
rejection) and no key material is ever in a message.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from pydantic import ValidationError

from gateway.errors import CommandRejected, ConfigError, SignatureError
from gateway.pki import fingerprint, load_certificate
from gateway.types import Authority, Command
from gateway.uplink._jws import Verifier, as_token
from gateway.uplink._messages import CommandMessage, describe
from gateway.uplink._sequence import fsync_dir

#: Every reason :class:`CommandVerifier` rejects with.
REASONS = ("malformed", "unsigned", "bad-alg", "unknown-key", "bad-signature", "issuer-mismatch", "wrong-gateway",
           "expired", "not-yet-valid", "replayed", "state-unavailable")
#: A command is small; anything longer is refused before it is parsed.
MAX_COMMAND_BYTES = 16 * 1024
#: Ids remembered per issuer (the ``seq`` check already refuses older commands; this bounds memory).
MAX_IDS_PER_ISSUER = 4096
_STATE_VERSION = 1

TrustedKey = tuple[EllipticCurvePublicKey, Authority, str]


def trusted_signer(cert: x509.Certificate | str | Path, authority: Authority, issuer: str) -> tuple[str, TrustedKey]:
    """One entry of ``CommandVerifier(allowed=...)``: ``(kid, (key, authority, issuer))`` for a certificate."""
    c = cert if isinstance(cert, x509.Certificate) else load_certificate(cert)
    key = c.public_key()
    if not isinstance(key, EllipticCurvePublicKey):
        raise ConfigError(f"command signer {issuer}: the certificate's key must be EC P-256 (ES256), "
                          f"got {type(key).__name__}")
    return fingerprint(c), (key, Authority(authority), issuer)


@dataclass(slots=True)
class _Issuer:
    seq: int = -1  # the last accepted
    ids: dict[str, float] = field(default_factory=dict)  # accepted id -> when it may be forgotten (UNIX s)


class CommandVerifier:
    """Verifies signed commands from configured keys; see the module docstring for what is refused and why.

    ``allowed``: ``kid`` (certificate fingerprint) -> (public key, authority, issuer name); several keys may
    share an issuer (rotation) and then share its sequence. ``gateway``: this gateway's id; when given, a command
    must name it. ``source``: the channel, copied into each :class:`Command`. Construction does no I/O; the replay
    state is read by :meth:`load_state` (call it at start to surface a broken file) or on first use.
    """

    def __init__(self, allowed: Mapping[str, TrustedKey], *, replay_window_s: float = 300,
                 max_clock_skew_s: float = 30, state_path: Path | None = None, gateway: str | None = None,
                 source: str = "mqtt") -> None:
        if not (math.isfinite(replay_window_s) and replay_window_s > 0):
            raise ConfigError(f"replay_window_s: must be > 0 seconds, got {replay_window_s!r}")
        if not (math.isfinite(max_clock_skew_s) and 0 <= max_clock_skew_s < replay_window_s):
            raise ConfigError(f"max_clock_skew_s: must be >= 0 and below replay_window_s ({replay_window_s}), "
                              f"got {max_clock_skew_s!r}")
        for kid, entry in allowed.items():
            if len(entry) != 3 or not isinstance(entry[1], Authority) or not (isinstance(entry[2], str) and entry[2]):
                raise ConfigError(f"command key {kid}: give (public key, Authority, issuer name)")
        self._verifier = Verifier({kid: key for kid, (key, _, _) in allowed.items()})
        self._who = {kid: (authority, issuer) for kid, (_, authority, issuer) in allowed.items()}
        self.window_s = float(replay_window_s)
        self.skew_s = float(max_clock_skew_s)
        self.state_path = Path(state_path) if state_path is not None else None
        self.gateway = gateway
        self.source = source
        self._issuers: dict[str, _Issuer] = {}
        self._loaded = self.state_path is None
        self._lock = threading.Lock()  # check-then-record is one step, whichever thread delivers commands

    # --- the checks -------------------------------------------------------------------------------------------------

    def verify(self, raw: bytes | str, now: float) -> Command:
        """The authenticated, fresh, first-seen command in ``raw`` (received at ``now``, UNIX s), or
        :class:`CommandRejected`. Accepting it records its id and sequence (durably with ``state_path``: a blocking
        write and fsync, run it off the event loop). A non-finite ``now`` is a caller's bug: ValueError."""
        if not math.isfinite(now):
            raise ValueError(f"now must be finite UNIX seconds, got {now!r}")
        token = _token(raw)
        try:
            kid, payload = self._verifier.verify_with_kid(token)
        except SignatureError as exc:
            raise CommandRejected(exc.reason, exc.detail) from None
        authority, issuer = self._who[kid]
        if payload.get("type") != "command":
            kind = payload.get("type")
            raise CommandRejected("malformed", f"a signed {str(kind)[:20]!r} message is not a command")
        try:
            msg = CommandMessage.model_validate(payload, by_alias=True, by_name=False)
        except ValidationError as exc:
            raise CommandRejected("malformed", describe(exc)) from None
        if msg.issuer != issuer:
            raise CommandRejected("issuer-mismatch", f"issuer {msg.issuer!r} signed with the key of {issuer!r}")
        if self.gateway is not None and msg.gateway != self.gateway:
            raise CommandRejected("wrong-gateway", f"for gateway {msg.gateway!r}, this is {self.gateway!r}")
        self._check_times(msg, now)
        with self._lock:
            state = self._state(now)
            seen = state.setdefault(issuer, _Issuer())
            if msg.id in seen.ids:
                raise CommandRejected("replayed", f"command {msg.id} from {issuer} was already accepted")
            if msg.seq <= seen.seq:
                raise CommandRejected("replayed", f"seq {msg.seq} is not above {seen.seq}, the last accepted from "
                                                  f"{issuer}")
            self._record(seen, msg, now)
        return msg.to_command(authority=authority, source=self.source, received_at=now)

    def _check_times(self, msg: CommandMessage, now: float) -> None:
        if msg.valid_until <= now:
            raise CommandRejected("expired", f"validUntil passed {now - msg.valid_until:.0f} s ago")
        if msg.issued_at < now - self.window_s:
            raise CommandRejected("expired", f"issued {now - msg.issued_at:.0f} s ago, before the "
                                             f"{self.window_s:.0f} s replay window")
        for name, t in (("validFrom", msg.valid_from), ("issuedAt", msg.issued_at)):
            if t > now + self.skew_s:
                raise CommandRejected("not-yet-valid", f"{name} is {t - now:.0f} s ahead (clock skew allowed: "
                                                       f"{self.skew_s:.0f} s)")

    # --- replay state -----------------------------------------------------------------------------------------------

    def _state(self, now: float) -> dict[str, _Issuer]:
        try:
            self.load_state()
        except ConfigError as exc:
            raise CommandRejected("state-unavailable", str(exc)) from None
        for seen in self._issuers.values():
            for cid in [cid for cid, until in seen.ids.items() if until < now]:
                del seen.ids[cid]
        return self._issuers

    def _record(self, seen: _Issuer, msg: CommandMessage, now: float) -> None:
        before = (seen.seq, dict(seen.ids))
        seen.seq = msg.seq
        seen.ids[msg.id] = max(msg.issued_at, now) + self.window_s + self.skew_s
        while len(seen.ids) > MAX_IDS_PER_ISSUER:
            del seen.ids[min(seen.ids, key=seen.ids.__getitem__)]
        try:
            self._save()
        except OSError as exc:
            seen.seq, seen.ids = before  # not durable, not accepted: fail closed
            raise CommandRejected("state-unavailable", f"replay state {self.state_path}: cannot be written "
                                                       f"({exc.strerror})") from None

    def load_state(self) -> None:
        """Read the replay state from ``state_path`` (idempotent). A broken file is a :class:`ConfigError`."""
        if self._loaded or self.state_path is None:
            return
        path = self.state_path
        try:
            text = path.read_text()
        except FileNotFoundError:
            self._loaded = True
            return
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"replay state {path}: cannot be read ({exc}); fix its permissions") from exc
        self._issuers = _parse_state(text, path)
        self._loaded = True

    def _save(self) -> None:
        if self.state_path is None:
            return
        doc = {"version": _STATE_VERSION,
               "issuers": {name: {"seq": s.seq, "ids": s.ids} for name, s in sorted(self._issuers.items())}}
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(doc, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.state_path)
        fsync_dir(self.state_path.parent)


def _parse_state(text: str, path: Path) -> dict[str, _Issuer]:
    broken = ConfigError(f"replay state {path}: not a gridedge replay state file; fix: restore it from backup, or "
                         f"remove it (then any command accepted in the last replay window could be replayed once)")
    try:
        doc = json.loads(text)
    except ValueError:
        raise broken from None
    if not isinstance(doc, dict) or doc.get("version") != _STATE_VERSION or not isinstance(doc.get("issuers"), dict):
        raise broken
    out: dict[str, _Issuer] = {}
    for name, entry in doc["issuers"].items():
        if not isinstance(entry, dict):
            raise broken
        seq, ids = entry.get("seq"), entry.get("ids")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(ids, dict):
            raise broken
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in ids.values()):
            raise broken
        out[name] = _Issuer(seq, {str(k): float(v) for k, v in ids.items()})
    return out


def _token(raw: object) -> bytes:
    """``raw`` as a bounded ASCII token, refusing an unsigned one by name."""
    try:
        token = as_token(raw, MAX_COMMAND_BYTES)
    except SignatureError as exc:
        raise CommandRejected(exc.reason, exc.detail) from None
    parts = token.split(b".")
    if len(parts) == 3 and not parts[2]:
        raise CommandRejected("unsigned", "the command carries no signature")
    return token
