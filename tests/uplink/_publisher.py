"""A gateway publisher process for the outage and will tests: our MqttUplink and Outbox, signed messages.

``python -m tests.uplink._publisher --broker-dir DIR --port N --outbox FILE [--count N] [--first-seq S] ...``

It prints ``connected`` each time the uplink connects and ``accepted <seq> <id> <kind>`` for every message once the
outbox has stored it durably (the put returned), flushed line by line, so a parent that kills it with SIGKILL knows
exactly which messages were accepted. Logs go to stderr. With ``--exit-when-empty`` it exits 0 once every message
(including what a previous run left in the outbox) was acknowledged; otherwise it runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path

from gateway import logs
from gateway.pki import Identity
from gateway.uplink._mqtt import MqttSettings, MqttUplink
from gateway.uplink._outbox import MessageKind, Outbox
from tests.uplink._signed import envelope, signer_for, telemetry


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> int:
    pki = Path(args.broker_dir) / "pki"
    identity = Identity("gateway", pki / "gateway.pem", pki / "gateway.key", pki / "ca.pem")
    settings = MqttSettings(host="127.0.0.1", port=args.port, ca=identity.ca, cert=identity.cert, key=identity.key,
                            site=args.site, gateway_id=args.gateway_id, backoff_initial_s=0.05, backoff_max_s=0.3,
                            connect_timeout_s=5.0)
    signer = signer_for(identity)
    uplink = MqttUplink(settings)
    uplink.add_listener(lambda up: _say("connected") if up else None)
    async with uplink, Outbox(args.outbox, uplink) as outbox:
        if args.wait_connected:
            await uplink.wait_connected(30)
        for i in range(args.count):
            seq = args.first_seq + i
            is_envelope = args.envelope_every > 0 and i % args.envelope_every == 0
            kind = MessageKind.ENVELOPE if is_envelope else MessageKind.TELEMETRY
            payload = (envelope if is_envelope else telemetry)(signer, args.gateway_id, seq)
            await outbox.put(kind, payload)
            _say(f"accepted {seq} {json.loads(_payload_json(payload))['id']} {kind.value}")
            if args.every_s > 0:
                await asyncio.sleep(args.every_s)
        _say("done")
        if args.exit_when_empty:
            await outbox.wait_empty(120)
            _say("empty")
            return 0
        await asyncio.Event().wait()
    return 0


def _payload_json(token: bytes) -> bytes:
    body = token.split(b".")[1]
    return base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker-dir", required=True, help="the test broker's directory (its pki/ is used)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--outbox", required=True)
    parser.add_argument("--site", default="site-1")
    parser.add_argument("--gateway-id", default="gw-1")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--first-seq", type=int, default=1)
    parser.add_argument("--every-s", type=float, default=0.0)
    parser.add_argument("--envelope-every", type=int, default=0, help="every N-th message is an envelope")
    parser.add_argument("--wait-connected", action="store_true", help="put nothing before the first connection")
    parser.add_argument("--exit-when-empty", action="store_true")
    logs.configure("info", json=True, stream=sys.stderr)
    sys.exit(asyncio.run(main(parser.parse_args())))
