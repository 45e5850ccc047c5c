"""Locating ../shared/ test data (published answers and real device dumps); skip clearly where absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DUMPS = SHARED / "sunspec-dumps"


def dump_paths() -> list[Path]:
    """Every SunSpec dump, or an empty list on a fresh clone (tests parametrised over it then skip)."""
    return sorted(DUMPS.glob("*.json")) if DUMPS.is_dir() else []


def require_dumps() -> list[Path]:
    paths = dump_paths()
    if not paths:
        pytest.skip("../shared/sunspec-dumps is not present: a fresh clone has no shared test data")
    return paths


def load_dump(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def dump_params() -> list[Any]:
    """pytest params over the dumps; one skipping param when there are none."""
    paths = dump_paths()
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason="../shared/sunspec-dumps not present"))]
    return [pytest.param(p, id=p.stem) for p in paths]
