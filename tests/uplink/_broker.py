"""A real mosquitto 2.x broker for the uplink tests and benchmark: TLS with client certificates, an ACL, loopback only.

The broker identifies each client by its certificate's CN (``use_identity_as_username``); the ACL confines the
``gateway`` identity to its own prefix (publish on its four upward topics, subscribe to its ``cmd``) and lets the
``headend`` identity read everything and publish commands. Persistence is off, ``set_tcp_nodelay`` on. The broker can
be stopped and started again on the same port (outage tests).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.pki import Identity, init_dev_pki
from gateway.uplink._devbroker import find_mosquitto, free_port, write_config

__all__ = ["Broker", "find_mosquitto", "free_port"]


@dataclass
class Broker:
    """One mosquitto on 127.0.0.1:``port`` with the dev PKI in ``directory``; ``start``/``stop`` as often as needed."""

    binary: str
    directory: Path
    site: str = "site-1"
    gateway_id: str = "gw-1"
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    max_inflight: int = 0  # 0 = no cap (mosquitto's default is 20 for what it sends to subscribers)
    tcp_nodelay: bool = True
    pki: dict[str, Identity] = field(init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.pki = init_dev_pki(self.directory / "pki", ("broker", "gateway", "headend"))
        extra = [f"max_inflight_messages {self.max_inflight}", "max_queued_messages 100000", "log_type notice",
                 "log_type information", "log_timestamp_format %H:%M:%S"]
        write_config(self.directory, self.pki["broker"], self.site, self.gateway_id, self.host, self.port,
                     tcp_nodelay=self.tcp_nodelay, extra=extra)

    @property
    def prefix(self) -> str:
        return f"gridedge/{self.site}/{self.gateway_id}"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and return once its listener accepts TCP connections."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(self.directory / "mosquitto.conf")],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n{self.log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not accept on {self.host}:{self.port} within {timeout_s} s:\n"
                                   f"{self.log()[-2000:]}")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL) and wait for it."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def restart(self) -> None:
        self.stop()
        self.start()
