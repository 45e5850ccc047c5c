"""Every real device dump is discovered and decoded completely, value for value as pysunspec2 decodes it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from sunspec2 import device as ss_device

from gateway.sunspec import SunSpecReader, all_model_ids, discover, model_def
from tests.shared_data import dump_params, load_dump
from tests.sunspec.dump_io import DumpIO


def _reference(model_id: int, regs: list[int | None]) -> dict:
    data = struct.pack(f">{len(regs)}H", *[0 if r is None else r for r in regs])
    model = ss_device.Model(model_id=model_id, model_len=regs[1], data=data)
    out = model.get_dict(computed=True)
    for k in ("mid", "error", "model_id"):
        out.pop(k)
    return out


@pytest.mark.parametrize("path", dump_params())
async def test_dump_discovered_and_decoded(path: Path) -> None:
    dump = load_dump(path)
    io = DumpIO(dump)
    device_map = await discover(io)
    expected = [(m["id"], m["addr"], m["len"]) for m in dump["models"] if m["id"] != 0xFFFF]
    assert [(m.id, m.addr, m.length) for m in device_map.models] == expected
    assert device_map.base == dump["base"]

    reader = SunSpecReader(io, device_map)
    blocks = await reader.read()
    known = set(all_model_ids())
    assert [b.id for b in blocks] == [m[0] for m in expected if m[0] in known]
    nulls = 0
    for block in blocks:
        lo = block.start - dump["base"]
        regs = dump["regs"][lo : lo + block.length + 2]
        ref = _reference(block.id, regs)
        ours = {**block.points, **block.groups}
        bad = {i for i, r in enumerate(regs) if r is None}
        # A short model (SolarEdge's L=65 model 1) leaves its last points out: pysunspec2 drops them, we say None.
        assert all(ours[k] is None for k in ours.keys() - ref.keys())
        ours = {k: v for k, v in ours.items() if k in ref}
        if not bad:
            assert ours == ref, f"model {block.id}"
            continue
        # Registers the device refused: their points are None; every other point as pysunspec2 decodes it.
        for name, value in block.points.items():
            if name not in ref:
                continue
            p = model_def(block.id).root.point(name)
            if any(o in bad for o in range(p.offset, p.offset + p.size)):
                assert value is None
                nulls += 1
            else:
                assert value == ref[name], f"model {block.id} point {name}"
    assert nulls == 0 or dump["unreadable_regs"] > 0
    # The second read needs no probing: the plan avoids what was learned.
    await reader.read()
    assert reader.requests == len(reader.plan)
