"""House rule 2: the twin does no I/O of its own: no asyncio, socket, Modbus, MQTT or OpenADR imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TWIN = Path(__file__).resolve().parents[2] / "gateway" / "twin"
FORBIDDEN = ("asyncio", "socket", "pymodbus", "serial", "paho", "aiomqtt", "gmqtt", "openleadr", "aiohttp",
             "gateway.devices", "gateway.daemon", "gateway.sim")


@pytest.mark.parametrize("module", sorted(TWIN.glob("*.py")), ids=lambda p: p.name)
def test_the_twin_imports_nothing_that_does_io(module: Path) -> None:
    tree = ast.parse(module.read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
    bad = [name for name in imported if name.split(".")[0] in FORBIDDEN or name.startswith(FORBIDDEN)]
    assert not bad, f"{module.name} imports {bad}"


def test_the_public_surface_is_explicit() -> None:
    import gateway.twin as twin

    assert twin.__all__ == sorted(twin.__all__, key=lambda n: (not n.isupper(), n))
    for name in twin.__all__:
        assert getattr(twin, name) is not None
    assert all(p.name.startswith("_") for p in TWIN.glob("*.py"))
