"""``gridedge demo`` as a new user runs it: built-in defaults only, stops by itself, prints the data path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.uplink._devbroker import find_mosquitto
from tests.uplink._waits import store_pids

pytestmark = pytest.mark.slow


def test_demo_runs_and_prints_a_certified_envelope_with_its_certificate(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}  # its scratch directory: under tmp_path
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--duration", "15"], capture_output=True,
                          text=True, timeout=120, check=False, env=env, cwd="/")  # cwd: nothing read from the tree
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not store_pids(tmp_path), "the demo's outbox store process outlived it"
    assert re.search(r"envelope #\d+ certified in \d+ ms: inverter-1, inverter-2, inverter-3 each: export <= "
                     r"[\d,]+ W", out), out
    certificate = re.search(r"certificate: worst V (\d\.\d+) / (\d\.\d+) pu, max loading \d+ %, margin 0\.002 pu, "
                            r"(\d+) AC solves; binds: export (vmax at bus \d+|rating)", out)
    assert certificate is not None, out
    assert float(certificate[1]) <= 1.048 + 1e-4
    assert float(certificate[2]) >= 0.952 - 1e-4
    assert int(certificate[3]) > 0
    # the devices sit on the feeder (the demo grid's power flow, stepping from before the first envelope), so the
    # envelope starts from the state estimate of consistent readings: never a fallback, every envelope certified
    assert "grid: a power flow of builtin:ieee-european-lv every 1 s" in out, out
    assert re.search(r"twin +operating point: estimate, made in \d+ ms\n", out), out
    assert "fallback" not in out, out
    assert "NOT certified" not in out, out
    assert "write cap inverter-1" in out  # the envelope reaches the inverters, through the audit log
    if find_mosquitto() is None:
        assert "running without MQTT" in out
        return
    assert re.search(r"head-end  telemetry #\d+ \(signature ok\): inverter-1 [\d,]+ W", out), out
    assert re.search(r"head-end  envelope #\d+ \(certified\) signature ok", out), out
    assert re.search(r"gateway decided on \w+: clamped, inverter-1 asked 5,000 W -> [\d,]+ W, binding: "
                     r"envelope-export", out), out
