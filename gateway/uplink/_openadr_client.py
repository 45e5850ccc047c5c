"""openleadr 0.5.36's VEN client as gridedge runs it: a pinned mTLS context, the signing-key check, and the library's
defects worked around by subclassing (no openleadr global is patched).

* **Pinning.** openleadr pins the VTN only on the XML signature (its ``vtn_fingerprint``, the last 10 bytes of the
  certificate's SHA-256). :class:`PinnedClientContext` pins the TLS certificate too, inside the handshake, through
  the documented ``SSLContext.sslobject_class`` hook: a server whose certificate is not the pinned one gets no byte
  of application data (no registration, no report). It serves the asyncio (``wrap_bio``) path aiohttp uses.
* **Keys.** openleadr signs with whatever key it is given: RSA costs ~80 ms per signed message and Ed25519 fails
  (``signxml`` has no Ed25519 method; openleadr falls back to ``rsa-sha256`` and the signing raises).
  :func:`check_signing_key` refuses anything but EC P-256 before a client is built.
* **Report requests.** ``OpenADRClient.create_report`` keeps one ``requested_r_ids`` list for every report request
  in an ``oadrRegisteredReport``, so each request ends up listing the r_ids of all of them (and each send logs an
  error per foreign r_id). :meth:`GatewayClient.create_report` gives each request only its own r_ids.
* **Report answers.** openleadr's report worker drops the VTN's answer. :meth:`GatewayClient._report_queue_worker`
  keeps it (:class:`ReportAnswer`), so a report the VTN refused (for instance signed more than openleadr's fixed
  5 s ago) is known to the caller, and marks each report done so a caller can wait for the queue to drain.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openleadr import OpenADRClient, utils
from openleadr.messaging import REPLAY_PROTECT_MAX_TIME_DELTA

from gateway.errors import ConfigError
from gateway.pki import load_certificate, load_private_key

#: openleadr's signature freshness window (ReplayProtect timestamp), fixed in the library: a message signed longer
#: ago than this is refused by the receiving side, so the VEN's and the VTN's clocks must agree well within it.
SIGNATURE_WINDOW_S: float = REPLAY_PROTECT_MAX_TIME_DELTA.total_seconds()
_HEX = frozenset("0123456789abcdef")


def normalize_fingerprint(text: str, *, key: str) -> str:
    """A certificate fingerprint as lowercase hex: the full SHA-256 (64 hex digits, as ``gateway.pki.fingerprint``
    and ``openssl x509 -fingerprint -sha256`` give it, colons allowed) or OpenADR's short form (its last 10 bytes,
    20 hex digits, as openleadr prints it). Anything else is a ConfigError naming ``key``."""
    hexed = text.replace(":", "").replace(" ", "").lower()
    if len(hexed) not in (64, 20) or not set(hexed) <= _HEX:
        raise ConfigError(f"{key}: {text!r} is not a certificate fingerprint; fix: give the VTN certificate's "
                          f"SHA-256 (64 hex digits, e.g. `openssl x509 -noout -fingerprint -sha256 -in vtn.pem`)")
    return hexed


def openadr_fingerprint(pin: str) -> str:
    """openleadr's form of a fingerprint (``AA:BB:...``, the last 10 bytes of the SHA-256) from a normalised pin."""
    tail = pin[-20:].upper()
    return ":".join(tail[i:i + 2] for i in range(0, 20, 2))


def check_signing_key(key: Path, cert: Path, *, key_name: str) -> None:
    """Refuse a signing key openleadr handles badly (anything but EC P-256) or one that is not the certificate's."""
    try:
        private = load_private_key(key)
    except ConfigError as exc:
        raise ConfigError(f"{key_name}: {exc}. openleadr signs every OpenADR message with this key: RSA costs "
                          f"~80 ms a message and Ed25519 cannot sign at all; fix: use an EC P-256 key") from exc
    if load_certificate(cert).public_key() != private.public_key():
        raise ConfigError(f"{key_name}: {key} is not the private key of the certificate {cert}; fix: give the "
                          f"certificate issued for this key")


