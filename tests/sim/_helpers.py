"""Shared helpers of the simulator tests: where the shared dumps live, a fake clock, point writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.sim import SimulatedDevice
from gateway.sunspec import encode_point, model_def

DUMPS = Path(__file__).resolve().parents[2].parent / "shared" / "sunspec-dumps"


SKIP_REASON = "../shared/sunspec-dumps not present (a fresh clone has no shared data)"


def dump_paths() -> list[Path]:
    """Every dump; skips the calling test when the shared data is absent."""
    if not DUMPS.is_dir():
        pytest.skip(SKIP_REASON)
    paths = sorted(DUMPS.glob("*.json"))
    if not paths:
        pytest.skip("../shared/sunspec-dumps holds no dumps")
    return paths


def dump_params() -> Sequence[object]:
    """The dumps as parameters; one skipped parameter when they are absent (collection must not skip all)."""
    if not DUMPS.is_dir() or not any(DUMPS.glob("*.json")):
        return [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON))]
    return sorted(DUMPS.glob("*.json"))


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


def point_regs(device: SimulatedDevice, model_id: int, name: str, value: float) -> tuple[int, list[int]]:
    """(address, registers) that write ``value`` to top-level point ``name``, scaled by the device's SF."""
    p = model_def(model_id).root.point(name)
    sf = None
    if isinstance(p.sf, str):
        sf = int(device.value(model_id, p.sf) or 0)
    elif isinstance(p.sf, int):
        sf = p.sf
    return device.address_of(model_id, name), encode_point(p, value, sf)


async def write_point(client: AsyncModbusTcpClient, device: SimulatedDevice, model_id: int, name: str,
                      value: float) -> None:
    addr, regs = point_regs(device, model_id, name, value)
    reply = await client.write_registers(addr, regs, device_id=device.unit)
    assert not reply.isError(), reply
