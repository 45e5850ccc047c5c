"""Fixtures every dispatch test shares: an audit log in a temporary directory and a dispatcher over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.dispatch import Dispatcher

from ._helpers import CERTIFIED, NOW, policy


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def audit(log_path: Path) -> Iterator[AuditLog]:
    with AuditLog.open(log_path) as log:
        yield log


@pytest.fixture
def dispatcher(audit: AuditLog) -> Dispatcher:
    d = Dispatcher(policy(), audit)
    d.set_envelope(CERTIFIED, NOW)
    return d