class _PinnedSSLObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the handshake is complete
        context = self.context
        if isinstance(context, PinnedClientContext):
            context.check_peer(self.getpeercert(binary_form=True))


class PinnedClientContext(ssl.SSLContext):
    """A TLS client context that, besides the CA chain and the host name, accepts only the pinned certificate."""

    sslobject_class = _PinnedSSLObject
    pin: str
    refused: str | None

    def check_peer(self, der: bytes | None) -> None:
        got = hashlib.sha256(der or b"").hexdigest()
        if not got.endswith(self.pin):
            self.refused = got
            raise ssl.SSLCertVerificationError(
                f"the VTN's certificate (SHA-256 {got}) is not the pinned one ({self.pin})")


def pinned_client_context(*, ca: Path, cert: Path, key: Path, pin: str, check_hostname: bool = True,
                          ) -> PinnedClientContext:
    """mTLS client context: verify the server against ``ca`` (and its host name), present ``cert``/``key``, and
    refuse any server certificate whose SHA-256 does not end with ``pin``. TLS 1.2 at least."""
    context = PinnedClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.check_hostname = check_hostname
    context.pin = pin
    context.refused = None
    return context


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """What the VTN answered to one oadrUpdateReport: ``accepted``, or its response code and description."""

    report_request_id: str
    report_specifier_id: str
    accepted: bool
    code: int | None
    description: str


class GatewayClient(OpenADRClient):  # type: ignore[misc]  # openleadr ships no type hints
    """``OpenADRClient`` with the two defects above fixed; everything else is openleadr's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.report_answers: deque[ReportAnswer] = deque(maxlen=100)
        self.answer_count = 0

    async def create_report(self, response_payload: dict[str, Any]) -> None:
        await super().create_report(response_payload)
        for request in self.report_requests:
            report = utils.find_by(self.reports, "report_specifier_id", request["report_specifier_id"])
            own = {description.r_id for description in report.report_descriptions} if report else set()
            request["r_ids"] = [r_id for r_id in request["r_ids"] if r_id in own]

    async def _report_queue_worker(self) -> None:
        while True:
            report = await self.pending_reports.get()
            try:
                try:
                    message = self._create_message("oadrUpdateReport", ven_id=self.ven_id,
                                                   request_id=utils.generate_id(), reports=[report])
                    answer = _answer(report, await self._perform_request("EiReport", message))
                except Exception as exc:  # a report that cannot be sent must not stop the worker
                    answer = ReportAnswer(str(report.report_request_id), str(report.report_specifier_id), False,
                                          None, f"not sent: {type(exc).__name__}: {exc}")
                self.report_answers.append(answer)
                self.answer_count += 1
            finally:
                self.pending_reports.task_done()

    def recent_answers(self, count: int) -> list[ReportAnswer]:
        """The last ``count`` answers (at most the 100 kept), oldest first."""
        return list(self.report_answers)[-count:] if count > 0 else []

    async def wait_reports_sent(self) -> None:
        """Until every queued report has been sent and answered (or failed)."""
        queue: asyncio.Queue[Any] = self.pending_reports
        await queue.join()


def _answer(report: Any, result: tuple[str | None, dict[str, Any]] | None) -> ReportAnswer:
    request_id, specifier = str(report.report_request_id), str(report.report_specifier_id)
    if not result or result[0] is None:
        return ReportAnswer(request_id, specifier, False, None, "no valid answer from the VTN (transport, "
                            "signature or freshness failure: see the openleadr log)")
    message_type, payload = result
    response = payload.get("response") or {}
    code = response.get("response_code")
    code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
    accepted = message_type == "oadrUpdatedReport" and code == 200
    return ReportAnswer(request_id, specifier, accepted, code, str(response.get("response_description", "")))
