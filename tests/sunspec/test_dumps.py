"""Every real device dump is discovered and decoded completely, value for value as pysunspec2 decodes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sunspec import SunSpecReader, all_model_ids, discover
from tests.shared_data import dump_params, load_dump
from tests.sunspec.dump_io import DumpIO
from tests.sunspec.reference import assert_matches_dump


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
    nulls = assert_matches_dump(blocks, dump)
    assert nulls == 0 or dump["unreadable_regs"] > 0
    # The second read needs no probing: the plan avoids what was learned.
    await reader.read()
    assert reader.requests == len(reader.plan)
