"""``gridedge run`` as systemd runs it: a config file, JSON logs on stdout, sd_notify, SIGTERM shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.devices.conftest import free_port


def _start_sim(port: int) -> subprocess.Popen[str]:
    sim = subprocess.Popen([sys.executable, "-m", "gateway.sim", "inverter:2", "--port-base", str(port),
                            "--units-per-port", "2"], stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    assert json.loads(sim.stdout.readline())["ready"]
    return sim


def test_run_notifies_systemd_logs_json_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    sim = _start_sim(port)
    config = tmp_path / "gridedge.toml"
    config.write_text(f"""
[site]
id = "s1"
gateway_id = "g1"

[[devices]]
id = "pv-a"
host = "127.0.0.1"
port = {port}
unit = 1
poll_interval_s = 0.5

[[devices]]
id = "pv-b"
host = "127.0.0.1"
port = {port}
unit = 2
poll_interval_s = 0.5
""")
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    daemon = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "NOTIFY_SOCKET": notify_path})
    try:
        messages = set()
        deadline = time.monotonic() + 15
        while not {"READY=1", "WATCHDOG=1"} <= messages and time.monotonic() < deadline:
            for line in notify.recv(4096).decode().splitlines():
                messages.add(line)
        assert {"READY=1", "WATCHDOG=1"} <= messages
        time.sleep(1.5)
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        daemon.kill()
        sim.terminate()
        sim.wait(timeout=10)
        notify.close()
    assert daemon.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]  # every stdout line is a JSON object
    names = [e["event"] for e in events]
    assert "started" in names
    assert names[-1] == "stopped"
    assert all(e.get("site_id") == "s1" for e in events if e["event"] in ("started", "stopped"))


def test_config_error_names_the_key_and_exits_4(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[site]\nid = "s"\ngateway_id = "g"\n\n[[devices]]\nid = "x"\nhots = "127.0.0.1"\n')
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 4
    assert "devices[0].hots" in proc.stderr
    assert 'did you mean "host"' in proc.stderr


def test_read_of_an_absent_device_exits_3_with_the_reason() -> None:
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "read", f"127.0.0.1:{port}", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3
    assert "refused" in proc.stderr
    assert proc.stdout == ""
