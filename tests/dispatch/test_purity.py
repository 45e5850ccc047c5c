"""Dispatch decides without I/O: only the apply step may use asyncio, nothing imports an uplink (uplinks call
dispatch, never the reverse), and no module reaches Modbus, MQTT or OpenADR directly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DISPATCH = Path(__file__).resolve().parents[2] / "gateway" / "dispatch"
NEVER = ("socket", "pymodbus", "serial", "paho", "aiomqtt", "gmqtt", "openleadr", "aiohttp", "gateway.uplink",
         "gateway.devices", "gateway.daemon", "gateway.sim")
ASYNC_ALLOWED = {"_apply.py", "__init__.py"}  # __init__ re-exports the apply step


def _imports(module: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _hits(names: list[str], banned: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(n == b or n.startswith(b + ".") for b in banned)]


@pytest.mark.parametrize("module", sorted(DISPATCH.glob("*.py")), ids=lambda p: p.name)
def test_dispatch_imports_nothing_that_does_io(module: Path) -> None:
    names = _imports(module)
    assert not _hits(names, NEVER), f"{module.name} imports {_hits(names, NEVER)}"
    if module.name not in ASYNC_ALLOWED:
        assert not _hits(names, ("asyncio",)), f"{module.name} uses asyncio: only the apply step may"


def test_the_checks_see_imports() -> None:
    assert _hits(_imports(DISPATCH / "_apply.py"), ("asyncio",)) == ["asyncio"]


def test_the_public_surface_is_explicit() -> None:
    import gateway.dispatch as dispatch

    assert dispatch.__all__ == sorted(dispatch.__all__, key=lambda n: (not n.isupper(), n))
    for name in dispatch.__all__:
        assert getattr(dispatch, name) is not None
    assert all(p.name.startswith("_") for p in DISPATCH.glob("*.py"))
