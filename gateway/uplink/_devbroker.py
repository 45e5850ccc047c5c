"""A development MQTT broker for ``gridedge demo``: mosquitto 2.x on a free loopback port, mutual TLS with the dev
PKI, an ACL confining the gateway's identity to its own topics. Never for production (``certs/README.md``).

The broker names each client by its certificate's CN (``use_identity_as_username``): the ``gateway`` identity may
publish on its four upward topics and read its ``cmd``; the ``headend`` identity reads everything and publishes
commands. Persistence is off; the process is ended when the context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.pki import Identity
from gateway.uplink._mqtt import UP_TOPICS

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """The mosquitto binary, or None when it is not installed."""
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mosquitto")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, slots=True)
class DevBroker:
    """Where the running development broker listens."""

    host: str
    port: int
    log_path: Path


def write_config(directory: Path, identity: Identity, site: str, gateway_id: str, host: str, port: int, *,
                 tcp_nodelay: bool = True, extra: Sequence[str] = ()) -> Path:
    """Write the ACL and ``mosquitto.conf`` (``extra``: more general settings) into ``directory``; the conf's path."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = f"gridedge/{site}/{gateway_id}"
    acl = directory / "acl"
    acl.write_text("\n".join(["user gateway", *(f"topic write {prefix}/{s}" for s in UP_TOPICS),
                              f"topic read {prefix}/cmd", "", "user headend", "topic read gridedge/#",
                              "topic write gridedge/+/+/cmd", ""]))
    conf = ["per_listener_settings false", "persistence false", "allow_anonymous false", f"acl_file {acl}",
            "log_dest stderr", "log_type error", "log_type warning", *extra, f"listener {port} {host}",
            f"cafile {identity.ca}", f"certfile {identity.cert}", f"keyfile {identity.key}",
            "require_certificate true", "use_identity_as_username true", "tls_version tlsv1.2",
            f"set_tcp_nodelay {'true' if tcp_nodelay else 'false'}"]
    if os.geteuid() == 0:
        conf.insert(0, "user root")  # as root mosquitto would drop to 'mosquitto', who cannot read our 0600 keys
    path = directory / "mosquitto.conf"
    path.write_text("\n".join(conf) + "\n")
    return path


@contextlib.asynccontextmanager
async def dev_broker(binary: str, directory: Path, identity: Identity, *, site: str, gateway_id: str,
                     host: str = "127.0.0.1", timeout_s: float = 10.0) -> AsyncIterator[DevBroker]:
    """Run mosquitto with ``identity`` (the broker's certificate) in ``directory`` until the context exits."""
    port = free_port(host)
    conf = await asyncio.to_thread(write_config, directory, identity, site, gateway_id, host, port)
    log_path = directory / "mosquitto.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(binary, "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=log, stderr=log)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"mosquitto exited with {proc.returncode}: "
                                       f"{log_path.read_text(errors='replace')[-1000:]}")
                try:
                    _, writer = await asyncio.open_connection(host, port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                break
        yield DevBroker(host, port, log_path)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
